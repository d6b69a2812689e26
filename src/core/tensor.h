// tensor.h: the one tensor type of sdc: a dtype, up to 4 dims, a device and
// a pointer. A Tensor never owns its memory: it is a view into an arena, a
// mmap'd weight file or a caller's buffer. Contiguous row-major (NCHW for
// images, (B, L, D) for token sequences).
#ifndef SDC_TENSOR_H
#define SDC_TENSOR_H

#include <stddef.h>
#include <stdint.h>

typedef enum { DT_F32 = 0, DT_F16, DT_BF16, DT_U8, DT_I32, DT_I64 } DType;
typedef enum { DEV_CPU = 0, DEV_CUDA } Device;

#define TENSOR_MAX_DIMS 4

typedef struct Tensor {
    DType dtype;
    Device device;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    void *data;
} Tensor;

size_t dtype_size(DType dt);
const char *dtype_name(DType dt);

int64_t tensor_numel(const Tensor *t);
size_t tensor_bytes(const Tensor *t);
Tensor tensor_make(DType dt, Device dev, void *data, int ndim, const int64_t *shape);
// Shorthands for f32 CPU tensors of 1..4 dims.
Tensor tensor_f32(float *data, int ndim, const int64_t *shape);
// A view with the same data and another shape of the same element count.
Tensor tensor_reshape(Tensor t, int ndim, const int64_t *shape);
int tensor_same_shape(const Tensor *a, const Tensor *b);
// "(2, 4, 64, 64)" into buf; returns buf.
char *tensor_shape_str(const Tensor *t, char *buf, size_t n);
static inline float *tensor_f32p(const Tensor *t) { return (float *)t->data; }

// fp16 / bf16 <-> fp32 conversions (round to nearest even), CPU side.
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
// Converts n elements of dtype src_dt to f32 (F32, F16, BF16 accepted).
void convert_to_f32(float *dst, const void *src, DType src_dt, size_t n);
void convert_from_f32(void *dst, DType dst_dt, const float *src, size_t n);

#endif
