// fuzz_sched_config.c: libFuzzer target for src/sampling: sched_config_parse
// on the whole input (a scheduler_config.json), then, when it parses, every
// sampler built on it for a few steps and stepped once, and the config
// written back. Run with tools/fuzz.sh SECONDS JOBS sched.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sampling/sched_config.h"
#include "sampling/scheduler.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static SchedConfig c;
    SdcError err;
    if (sched_config_parse(&c, (const char *)data, size, "fuzz.json", &err)) return 0;
    c.prediction = size % 2 ? PRED_V : PRED_EPSILON;
    c.have |= SCHED_HAS_PREDICTION;
    float x[16], m[16];
    for (int i = 0; i < 16; i++) x[i] = (float)(i - 8), m[i] = (float)i / 16;
    for (int k = 0; k < SAMPLER_COUNT; k++) {
        Sampler s;
        if (sampler_init_cfg(&s, (SamplerKind)k, 1 + (int)(size % 7), &c, 0.0f, 16, &err)) continue;
        Rng r;
        rng_seed(&r, 1);
        sampler_step(&s, 0, x, m, &r);
        sampler_free(&s);
    }
    free(sched_config_to_json(&c));
    return 0;
}
