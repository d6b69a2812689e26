// checksum_libs.c: zlib's CRC32 (what sdc checkpoints store per tensor,
// data/checkpoint.c ckpt_crc32) against xxHash (XXH32, XXH64, XXH3 64-bit),
// single-threaded, on one buffer of random bytes. The evidence behind the
// checksum entry of docs/decisions.md. Not part of the build:
//   apt-get install libxxhash-dev
//   gcc -O2 bench/libs/checksum_libs.c -lz -lxxhash -o /tmp/checksum_libs && /tmp/checksum_libs [MiB]
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <xxhash.h>
#include <zlib.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    const size_t n = (size_t)(argc > 1 ? atoi(argv[1]) : 512) << 20;
    uint8_t *b = malloc(n);
    if (!b) return 1;
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        b[i] = (uint8_t)s;
    }
    const char *names[] = {"zlib crc32", "XXH32", "XXH64", "XXH3_64bits"};
    for (int k = 0; k < 4; k++) {
        double best = 1e30;
        uint64_t h = 0;
        for (int r = 0; r < 5; r++) {
            double t0 = now();
            switch (k) {
            case 0: { // zlib takes uInt lengths: 1 GiB pieces at most
                uLong c = crc32(0L, Z_NULL, 0);
                for (size_t off = 0; off < n; off += 1u << 30)
                    c = crc32(c, b + off, (uInt)(n - off < (1u << 30) ? n - off : (1u << 30)));
                h = c;
                break;
            }
            case 1: h = XXH32(b, n, 0); break;
            case 2: h = XXH64(b, n, 0); break;
            case 3: h = XXH3_64bits(b, n); break;
            }
            double t = now() - t0;
            if (t < best) best = t;
        }
        printf("%-12s %7.0f MB/s  (%zu MiB, best of 5; value %016llx)\n", names[k], n / 1e6 / best, n >> 20,
               (unsigned long long)h);
    }
    printf("zlib %s, xxHash %u\n", zlibVersion(), XXH_versionNumber());
    free(b);
    return 0;
}
