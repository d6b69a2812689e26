// bench_ckpt.c: writing and reading a full-size checkpoint as an sdc HDF5
// checkpoint (data/checkpoint.h: contiguous datasets, CRC32 per tensor,
// fsync + rename) against safetensors (st_write + fsync; st_open + a copy of
// every tensor), same tensors, same machine, same run. Prints both and the
// ratio. Usage: bench_ckpt [SRC.safetensors] [OUT_DIR]
// (default /tmp/sd15.safetensors: `python3 tools/make_fixtures.py --full-sd15 /tmp/sd15.safetensors`).
// Reads are of files just written, so they come from the page cache: they
// measure the format's overhead, not the disk.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/checkpoint.h"
#include "io/safetensors.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static long long fsize(const char *p) {
    struct stat s;
    return stat(p, &s) ? -1 : (long long)s.st_size;
}

static int fsync_path(const char *p) {
    int fd = open(p, O_RDONLY);
    int rc = fd < 0 || fsync(fd);
    if (fd >= 0) close(fd);
    return rc;
}

int main(int argc, char **argv) {
    const char *src = argc > 1 ? argv[1] : "/tmp/sd15.safetensors", *dir = argc > 2 ? argv[2] : "/tmp";
    char h5[1024], st[1024];
    snprintf(h5, sizeof h5, "%s/bench_ckpt.h5", dir);
    snprintf(st, sizeof st, "%s/bench_ckpt.safetensors", dir);
    SdcError err = {0};
    StFile f;
    if (st_open(&f, src, &err)) {
        fprintf(stderr, "bench_ckpt: %s\n---> make one: python3 tools/make_fixtures.py --full-sd15 %s\n", err.msg, src);
        return 1;
    }
    const char **names = calloc((size_t)f.n, sizeof(char *));
    Tensor *ts = calloc((size_t)f.n, sizeof(Tensor));
    size_t total = 0;
    int n = 0;
    for (int i = 0; i < f.n; i++) {
        if (!f.entries[i].supported) continue;
        names[n] = f.entries[i].name;
        ts[n] = st_tensor(&f, &f.entries[i]);
        total += tensor_bytes(&ts[n]);
        n++;
    }
    // warm the source into memory so both writers read the same pages
    volatile uint8_t sink = 0;
    for (size_t o = 0; o < f.size; o += 4096) sink ^= f.map[o];
    printf("bench_ckpt: %d tensors, %.2f GB from %s\n", n, total / 1e9, src);

    double t0 = now();
    CkptWriter w;
    int rc = ckpt_begin(&w, h5, &err);
    for (int i = 0; i < n && !rc; i++) rc = ckpt_put(&w, "unet", names[i], &ts[i], &err);
    CkptState s = {0};
    if (!rc) rc = ckpt_commit(&w, &s, &err);
    double t_h5w = now() - t0;
    t0 = now();
    if (!rc) rc = st_write(st, names, ts, n, NULL, NULL, 0, &err);
    if (!rc && fsync_path(st)) rc = 1;
    double t_stw = now() - t0;
    if (rc) {
        fprintf(stderr, "bench_ckpt: %s\n", err.msg);
        return 1;
    }
    uint8_t *buf = malloc(total);
    memset(buf, 0, total); // page faults out of the timings
    // read: every tensor into one buffer. A first unchecked read pulls the
    // file into the page cache (timed apart: it is the disk's speed), then
    // unchecked and checked reads from the cache.
    Ckpt c;
    size_t off = 0;
    t0 = now();
    rc = ckpt_open(&c, h5, &err);
    for (int i = 0; i < c.n && !rc; i++) rc = ckpt_read(&c, i, buf + off, 0, &err), off += c.t[i].nbytes;
    ckpt_close(&c);
    double t_cold = now() - t0;
    off = 0;
    t0 = now();
    rc = rc ? rc : ckpt_open(&c, h5, &err);
    for (int i = 0; i < c.n && !rc; i++) rc = ckpt_read(&c, i, buf + off, 0, &err), off += c.t[i].nbytes;
    ckpt_close(&c);
    double t_h5r_nocrc = now() - t0;
    t0 = now();
    off = 0;
    rc = rc ? rc : ckpt_open(&c, h5, &err);
    for (int i = 0; i < c.n && !rc; i++) rc = ckpt_read(&c, i, buf + off, 1, &err), off += c.t[i].nbytes;
    ckpt_close(&c);
    double t_h5r = now() - t0;
    t0 = now();
    StFile g;
    off = 0;
    if (!rc) rc = st_open(&g, st, &err);
    for (int i = 0; i < g.n && !rc; i++) {
        memcpy(buf + off, g.data + g.entries[i].offset, g.entries[i].nbytes);
        off += g.entries[i].nbytes;
    }
    if (!rc) st_close(&g);
    double t_str = now() - t0;
    if (rc) {
        fprintf(stderr, "bench_ckpt: %s\n", err.msg);
        return 1;
    }
    printf("  write  hdf5 %.2fs (%.2f GB/s)  safetensors %.2fs (%.2f GB/s)  hdf5/safetensors %.2fx\n", t_h5w,
           total / t_h5w / 1e9, t_stw, total / t_stw / 1e9, t_h5w / t_stw);
    printf("  read   hdf5 %.2fs with CRC32 check, %.2fs without  safetensors %.2fs (mmap + copy)  ratio %.2fx / "
           "%.2fx\n", t_h5r, t_h5r_nocrc, t_str, t_h5r / t_str, t_h5r_nocrc / t_str);
    printf("         (first read of the written file, from disk: %.2fs)\n", t_cold);
    printf("  size   hdf5 %lld bytes  safetensors %lld bytes  (%.4f%% larger)\n", fsize(h5), fsize(st),
           100.0 * (fsize(h5) - fsize(st)) / fsize(st));
    unlink(h5);
    unlink(st);
    free(buf);
    free(names);
    free(ts);
    st_close(&f);
    return 0;
}
