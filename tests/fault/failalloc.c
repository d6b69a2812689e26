// failalloc.c: a fault injector for tests, loaded with LD_PRELOAD. It makes
// one allocation made by the sdc executable itself fail, so that the tests
// can check that running out of memory ends in an error, never a crash.
//
//   SDC_FAILALLOC=N          the Nth allocation (1-based) returns NULL
//   SDC_FAILALLOC=N+         the Nth and every later one returns NULL
//   SDC_FAILALLOC_COUNT=PATH at exit, the number of allocations counted is
//                            written to PATH (to learn how many there are)
//   SDC_FAILALLOC_BT=1       the failed call's stack on stderr too (addresses
//                            in the executable: addr2line -f -e sdc)
//
// Counted are malloc, calloc, realloc (to a non-zero size), aligned_alloc,
// posix_memalign, strdup and strndup called from code in the main
// executable (sdc links its own code statically); what libc, HDF5, MPI,
// libpng or OpenBLAS allocate for themselves is passed through untouched.
// The failed call is named on stderr with its offset in the executable
// (addr2line -e sdc OFFSET gives the line). Test code only: not linked
// into sdc.
#define _GNU_SOURCE
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static uintptr_t exe_lo, exe_hi;  // the executable's code
static uintptr_t exe_base;        // its load address (addr2line offsets)
static long fail_at = -1;         // the allocation to fail (1-based), -1: none
static int fail_after;            // and every one after it
static const char *count_path;
static int show_stack;
static long counted;

static int find_exe(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    // the first object listed is the main program
    exe_base = info->dlpi_addr;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
            exe_lo = info->dlpi_addr + ph->p_vaddr;
            exe_hi = exe_lo + ph->p_memsz;
        }
    }
    return 1;
}

__attribute__((constructor)) static void failalloc_init(void) {
    dl_iterate_phdr(find_exe, NULL);
    const char *s = getenv("SDC_FAILALLOC");
    if (s && *s) {
        char *end;
        fail_at = strtol(s, &end, 10);
        fail_after = *end == '+';
    }
    count_path = getenv("SDC_FAILALLOC_COUNT");
    show_stack = getenv("SDC_FAILALLOC_BT") != NULL;
}

__attribute__((destructor)) static void failalloc_fini(void) {
    if (!count_path) return;
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld\n", __atomic_load_n(&counted, __ATOMIC_SEQ_CST));
    int fd = open(count_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        if (write(fd, buf, (size_t)n) != n) { /* nothing to do: the test sees no count */ }
        close(fd);
    }
}

// Whether the allocation called from `site` fails.
static int fails(void *site, const char *what, size_t bytes) {
    uintptr_t a = (uintptr_t)site;
    if (a < exe_lo || a >= exe_hi) return 0;
    long k = __atomic_add_fetch(&counted, 1, __ATOMIC_SEQ_CST);
    if (fail_at < 1 || k < fail_at || (k > fail_at && !fail_after)) return 0;
    char msg[160];
    int n = snprintf(msg, sizeof msg, "failalloc: allocation %ld (%s of %zu bytes) fails, at offset 0x%lx\n", k,
                     what, bytes, (unsigned long)(a - 1 - exe_base));
    if (write(2, msg, (size_t)n) != n) { /* stderr closed: nothing to do */ }
    if (show_stack) {
        void *pcs[32];
        backtrace_symbols_fd(pcs, backtrace(pcs, 32), 2);
    }
    errno = ENOMEM;
    return 1;
}

#define CALLER __builtin_return_address(0)

void *malloc(size_t n) { return fails(CALLER, "malloc", n) ? NULL : __libc_malloc(n); }
void *calloc(size_t k, size_t n) { return fails(CALLER, "calloc", k * n) ? NULL : __libc_calloc(k, n); }
void *realloc(void *p, size_t n) {
    return n && fails(CALLER, "realloc", n) ? NULL : __libc_realloc(p, n);
}
void *aligned_alloc(size_t al, size_t n) {
    return fails(CALLER, "aligned_alloc", n) ? NULL : __libc_memalign(al, n);
}
int posix_memalign(void **out, size_t al, size_t n) {
    if (fails(CALLER, "posix_memalign", n)) return ENOMEM;
    void *p = __libc_memalign(al, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
char *strdup(const char *s) {
    size_t n = strlen(s) + 1;
    if (fails(CALLER, "strdup", n)) return NULL;
    char *d = __libc_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
char *strndup(const char *s, size_t max) {
    size_t n = strnlen(s, max);
    if (fails(CALLER, "strndup", n + 1)) return NULL;
    char *d = __libc_malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}
