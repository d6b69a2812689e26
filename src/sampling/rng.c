// rng.c: torch-compatible mt19937 and normal sampling (see rng.h).
#include "sampling/rng.h"

#include <math.h>

void rng_seed(Rng *r, uint64_t seed) {
    r->seed = seed;
    r->mt[0] = (uint32_t)(seed & 0xffffffffu);
    for (int i = 1; i < 624; i++)
        r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->idx = 624;
}

static void rng_twist(Rng *r) {
    for (int i = 0; i < 624; i++) {
        uint32_t y = (r->mt[i] & 0x80000000u) | (r->mt[(i + 1) % 624] & 0x7fffffffu);
        uint32_t v = r->mt[(i + 397) % 624] ^ (y >> 1);
        if (y & 1) v ^= 0x9908b0dfu;
        r->mt[i] = v;
    }
    r->idx = 0;
}

uint32_t rng_u32(Rng *r) {
    if (r->idx >= 624) rng_twist(r);
    uint32_t y = r->mt[r->idx++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

static uint64_t rng_u64(Rng *r) {
    uint64_t hi = rng_u32(r), lo = rng_u32(r);
    return (hi << 32) | lo;
}

static float rng_float24(Rng *r) { return (float)(rng_u32(r) & ((1u << 24) - 1)) * (1.0f / 16777216.0f); }

void rng_uniform(Rng *r, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = rng_float24(r);
}

// Box-Muller over 16 uniforms in place: (u[j], u[j+8]) -> two normals.
static void normal_fill_16(float *d) {
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * logf(u1));
        float theta = 2.0f * (float)M_PI * u2;
        d[j] = radius * cosf(theta);
        d[j + 8] = radius * sinf(theta);
    }
}

void rng_normal(Rng *r, float *out, size_t n) {
    if (n >= 16) {
        for (size_t i = 0; i < n; i++) out[i] = rng_float24(r);
        for (size_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i);
        if (n % 16) { // torch redraws the last 16 values
            float *tail = out + n - 16;
            for (int i = 0; i < 16; i++) tail[i] = rng_float24(r);
            normal_fill_16(tail);
        }
        return;
    }
    // scalar path: at::normal_distribution<double>, with its cached second value
    int have_cache = 0;
    double cache = 0;
    for (size_t i = 0; i < n; i++) {
        if (have_cache) {
            out[i] = (float)cache;
            have_cache = 0;
            continue;
        }
        double u1 = (double)(rng_u64(r) & ((1ull << 53) - 1)) * 0x1p-53;
        double u2 = (double)(rng_u64(r) & ((1ull << 53) - 1)) * 0x1p-53;
        double radius = sqrt(-2.0 * log1p(-u2));
        double theta = 2.0 * M_PI * u1;
        cache = radius * sin(theta);
        have_cache = 1;
        out[i] = (float)(radius * cos(theta));
    }
}
