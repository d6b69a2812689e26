// ema.c: see ema.h.
#include "train/ema.h"

#include <math.h>

EmaConfig ema_config_default(void) {
    return (EmaConfig){.decay = 0.9999, .min_decay = 0.0, .update_after_step = 0, .use_warmup = 0,
                       .inv_gamma = 1.0, .power = 2.0 / 3.0};
}

double ema_decay(const EmaConfig *c, int64_t k) {
    int64_t step = k - c->update_after_step - 1;
    if (step <= 0) return 0.0;
    double d = c->use_warmup ? 1.0 - pow(1.0 + (double)step / c->inv_gamma, -c->power)
                             : (1.0 + (double)step) / (10.0 + (double)step);
    if (d > c->decay) d = c->decay;
    if (d < c->min_decay) d = c->min_decay;
    return d;
}

int ema_update(const Backend *be, const EmaConfig *c, int64_t k, float *shadow, const float *params, size_t n,
               SdcError *err) {
    if (!be->ema)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "EMA: the %s backend has no EMA update ---> train on the CPU",
                       be->name);
    // EMAModel: one_minus_decay = 1 - decay in Python floats, then a float32 multiply
    be->ema(be, shadow, params, n, (float)(1.0 - ema_decay(c, k)));
    return 0;
}
