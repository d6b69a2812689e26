// tensor.c: Tensor helpers and fp16/bf16 conversion (see tensor.h).
#include "core/tensor.h"
#include "core/error.h"

#include <stdio.h>
#include <string.h>

size_t dtype_size(DType dt) {
    switch (dt) {
    case DT_F32: return 4;
    case DT_F16: return 2;
    case DT_BF16: return 2;
    case DT_U8: return 1;
    case DT_I32: return 4;
    case DT_I64: return 8;
    }
    return 0;
}

const char *dtype_name(DType dt) {
    switch (dt) {
    case DT_F32: return "F32";
    case DT_F16: return "F16";
    case DT_BF16: return "BF16";
    case DT_U8: return "U8";
    case DT_I32: return "I32";
    case DT_I64: return "I64";
    }
    return "?";
}

int64_t tensor_numel(const Tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t tensor_bytes(const Tensor *t) { return (size_t)tensor_numel(t) * dtype_size(t->dtype); }

Tensor tensor_make(DType dt, Device dev, void *data, int ndim, const int64_t *shape) {
    SDC_CHECK(ndim >= 0 && ndim <= TENSOR_MAX_DIMS);
    Tensor t = {.dtype = dt, .device = dev, .ndim = ndim, .data = data};
    for (int i = 0; i < ndim; i++) t.shape[i] = shape[i];
    return t;
}

Tensor tensor_f32(float *data, int ndim, const int64_t *shape) {
    return tensor_make(DT_F32, DEV_CPU, data, ndim, shape);
}

Tensor tensor_reshape(Tensor t, int ndim, const int64_t *shape) {
    Tensor r = tensor_make(t.dtype, t.device, t.data, ndim, shape);
    SDC_CHECK(tensor_numel(&r) == tensor_numel(&t));
    return r;
}

int tensor_same_shape(const Tensor *a, const Tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

char *tensor_shape_str(const Tensor *t, char *buf, size_t n) {
    size_t off = 0;
    off += (size_t)snprintf(buf + off, n - off, "(");
    for (int i = 0; i < t->ndim && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (off < n) snprintf(buf + off, n - off, ")");
    return buf;
}

// ----------------------------------------------------------------------------
// half precision conversions

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { // subnormal: renormalise
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t exp = (x >> 23) & 0xff;
    uint32_t man = x & 0x7fffff;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000;
        int shift = 14 - e;
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
    return (uint16_t)half;
}

float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffff)) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

void convert_to_f32(float *dst, const void *src, DType src_dt, size_t n) {
    if (src_dt == DT_F32) {
        memcpy(dst, src, n * 4);
    } else if (src_dt == DT_F16) {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(s[i]);
    } else if (src_dt == DT_BF16) {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    } else {
        SDC_CHECK(!"convert_to_f32: not a float dtype");
    }
}

void convert_from_f32(void *dst, DType dst_dt, const float *src, size_t n) {
    if (dst_dt == DT_F32) {
        memcpy(dst, src, n * 4);
    } else if (dst_dt == DT_F16) {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = f32_to_f16(src[i]);
    } else if (dst_dt == DT_BF16) {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
    } else {
        SDC_CHECK(!"convert_from_f32: not a float dtype");
    }
}
