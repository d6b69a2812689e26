// fuzz_util.h: what the file-based fuzz targets share: a private scratch
// folder (tmpfs when there is one) that the input's bytes are written into
// before sdc's real reader opens them by path, and the splitting of one input
// into several named files.
//
// Sections: an input that stands for several files is
//   "@@@ NAME\n" CONTENT "\n@@@ NAME2\n" CONTENT2 ...
// (bytes before the first marker belong to the section named ""). The seeds
// are written this way; libFuzzer's mutations then change any file, add,
// drop or duplicate sections. Header-only, static: each target is one .c.
#ifndef SDC_FUZZ_UTIL_H
#define SDC_FUZZ_UTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE // memmem
#endif

#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FUZZ_MAX_SECTIONS 16

typedef struct FuzzSection {
    char name[64];
    const uint8_t *data;
    size_t size;
} FuzzSection;

// Splits data into sections (at most FUZZ_MAX_SECTIONS; the rest is ignored).
// A section named "" holds the bytes before the first marker (when any).
static inline int fuzz_sections(const uint8_t *data, size_t size, FuzzSection *s) {
    const uint8_t *end = data + size, *body = data;
    char name[64] = "";
    int n = 0;
    for (;;) {
        const uint8_t *m = NULL; // the next "@@@ " at a line start
        for (const uint8_t *q = body; q + 4 <= end;) {
            const uint8_t *f = memmem(q, (size_t)(end - q), "@@@ ", 4);
            if (!f) break;
            if (f == data || f[-1] == '\n') {
                m = f;
                break;
            }
            q = f + 1;
        }
        const uint8_t *stop = m ? m : end;
        size_t len = (size_t)(stop - body);
        if (m && len && stop[-1] == '\n') len--; // the newline before a marker separates
        if (len || name[0]) {
            if (n == FUZZ_MAX_SECTIONS) break;
            memcpy(s[n].name, name, sizeof name);
            s[n].data = body;
            s[n].size = len;
            n++;
        }
        if (!m) break;
        const uint8_t *nl = memchr(m + 4, '\n', (size_t)(end - (m + 4)));
        size_t nlen = (size_t)((nl ? nl : end) - (m + 4));
        if (nlen >= sizeof name) nlen = sizeof name - 1;
        memcpy(name, m + 4, nlen);
        name[nlen] = 0;
        body = nl ? nl + 1 : end;
    }
    return n;
}

// The section called name, or NULL.
static inline const FuzzSection *fuzz_section(const FuzzSection *s, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(s[i].name, name)) return &s[i];
    return NULL;
}

static inline int fuzz_rm_one(const char *p, const struct stat *st, int flag, struct FTW *f) {
    (void)st, (void)flag, (void)f;
    return remove(p);
}
static char fuzz_dir_path[512];
// At exit: the scratch folder goes (libFuzzer's fork mode starts a process per job).
static inline void fuzz_dir_remove(void) {
    if (fuzz_dir_path[0]) nftw(fuzz_dir_path, fuzz_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

// The scratch folder of this process ("/dev/shm/sdc-fuzz-PID", else under
// $TMPDIR or /tmp), made on first use.
static inline const char *fuzz_dir(void) {
    char *dir = fuzz_dir_path;
    if (dir[0]) return dir;
    struct stat st;
    const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0
                           ? "/dev/shm"
                           : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    snprintf(dir, sizeof fuzz_dir_path, "%s/sdc-fuzz-%d", base, (int)getpid());
    mkdir(dir, 0700);
    atexit(fuzz_dir_remove);
    return dir;
}

// dir/rel into out.
static inline const char *fuzz_path(char *out, size_t cap, const char *rel) {
    snprintf(out, cap, "%s/%s", fuzz_dir(), rel);
    return out;
}

// Writes n bytes to path (replacing it); aborts if the scratch folder fails
// (a harness problem, not a finding in sdc).
static inline void fuzz_write(const char *path, const void *data, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror(path);
        abort();
    }
    const char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) {
            perror(path);
            abort();
        }
        p += w;
        n -= (size_t)w;
    }
    close(fd);
}

// With FUZZ_VERBOSE=1 in the environment (for a replay, not a campaign):
// prints what the reader said about the input (an error, or "ok"), to see
// that seeds are accepted and what a finding's input is refused with.
static inline void fuzz_note(const char *what, int rc, const char *msg) {
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("FUZZ_VERBOSE") != NULL;
    if (verbose) fprintf(stderr, "  %s: %s\n", what, rc ? msg : "ok");
}

#endif
