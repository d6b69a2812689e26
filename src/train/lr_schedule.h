// lr_schedule.h: the learning-rate schedules of DreamBooth training, exactly
// as diffusers.optimization.get_scheduler builds them (a torch LambdaLR over
// one lambda per schedule), in double precision like Python.
//
// Step convention (the off-by-one that matters): diffusers' loop calls
// optimizer.step() then lr_scheduler.step(), and LambdaLR evaluates
// lambda(0) at construction, so the lr in use at optimizer step k
// (k = 0, 1, ...) is base_lr * lambda(k). lr_schedule_lr(s, base, k) is that
// value. With several param groups each group gets its own initial lr times
// the same lambda (polynomial's lambda divides by the optimizer's default lr,
// stored here as lr_init).
//
// Multi-process: accelerate steps the scheduler num_processes times per
// optimizer step and diffusers multiplies warmup and total by num_processes,
// so lambda(k*P) with (W*P, T*P) is the same ratio as lambda(k) with (W, T):
// pass the per-process counts (the divisions see the same exact ratios).
#ifndef SDC_LR_SCHEDULE_H
#define SDC_LR_SCHEDULE_H

#include <stdint.h>

#include "core/error.h"

typedef enum LrScheduleKind {
    LR_CONSTANT,              // 1
    LR_CONSTANT_WITH_WARMUP,  // k/W during warmup, then 1
    LR_LINEAR,                // warmup, then linear decay to 0 at T
    LR_COSINE,                // warmup, then half a cosine to 0 at T (num_cycles 0.5)
    LR_COSINE_WITH_RESTARTS,  // warmup, then num_cycles hard-restarted half cosines; 0 from T on
    LR_POLYNOMIAL,            // warmup, then (lr_init-lr_end)*rem^power + lr_end; lr_end past T
} LrScheduleKind;

typedef struct LrSchedule {
    LrScheduleKind kind;
    int64_t warmup_steps;   // num_warmup_steps (W)
    int64_t training_steps; // num_training_steps (T)
    double num_cycles;      // cosine: 0.5 (get_scheduler does not pass its own); restarts: the int given
    double power;           // polynomial only
    double lr_end;          // polynomial only (diffusers' fixed 1e-7)
    double lr_init;         // polynomial only: the optimizer's default lr
} LrSchedule;

// "constant", "constant_with_warmup", "linear", "cosine",
// "cosine_with_restarts", "polynomial" (diffusers' --lr_scheduler values).
// piecewise_constant is not supported (SDC_ERR_UNSUPPORTED).
int lr_schedule_parse(const char *name, LrScheduleKind *out, SdcError *err);
const char *lr_schedule_name(LrScheduleKind kind);

// get_scheduler(name, optimizer(lr=base_lr), num_warmup_steps, num_training_steps,
// num_cycles, power) with diffusers' train_dreambooth defaults num_cycles 1,
// power 1.0. Fails (SDC_ERR_ARG) where diffusers would raise: negative
// counts, polynomial with base_lr <= 1e-7, or with T == W (a division by
// zero in its lambda).
int lr_schedule_init(LrSchedule *s, LrScheduleKind kind, double base_lr, int64_t warmup_steps,
                     int64_t training_steps, int num_cycles, double power, SdcError *err);

// lambda(step): the multiplier LambdaLR applies to each group's initial lr.
double lr_schedule_factor(const LrSchedule *s, int64_t step);
// base_lr * lambda(step): the lr in use at optimizer step `step` (0-based).
double lr_schedule_lr(const LrSchedule *s, double base_lr, int64_t step);

#endif
