// arena.h: one block of memory allocated up front, handed out by a bump
// pointer and released stack-wise (mark / reset). Activations, parameters and
// scratch each live in an arena, so the hot loop never calls malloc.
//
// Sizing: an arena opened with arena_init_measure() hands out no memory at
// all; it only records the peak a run would need. Models run their forward
// once against a measuring arena and the no-op "measure" backend (see
// backend.h), then allocate a real arena of exactly arena.peak bytes.
#ifndef SDC_ARENA_H
#define SDC_ARENA_H

#include <stddef.h>

#include "core/error.h"
#include "core/tensor.h"

struct Backend;

typedef struct Arena {
    const struct Backend *be; // who allocated base (NULL = host malloc)
    char *base;
    size_t cap;
    size_t used;
    size_t peak;
    int measure; // 1: no memory behind it, only counts
} Arena;

#define ARENA_ALIGN 64

// Allocates cap bytes on be's device (be == NULL: host memory).
int arena_init(Arena *a, const struct Backend *be, size_t cap, SdcError *err);
void arena_init_measure(Arena *a);
void arena_free(Arena *a);

// Bump-allocates bytes (rounded up to ARENA_ALIGN). Running out is a sizing
// bug in sdc (every arena is sized by a measuring run), so it is checked.
void *arena_alloc(Arena *a, size_t bytes);
static inline size_t arena_mark(const Arena *a) { return a->used; }
void arena_reset(Arena *a, size_t mark);

// A tensor of the given shape carved out of the arena, on the arena's device.
Tensor arena_tensor(Arena *a, DType dt, int ndim, const int64_t *shape);
// A tensor of dtype dt: ARENA_DT(a, be->act_dtype, N, C, H, W)
#define ARENA_DT(a, dt, ...)                                                                \
    arena_tensor((a), (dt), (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),  \
                 (int64_t[]){__VA_ARGS__})
// f32 shorthand: ARENA_F32(a, N, C, H, W)
#define ARENA_F32(a, ...)                                                        \
    arena_tensor((a), DT_F32, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), \
                 (int64_t[]){__VA_ARGS__})

#endif
