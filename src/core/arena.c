// arena.c: bump allocator with a measuring mode (see arena.h).
#include "core/arena.h"
#include "core/backend.h"

#include <stdint.h>
#include <stdlib.h>

int arena_init(Arena *a, const Backend *be, size_t cap, SdcError *err) {
    *a = (Arena){.be = be, .cap = cap};
    if (cap == 0) return 0;
    if (be && be->device != DEV_CPU) {
        a->base = be->alloc(be, cap);
    } else {
        a->base = aligned_alloc(ARENA_ALIGN, (cap + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN);
    }
    if (!a->base)
        return sdc_err(err, SDC_ERR_OOM, "cannot allocate an arena of %.1f MiB on %s",
                       (double)cap / (1 << 20), be ? be->name : "cpu");
    return 0;
}

void arena_init_measure(Arena *a) { *a = (Arena){.cap = SIZE_MAX, .measure = 1}; }

void arena_free(Arena *a) {
    if (a->base) {
        if (a->be && a->be->device != DEV_CPU) a->be->free(a->be, a->base);
        else free(a->base);
    }
    *a = (Arena){0};
}

void *arena_alloc(Arena *a, size_t bytes) {
    size_t n = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    SDC_CHECK(a->used + n <= a->cap); // arenas are sized by a measuring run
    size_t off = a->used;
    a->used += n;
    if (a->used > a->peak) a->peak = a->used;
    if (a->measure) return (void *)(uintptr_t)(ARENA_ALIGN + off); // never dereferenced
    return a->base + off;
}

void arena_reset(Arena *a, size_t mark) {
    SDC_CHECK(mark <= a->used);
    a->used = mark;
}

Tensor arena_tensor(Arena *a, DType dt, int ndim, const int64_t *shape) {
    Tensor t = tensor_make(dt, (a->be && !a->measure) ? a->be->device : DEV_CPU, NULL, ndim, shape);
    t.data = arena_alloc(a, tensor_bytes(&t));
    return t;
}
