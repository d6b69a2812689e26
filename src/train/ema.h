// ema.h: the exponential moving average of a model's weights that
// diffusers' train_text_to_image.py keeps with --use_ema (EMAModel) and saves
// as the trained model: after optimizer step k (k = 1, 2, ...)
//   step  = max(0, k - update_after_step - 1)
//   decay = 0 when step <= 0, else
//           (1 + step) / (10 + step)                     (default)
//           1 - (1 + step / inv_gamma)^(-power)          (use_ema_warmup)
//           clamped to [min_decay, max decay]
//   shadow = shadow - (1 - decay) * (shadow - param)     (fp32, element by element)
// so step 1 copies the weights. The shadow is one flat f32 buffer laid out as
// the trainable parameters (a checkpoint stores it beside them).
#ifndef SDC_EMA_H
#define SDC_EMA_H

#include <stddef.h>
#include <stdint.h>

#include "core/backend.h"
#include "core/error.h"

typedef struct EmaConfig {
    double decay;              // the largest decay (EMAModel's decay: 0.9999)
    double min_decay;          // 0
    int64_t update_after_step; // 0
    int use_warmup;            // 0
    double inv_gamma, power;   // 1, 2/3 (use_warmup only)
} EmaConfig;

// diffusers EMAModel's defaults
EmaConfig ema_config_default(void);
// The decay of optimizer step k (1-based, EMAModel.optimization_step after its increment).
double ema_decay(const EmaConfig *c, int64_t k);
// One EMA update after optimizer step k of n parameters on be (be->ema).
int ema_update(const Backend *be, const EmaConfig *c, int64_t k, float *shadow, const float *params, size_t n,
               SdcError *err);

#endif
