// backend_cpu_bwd.h: internal to the CPU backend: the backward entries of
// its op table (backend_cpu_bwd.c) and the scratch they share with the
// forward ops (backend_cpu.c).
#ifndef SDC_BACKEND_CPU_BWD_H
#define SDC_BACKEND_CPU_BWD_H

#include "core/backend.h"

float *cpu_backend_scratch(const Backend *be, size_t floats);
// An fp32 operand of a matmul-like backward (conv2d, linear, attention): on
// the bf16 variants its values rounded to bf16 (nearest even, as fp32), in
// the backend's buffer `slot` (0..3, valid until that slot is asked again);
// on the fp32 backend t's own data. NULL (recorded: backend_status) when out
// of memory.
const float *cpu_backend_bf16_operand(const Backend *be, const Tensor *t, int slot);
// The mixed variant's backward through oneDNN (kernels/cpu/bf16_cpu.h) where
// it computes bf16: 0 when done (a failure recorded: backend_status), 1 when
// not (the fp32 backend, or a CPU without bf16): the caller then runs the
// fp32 kernels on cpu_backend_bf16_operand's rounded operands.
int cpu_backend_bf16_linear_backward(const Backend *be, float *dx, float *dw, const float *dy, const float *x,
                                     const Tensor *w, int64_t M, int64_t K, int64_t N);
int cpu_backend_bf16_conv2d_backward(const Backend *be, float *dx, float *dw, const float *dy, const float *x,
                                     const Tensor *w, int N, int C, int H, int W, int stride, int pad);
int cpu_backend_bf16_attention_backward(const Backend *be, float *dq, float *dk, float *dv, const float *dout,
                                        const float *q, const float *k, const float *v, int B, int Lq, int Lk,
                                        int heads, int D, int causal);

void cpu_op_linear_backward(const Backend *be, Tensor *dx, Tensor *dw, Tensor *db, const Tensor *dy,
                            const Tensor *x, const Tensor *w);
void cpu_op_conv2d_backward(const Backend *be, Tensor *dx, Tensor *dw, Tensor *db, const Tensor *dy,
                            const Tensor *x, const Tensor *w, int stride, int pad);
void cpu_op_group_norm_backward(const Backend *be, Tensor *dx, Tensor *dgamma, Tensor *dbeta, const Tensor *dy,
                                const Tensor *x, const Tensor *gamma, const Tensor *beta, int groups, float eps,
                                int silu);
void cpu_op_layer_norm_backward(const Backend *be, Tensor *dx, Tensor *dgamma, Tensor *dbeta, const Tensor *dy,
                                const Tensor *x, const Tensor *gamma, float eps);
void cpu_op_attention_backward(const Backend *be, Tensor *dq, Tensor *dk, Tensor *dv, const Tensor *dout,
                               const Tensor *q, const Tensor *k, const Tensor *v, int heads, int causal);
void cpu_op_silu_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x);
void cpu_op_gelu_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x);
void cpu_op_quick_gelu_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x);
void cpu_op_geglu_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x);
void cpu_op_softmax_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *y);
void cpu_op_upsample_nearest2x_backward(const Backend *be, Tensor *dx, const Tensor *dy);
void cpu_op_add_channel_bias_backward(const Backend *be, Tensor *dbias, const Tensor *dy);
void cpu_op_concat_channels_backward(const Backend *be, Tensor *da, Tensor *db, const Tensor *dy);
void cpu_op_embedding_backward(const Backend *be, Tensor *dtable, const Tensor *ids, const Tensor *dy);

#define CPU_BACKWARD_ENTRIES                                          \
    .linear_backward = cpu_op_linear_backward,                        \
    .conv2d_backward = cpu_op_conv2d_backward,                        \
    .group_norm_backward = cpu_op_group_norm_backward,                \
    .layer_norm_backward = cpu_op_layer_norm_backward,                \
    .attention_backward = cpu_op_attention_backward,                  \
    .silu_backward = cpu_op_silu_backward,                            \
    .gelu_backward = cpu_op_gelu_backward,                            \
    .quick_gelu_backward = cpu_op_quick_gelu_backward,                \
    .geglu_backward = cpu_op_geglu_backward,                          \
    .softmax_backward = cpu_op_softmax_backward,                      \
    .upsample_nearest2x_backward = cpu_op_upsample_nearest2x_backward, \
    .add_channel_bias_backward = cpu_op_add_channel_bias_backward,    \
    .concat_channels_backward = cpu_op_concat_channels_backward,      \
    .embedding_backward = cpu_op_embedding_backward,

#endif
