// bench_model_hash.c: how fast sdc hashes a model file (the SHA-256 that an
// HDF5 sweep records as its model hash, data/genout.c), against coreutils'
// sha256sum on the same file in the same invocation. The hash cache is
// pointed at a fresh empty folder for every run, so each run reads and
// hashes the whole file. Run it on a file larger than the page cache's
// churn between runs, e.g. a model, or:
//   dd if=/dev/urandom of=/tmp/big.bin bs=1M count=2048
//   build/bench/bench_model_hash /tmp/big.bin 3
// Prints MB/s (10^6 bytes) of both, the ratio, and whether the digests agree.
#define _GNU_SOURCE // mkdtemp, setenv
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "benchutil.h"
#include "data/fsutil.h"
#include "data/genout.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [runs]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    const int runs = argc > 2 ? atoi(argv[2]) : 3;
    struct stat st;
    if (stat(path, &st) || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "%s: not a regular file\n", path);
        return 2;
    }
    const double mb = (double)st.st_size / 1e6;

    // one read first so both sides see the same (warm) page cache
    char cmd[4200], line[256], ref[65] = "";
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    double best_sdc = 1e30, best_ref = 1e30;
    char got[65] = "", shorth[11];
    for (int r = 0; r <= runs; r++) {
        char dir[] = "/tmp/sdc-bench-hash.XXXXXX";
        if (!mkdtemp(dir)) return 1;
        setenv("SDC_CACHE_DIR", dir, 1);
        SdcError err = {0};
        double t0 = now_sec();
        if (genout_model_hash(path, shorth, got, &err)) {
            fprintf(stderr, "sdc: %s\n", err.msg);
            return 1;
        }
        double t1 = now_sec();
        fs_rm_tree(dir);
        FILE *p = popen(cmd, "r");
        if (!p || !fgets(line, sizeof line, p)) return 1;
        pclose(p);
        double t2 = now_sec();
        memcpy(ref, line, 64);
        ref[64] = 0;
        if (r == 0) continue; // warm-up
        if (t1 - t0 < best_sdc) best_sdc = t1 - t0;
        if (t2 - t1 < best_ref) best_ref = t2 - t1;
        printf("run %d: sdc %.2f s (%.0f MB/s), sha256sum %.2f s (%.0f MB/s)\n", r, t1 - t0, mb / (t1 - t0), t2 - t1,
               mb / (t2 - t1));
    }
    printf("file: %s, %.1f MB\n", path, mb);
    printf("digest: sdc %s, sha256sum %s: %s\n", got, ref, strcmp(got, ref) ? "DIFFER" : "equal");
    printf("summary: sdc %.0f MB/s, sha256sum %.0f MB/s, ratio %.2fx (best of %d)\n", mb / best_sdc, mb / best_ref,
           best_ref / best_sdc, runs);
    return strcmp(got, ref) ? 1 : 0;
}
