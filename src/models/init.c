// init.c: see init.h.
#include "models/init.h"

#include <math.h>
#include <string.h>

// splitmix64 from (seed, name): each tensor its own stream
static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t name_seed(uint64_t seed, const char *name) {
    uint64_t h = 1469598103934665603ull; // FNV-1a
    for (; *name; name++) h = (h ^ (unsigned char)*name) * 1099511628211ull;
    return mix64(seed ^ mix64(h));
}

static double unit(uint64_t *s) { return (double)((*s = mix64(*s)) >> 11) * 0x1.0p-53; }

static void fill_uniform(float *x, int64_t n, double bound, uint64_t s) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)((2.0 * unit(&s) - 1.0) * bound);
}

static void fill_normal(float *x, int64_t n, double std, uint64_t s) { // Box-Muller
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = unit(&s), u2 = unit(&s);
        double r = sqrt(-2.0 * log(u1 > 0 ? u1 : 0x1.0p-53)) * std;
        x[i] = (float)(r * cos(2 * M_PI * u2));
        if (i + 1 < n) x[i + 1] = (float)(r * sin(2 * M_PI * u2));
    }
}

static void fill_const(float *x, int64_t n, float v) {
    for (int64_t i = 0; i < n; i++) x[i] = v;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

// fan_in of the weight beside a bias ("x.bias" -> "x.weight"); 0 when that
// weight is 1-D (a norm) or absent
static int64_t bias_fan_in(const ParamTable *t, const char *name) {
    char w[160];
    size_t k = strlen(name) - strlen("bias");
    if (k + strlen("weight") >= sizeof w) return 0;
    memcpy(w, name, k);
    strcpy(w + k, "weight");
    int i = param_table_find(t, w);
    if (i < 0 || t->e[i].t.ndim < 2) return 0;
    int64_t f = 1;
    for (int d = 1; d < t->e[i].t.ndim; d++) f *= t->e[i].t.shape[d];
    return f;
}

int params_init(const ParamTable *t, InitRule rule, const ClipConfig *clip, uint64_t seed, SdcError *err) {
    if (rule == INIT_CLIP && !clip) return sdc_err(err, SDC_ERR_INTERNAL, "params_init: INIT_CLIP without a config");
    for (int i = 0; i < t->n; i++) {
        const ParamEntry *e = &t->e[i];
        if (e->t.dtype != DT_F32 || e->t.device != DEV_CPU)
            return sdc_err(err, SDC_ERR_INTERNAL, "params_init: %s is not an F32 CPU tensor", e->name);
        float *x = tensor_f32p(&e->t);
        const int64_t n = tensor_numel(&e->t);
        const uint64_t s = name_seed(seed, e->name);
        const int is_bias = ends_with(e->name, ".bias");
        const int64_t bias_fan = is_bias ? bias_fan_in(t, e->name) : 0;
        int64_t fan_in = 1;
        for (int d = 1; d < e->t.ndim; d++) fan_in *= e->t.shape[d];
        if (rule == INIT_TORCH_DEFAULT) {
            if (e->t.ndim >= 2) fill_uniform(x, n, 1.0 / sqrt((double)fan_in), s);
            else if (is_bias && bias_fan) fill_uniform(x, n, 1.0 / sqrt((double)bias_fan), s);
            else fill_const(x, n, is_bias ? 0.0f : 1.0f); // norms
            continue;
        }
        // INIT_CLIP
        const double D = clip->hidden, L = clip->layers;
        const double in_std = pow(D, -0.5) * pow(2 * L, -0.5);
        if (e->t.ndim < 2) {
            fill_const(x, n, is_bias ? 0.0f : 1.0f); // layer norms; linear biases 0
            continue;
        }
        double std = 0.02; // embeddings, and any other linear (transformers' initializer_range)
        if (strstr(e->name, "q_proj.") || strstr(e->name, "k_proj.") || strstr(e->name, "v_proj.")) std = in_std;
        else if (strstr(e->name, "out_proj.")) std = pow(D, -0.5);
        else if (strstr(e->name, "fc1.")) std = pow(2 * D, -0.5);
        else if (strstr(e->name, "fc2.")) std = in_std;
        else if (strstr(e->name, "text_projection")) std = pow(D, -0.5);
        fill_normal(x, n, std, s);
    }
    return 0;
}
