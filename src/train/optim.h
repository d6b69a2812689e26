// optim.h: the optimizer side of DreamBooth training on flat fp32 buffers:
// AdamW exactly as torch.optim.AdamW (single-tensor fp32 path), gradient
// clipping by global L2 norm as torch.nn.utils.clip_grad_norm_, and the
// gradient-accumulation rule of accelerate. The parameters, gradients and
// moments live on a backend and every element is touched only by its ops
// (adamw, sum_squares, scale, zero: the CPU kernels in kernels/cpu/train_cpu.c
// are the reference a device version is checked against; tests/test_optim.c
// holds the torch fixture). Learning-rate schedules live in lr_schedule.h.
//
// One optimizer step of the trainer, as diffusers' train_dreambooth does it:
//   for each micro-batch i of the epoch (i = 0, 1, ...):
//       backward with dLoss = optim_accum_scale(accum)   // accelerate: loss / accum
//       gradients ADD into g (zeroed after the last optimizer step)
//       if (!optim_accum_is_sync(i, accum, is_last_batch_of_epoch)) continue;
//       rc = adamw_clip_grad_norm(&opt, max_grad_norm, &norm, &err)
//       if (rc == SDC_ERR_NONFINITE) stop: sdc_err_wrap(&err, "step %lld", step)
//       adamw_step(&opt, lr_schedule_lr(&sched, lr, step)); step++;
//       adamw_zero_grad(&opt);
#ifndef SDC_OPTIM_H
#define SDC_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "core/backend.h"
#include "core/error.h"

// A NaN or Inf gradient norm returns SDC_ERR_NONFINITE (core/error.h), so the
// trainer can stop with a clear message naming the step.

// One parameter tensor and its gradient, both flat fp32 (n,).
typedef struct OptimTensor {
    float *p;
    float *g;
    size_t n;
} OptimTensor;

// What the caller describes per param group (torch's param_groups).
typedef struct AdamWGroupDesc {
    const OptimTensor *tensors; // copied at init
    int n_tensors;
    double lr_scale;            // this group's lr = step lr * lr_scale (1.0; e.g. text encoder lr / unet lr)
    int has_weight_decay;       // 1: this group's own decoupled weight decay (torch's per-group
    double weight_decay;        // "weight_decay"), 0: AdamWConfig.weight_decay
} AdamWGroupDesc;

typedef struct AdamWGroup {
    OptimTensor *tensors; // (n_tensors)
    int n_tensors;
    double lr_scale;
    double weight_decay;  // resolved: the group's own or AdamWConfig's
    size_t numel;         // sum of the tensors' n
    float *m;             // (numel) exp_avg, the tensors' states concatenated in order
    float *v;             // (numel) exp_avg_sq
} AdamWGroup;

typedef struct AdamWConfig {
    double beta1, beta2;  // 0.9, 0.999
    double eps;           // 1e-8
    double weight_decay;  // 1e-2 (decoupled: p *= 1 - lr * wd)
} AdamWConfig;

typedef struct AdamW {
    const Backend *be;  // where the parameters, gradients and moments live
    AdamWConfig cfg;
    AdamWGroup *groups; // (n_groups)
    int n_groups;
    int64_t step;       // optimizer steps taken (torch's state["step"]; all params share it)
} AdamW;

// diffusers train_dreambooth's defaults (adam_beta1/2, adam_weight_decay, adam_epsilon).
AdamWConfig adamw_config_default(void);

// Allocates m and v (zeroed) once for every group on be. Fails on bad config
// (betas outside [0, 1), eps < 0), a NULL pointer or n == 0 tensor, OOM.
int adamw_init(AdamW *opt, const Backend *be, const AdamWConfig *cfg, const AdamWGroupDesc *groups, int n_groups,
               SdcError *err);
void adamw_free(AdamW *opt);

// One AdamW update of every parameter with lr (the scheduled lr; group i
// uses lr * lr_scale). Increments opt->step first, as torch does. No allocation.
void adamw_step(AdamW *opt, double lr);

// Zeroes every gradient (optimizer.zero_grad(); set_to_none has no meaning here).
void adamw_zero_grad(AdamW *opt);

// clip_grad_norm_(all params of opt, max_norm, norm_type 2); see optim_clip_grad_norm.
int adamw_clip_grad_norm(AdamW *opt, double max_norm, float *total_norm, SdcError *err);
// The same from every tensor's sum of squared gradients (ZeRO-1: summed over
// the ranks' pieces first): the total norm and the coefficient (< 1: scale
// the gradients with adamw_scale_grads), or SDC_ERR_NONFINITE.
int optim_clip_coef_from_sumsq(const double *per_tensor, int n, double max_norm, float *total_norm, float *coef,
                               SdcError *err);
void adamw_scale_grads(AdamW *opt, float coef);
// Every tensor's squared fp32 norm (float(||g_i||)^2, the terms torch's
// total norm sums), group by group in order, into sq (the groups' n_tensors).
void adamw_tensor_sumsq(const AdamW *opt, double *sq);

// ---- helpers over plain tensor lists in host memory (tests) ---------------------

// torch.nn.utils.clip_grad_norm_ with norm_type 2: total = || (||g_0||, ||g_1||, ...) ||,
// coef = max_norm / (total + 1e-6) clamped to 1, every g *= coef when coef < 1
// (fp32 like torch's). *total_norm (may be NULL) gets the pre-clip norm, for
// logging. A NaN/Inf norm returns SDC_ERR_NONFINITE and leaves g untouched.
int optim_clip_grad_norm(const OptimTensor *ts, int n, double max_norm, float *total_norm, SdcError *err);

// L2 norm over all gradients, as clip_grad_norm_ computes it (fp32 result).
float optim_grad_norm(const OptimTensor *ts, int n);

void optim_zero_grad(const OptimTensor *ts, int n);

// accelerate's gradient accumulation (Accelerator.backward divides the loss by
// gradient_accumulation_steps): the seed of the backward pass, 1/accum.
float optim_accum_scale(int accum_steps);
// accelerate's sync rule (sync_with_dataloader, the default): micro-batch i of
// an epoch (0-based) ends an accumulation when (i+1) % accum == 0 or it is the
// epoch's last batch; only then clip, step the optimizer and the schedule.
// A short final accumulation keeps the 1/accum scale, as accelerate's does.
int optim_accum_is_sync(int64_t micro_step_in_epoch, int accum_steps, int last_batch_of_epoch);

#endif
