// rng.h: the random numbers users can reproduce.
//
// torch.Generator("cpu").manual_seed(seed) followed by torch.randn(n) is
// what diffusers uses for the initial latents; sdc draws the same stream:
// a 32-bit Mersenne Twister (mt19937) seeded with the low 32 bits of the seed,
// uniforms from 24 random bits, and Box-Muller over blocks of 16 values
// (pairs i, i+8) exactly as torch's CPU normal_ does for tensors of 16 or
// more elements. Results agree with torch to float rounding (torch may use
// a vectorised log/sin/cos). This is a generator, not a global: each item
// of a batch owns one, seeded with seed + i.
#ifndef SDC_RNG_H
#define SDC_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct Rng {
    uint32_t mt[624];
    int idx;
    uint64_t seed;
} Rng;

void rng_seed(Rng *r, uint64_t seed);
uint32_t rng_u32(Rng *r);
// torch.rand: n floats in [0, 1)
void rng_uniform(Rng *r, float *out, size_t n);
// torch.randn: n standard normal floats (n >= 16 follows torch's block path;
// n < 16 follows torch's scalar double-precision path)
void rng_normal(Rng *r, float *out, size_t n);

#endif
