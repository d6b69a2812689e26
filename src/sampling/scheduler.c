// scheduler.c: the SD noise schedule and the samplers (see scheduler.h).
//
// Each sampler follows its diffusers scheduler step by step, on the schedule
// the model's scheduler config gives (sched_config.h), including the
// float32 arithmetic of the per-step coefficients (torch computes them on
// 0-d float32 tensors) and the quirks users get from diffusers: DDIM and PNDM
// step back by 1000/steps whatever the spacing, Heun's duplicated timesteps,
// PNDM's repeated second timestep, the img2img begin index. The schedule
// arrays (timesteps, sigmas) are built the way numpy builds them (linspace,
// arange fill, interp, round half to even) so they match exactly. The file
// reads top to bottom: names, schedule, init, per-sampler steps, dispatch,
// img2img.
#include "sampling/scheduler.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------- names

static const struct {
    const char *name, *display;
    SamplerKind kind;
} SAMPLERS[SAMPLER_COUNT] = {
    {"euler", "Euler", SAMPLER_EULER},
    {"euler_a", "Euler a", SAMPLER_EULER_A},
    {"heun", "Heun", SAMPLER_HEUN},
    {"lms", "LMS", SAMPLER_LMS},
    {"ddim", "DDIM", SAMPLER_DDIM},
    {"pndm", "PNDM", SAMPLER_PNDM},
    {"ddpm", "DDPM", SAMPLER_DDPM},
    {"dpm++2m", "DPM++ 2M", SAMPLER_DPMPP_2M},
    {"dpm++2m_karras", "DPM++ 2M Karras", SAMPLER_DPMPP_2M_KARRAS},
    {"dpm++2m_sde", "DPM++ 2M SDE", SAMPLER_DPMPP_2M_SDE},
    {"unipc", "UniPC", SAMPLER_UNIPC},
    {"dpm++2m_sde_karras", "DPM++ 2M SDE Karras", SAMPLER_DPMPP_2M_SDE_KARRAS},
    {"euler_karras", "Euler Karras", SAMPLER_EULER_KARRAS},
    {"heun_karras", "Heun Karras", SAMPLER_HEUN_KARRAS},
    {"lms_karras", "LMS Karras", SAMPLER_LMS_KARRAS},
};

// Other spellings users type (ComfyUI, diffusers class names, A1111's PLMS).
static const struct {
    const char *alias;
    SamplerKind kind;
} ALIASES[] = {
    {"euler_ancestral", SAMPLER_EULER_A}, {"k_euler", SAMPLER_EULER},  {"k_euler_a", SAMPLER_EULER_A},
    {"k_lms", SAMPLER_LMS},               {"plms", SAMPLER_PNDM},      {"dpmpp_2m", SAMPLER_DPMPP_2M},
    {"dpmpp_2m_karras", SAMPLER_DPMPP_2M_KARRAS},                      {"dpmpp_2m_sde", SAMPLER_DPMPP_2M_SDE},
    {"dpmpp_2m_sde_karras", SAMPLER_DPMPP_2M_SDE_KARRAS},
};

static int name_eq(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return 0;
    return *a == *b;
}

int sampler_parse(const char *name, SamplerKind *out, SdcError *err) {
    for (int i = 0; i < SAMPLER_COUNT; i++)
        if (name_eq(name, SAMPLERS[i].name) || name_eq(name, SAMPLERS[i].display)) {
            *out = SAMPLERS[i].kind;
            return 0;
        }
    for (size_t i = 0; i < sizeof ALIASES / sizeof ALIASES[0]; i++)
        if (name_eq(name, ALIASES[i].alias)) {
            *out = ALIASES[i].kind;
            return 0;
        }
    char list[512] = "";
    for (int i = 0; i < SAMPLER_COUNT; i++) {
        strcat(list, i ? ", " : "");
        strcat(list, SAMPLERS[i].name);
    }
    return sdc_err(err, SDC_ERR_ARG,
                   "unknown sampler '%s' ---> known samplers: %s (or A1111's names: \"Euler a\", \"DPM++ 2M Karras\", ...)",
                   name, list);
}

const char *sampler_name(SamplerKind k) { return SAMPLERS[k].name; }
const char *sampler_display_name(SamplerKind k) { return SAMPLERS[k].display; }

// ---------------------------------------------------------------- classes

// Each sampler runs as one diffusers class; a config field the file leaves
// out takes that class's default (sched_config.h).
typedef struct ClassInfo {
    const char *name;
    unsigned bit;
    TimestepSpacing spacing;     // default timestep_spacing
    double beta_start, beta_end; // defaults (beta_schedule defaults to linear everywhere)
    int clip_sample;             // default clip_sample; -1: the class has none
    int alpha_to_one;            // default set_alpha_to_one; -1: none
    int karras;                  // has use_karras_sigmas
    int zero_snr;                // has rescale_betas_zero_snr: 1, and then sets alphabar[-1] = 2^-24: 2
} ClassInfo;

enum { C_EULER, C_EULER_A, C_HEUN, C_LMS, C_DDIM, C_PNDM, C_DDPM, C_DPM, C_UNIPC };
static const ClassInfo CLASSES[] = {
    [C_EULER] = {"EulerDiscreteScheduler", SCHED_CLASS_EULER, SPACING_LINSPACE, 0.0001, 0.02, -1, -1, 1, 2},
    [C_EULER_A] = {"EulerAncestralDiscreteScheduler", SCHED_CLASS_EULER_A, SPACING_LINSPACE, 0.0001, 0.02, -1, -1, 0,
                   2},
    [C_HEUN] = {"HeunDiscreteScheduler", SCHED_CLASS_HEUN, SPACING_LINSPACE, 0.00085, 0.012, 0, -1, 1, 0},
    [C_LMS] = {"LMSDiscreteScheduler", SCHED_CLASS_LMS, SPACING_LINSPACE, 0.0001, 0.02, -1, -1, 1, 0},
    [C_DDIM] = {"DDIMScheduler", SCHED_CLASS_DDIM, SPACING_LEADING, 0.0001, 0.02, 1, 1, 0, 1},
    [C_PNDM] = {"PNDMScheduler", SCHED_CLASS_PNDM, SPACING_LEADING, 0.0001, 0.02, -1, 0, 0, 0},
    [C_DDPM] = {"DDPMScheduler", SCHED_CLASS_DDPM, SPACING_LEADING, 0.0001, 0.02, 1, -1, 0, 1},
    [C_DPM] = {"DPMSolverMultistepScheduler", SCHED_CLASS_DPM, SPACING_LINSPACE, 0.0001, 0.02, -1, -1, 1, 2},
    [C_UNIPC] = {"UniPCMultistepScheduler", SCHED_CLASS_UNIPC, SPACING_LINSPACE, 0.0001, 0.02, -1, -1, 1, 2},
};

static int class_of(SamplerKind k) {
    switch (k) {
    case SAMPLER_EULER:
    case SAMPLER_EULER_KARRAS: return C_EULER;
    case SAMPLER_EULER_A: return C_EULER_A;
    case SAMPLER_HEUN:
    case SAMPLER_HEUN_KARRAS: return C_HEUN;
    case SAMPLER_LMS:
    case SAMPLER_LMS_KARRAS: return C_LMS;
    case SAMPLER_DDIM: return C_DDIM;
    case SAMPLER_PNDM: return C_PNDM;
    case SAMPLER_DDPM: return C_DDPM;
    case SAMPLER_UNIPC: return C_UNIPC;
    default: return C_DPM;
    }
}

unsigned sampler_class(SamplerKind k) { return CLASSES[class_of(k)].bit; }
const char *sampler_class_name(SamplerKind k) { return CLASSES[class_of(k)].name; }
int sampler_has_karras(SamplerKind k) { return CLASSES[class_of(k)].karras; }

SamplerKind sampler_karras_twin(SamplerKind k) {
    switch (k) {
    case SAMPLER_EULER: return SAMPLER_EULER_KARRAS;
    case SAMPLER_HEUN: return SAMPLER_HEUN_KARRAS;
    case SAMPLER_LMS: return SAMPLER_LMS_KARRAS;
    case SAMPLER_DPMPP_2M: return SAMPLER_DPMPP_2M_KARRAS;
    case SAMPLER_DPMPP_2M_SDE: return SAMPLER_DPMPP_2M_SDE_KARRAS;
    default: return k;
    }
}

TimestepSpacing sampler_default_spacing(SamplerKind k) { return CLASSES[class_of(k)].spacing; }

static int is_alpha_space(SamplerKind k) { return k == SAMPLER_DDIM || k == SAMPLER_PNDM || k == SAMPLER_DDPM; }
static int is_k_diffusion(SamplerKind k) {
    return k == SAMPLER_EULER || k == SAMPLER_EULER_A || k == SAMPLER_HEUN || k == SAMPLER_LMS;
}
static int is_stochastic(const Sampler *s) {
    return s->kind == SAMPLER_EULER_A || s->kind == SAMPLER_DDPM || s->kind == SAMPLER_DPMPP_2M_SDE ||
           (s->kind == SAMPLER_DDIM && s->eta > 0);
}

// ---------------------------------------------------------------- schedule

// torch.linspace(a, b, n, dtype=float32)[k]: ends rounded from double, a
// float step, each half from its own end with one rounding, as torch's FMA
// kernel does.
static float torch_linspace_f32(double a, double b, int n, int k) {
    const float fa = (float)a, fb = (float)b;
    if (n == 1) return fa;
    const float step = (fb - fa) / (float)(n - 1);
    return k < n / 2 ? (float)((double)fa + (double)step * k) : (float)((double)fb - (double)step * (n - 1 - k));
}

// torch.cumprod of float32 values: accumulated in double, stored float.
static void cumprod_f32(const float *a, int n, float *out) {
    double prod = 1.0;
    for (int t = 0; t < n; t++) {
        prod *= (double)a[t];
        out[t] = (float)prod;
    }
}

// The run's betas as diffusers computes them (float32), then alphas_cumprod
// and sigma = sqrt((1 - abar) / abar) in float; zero_snr: 0 none, 1 rescaled
// (alphabar[-1] = 0), 2 rescaled and alphabar[-1] = 2^-24 (the sigma-space
// classes, so the first sigma is finite).
static void train_schedule(const SchedConfig *c, int n, BetaSchedule bs, double b0, double b1, int zero_snr,
                           float *abar, float *sig) {
    float betas[SCHED_MAX_TRAIN_STEPS], alphas[SCHED_MAX_TRAIN_STEPS];
    for (int t = 0; t < n; t++) {
        if (c->n_trained == n && (c->have & SCHED_HAS_TRAINED_BETAS)) {
            betas[t] = c->trained_betas[t];
        } else if (bs == BETAS_LINEAR) {
            betas[t] = torch_linspace_f32(b0, b1, n, t);
        } else if (bs == BETAS_SCALED_LINEAR) {
            float b = torch_linspace_f32(sqrt(b0), sqrt(b1), n, t);
            betas[t] = b * b;
        } else { // squaredcos_cap_v2 (the Glide cosine schedule), in double, capped at 0.999
            double t1 = (double)t / n, t2 = (double)(t + 1) / n;
            double a1 = cos((t1 + 0.008) / 1.008 * M_PI / 2), a2 = cos((t2 + 0.008) / 1.008 * M_PI / 2);
            double beta = 1 - (a2 * a2) / (a1 * a1);
            betas[t] = (float)(beta < 0.999 ? beta : 0.999);
        }
    }
    if (zero_snr) {
        // rescale_zero_terminal_snr: shift sqrt(alphabar) so its last value is
        // 0, scale so its first stays, back to betas (all in float32)
        float s[SCHED_MAX_TRAIN_STEPS];
        for (int t = 0; t < n; t++) alphas[t] = 1.0f - betas[t];
        cumprod_f32(alphas, n, s);
        for (int t = 0; t < n; t++) s[t] = sqrtf(s[t]);
        const float s0 = s[0], sT = s[n - 1], scale = s0 / (s0 - sT);
        for (int t = 0; t < n; t++) s[t] = (s[t] - sT) * scale;
        for (int t = 0; t < n; t++) s[t] = s[t] * s[t];
        for (int t = n - 1; t >= 1; t--) alphas[t] = s[t] / s[t - 1];
        alphas[0] = s[0];
        for (int t = 0; t < n; t++) betas[t] = 1.0f - alphas[t];
    }
    for (int t = 0; t < n; t++) alphas[t] = 1.0f - betas[t];
    cumprod_f32(alphas, n, abar);
    if (zero_snr == 2) abar[n - 1] = 0x1p-24f;
    for (int t = 0; t < n; t++) sig[t] = sqrtf((1.0f - abar[t]) / abar[t]);
}

// np.linspace(0, stop, num)[k]: k * (stop / (num - 1)), the last one exactly stop.
static double np_linspace(double stop, int num, int k) {
    if (num == 1) return 0.0;
    if (k == num - 1) return stop;
    return (double)k * (stop / (num - 1));
}

// np.arange(N, 0, -N/steps)[k]: numpy fills start + k * (x1 - x0).
static double np_arange_trailing(int N, int steps, int k) {
    double x0 = N, x1 = x0 - (double)N / steps;
    return x0 + (double)k * (x1 - x0);
}

// The n descending timesteps of the common recipe (DDIM, PNDM, DDPM, Euler,
// Heun, LMS) over N training steps: linspace(0, N-1, n), leading
// k*(N//n)+offset, trailing round(arange(N, 0, -N/n)) - 1. integer: round
// linspace to integers (the alpha-space schedulers) instead of float32 (the
// sigma-space ones). numpy gives more than n values for some trailing n
// (61, 103, ...); sdc keeps n.
static void common_timesteps(TimestepSpacing sp, int n, int integer, int N, int offset, double *out) {
    for (int i = 0; i < n; i++) {
        int k = n - 1 - i;
        double t;
        if (sp == SPACING_LINSPACE) {
            t = np_linspace(N - 1, n, k);
            t = integer ? rint(t) : (double)(float)t;
        } else if (sp == SPACING_LEADING) {
            t = (double)(k * (N / n) + offset);
        } else {
            t = rint(np_arange_trailing(N, n, i)) - 1;
        }
        out[i] = t;
    }
}

// DPM-Solver and UniPC space n+1 points and drop the last (t = 0).
static void multistep_timesteps(TimestepSpacing sp, int n, int N, int offset, double *out) {
    for (int i = 0; i < n; i++) {
        int k = n - i; // of n + 1 points, descending, dropping k = 0
        if (sp == SPACING_LINSPACE)
            out[i] = rint(np_linspace(N - 1, n + 1, k));
        else if (sp == SPACING_LEADING)
            out[i] = (double)(k * (N / (n + 1)) + offset);
        else
            out[i] = rint(np_arange_trailing(N, n, i)) - 1;
    }
}

// np.interp(t, arange(N), sig) in double.
static double interp_sigma(const float *sig, int N, double t) {
    if (t <= 0) return sig[0];
    if (t >= N - 1) return sig[N - 1];
    int j = (int)floor(t);
    double slope = (double)sig[j + 1] - (double)sig[j];
    return slope * (t - j) + (double)sig[j];
}

// diffusers' _sigma_to_t: the fractional timestep of sigma by linear
// interpolation in log sigma (log_sig: float32 logs of the training sigmas).
static double sigma_to_t(double sigma, const float *log_sig, int N) {
    double ls = log(fmax(sigma, 1e-10));
    int lo = 0;
    for (int j = 0; j < N; j++)
        if (ls - (double)log_sig[j] >= 0) lo = j;
    if (lo > N - 2) lo = N - 2;
    double low = log_sig[lo], high = log_sig[lo + 1];
    double w = (low - ls) / (low - high);
    w = w < 0 ? 0 : w > 1 ? 1 : w;
    return (1 - w) * lo + w * (lo + 1);
}

// Karras et al. (rho 7) from smax down to smin over n steps.
static double karras_sigma(double smin, double smax, int n, int i) {
    const double min_inv = pow(smin, 1.0 / 7.0), max_inv = pow(smax, 1.0 / 7.0);
    return pow(max_inv + np_linspace(1.0, n, i) * (min_inv - max_inv), 7.0);
}

// ---------------------------------------------------------------- init

void sampler_reset(Sampler *s) {
    s->n_done = 0;
    s->n_hist = 0;
    s->heun_pending = 0;
    s->unipc_order = 0;
}

int sampler_init(Sampler *s, SamplerKind kind, int steps, TimestepSpacing spacing, PredictionType prediction,
                 float eta, size_t n_latent, SdcError *err) {
    SchedConfig *c = malloc(sizeof *c);
    if (!c) return sdc_err(err, SDC_ERR_OOM, "sampler config");
    sched_config_sd(c, prediction);
    c->spacing = spacing;
    c->have |= SCHED_HAS_SPACING;
    int rc = sampler_init_cfg(s, kind, steps, c, eta, n_latent, err);
    free(c);
    return rc;
}

int sampler_init_cfg(Sampler *s, SamplerKind kind, int steps, const SchedConfig *c, float eta, size_t n_latent,
                     SdcError *err) {
    memset(s, 0, sizeof *s);
    if (kind < 0 || kind >= SAMPLER_COUNT) return sdc_err(err, SDC_ERR_ARG, "sampler kind %d out of range", (int)kind);
    const ClassInfo *ci = &CLASSES[class_of(kind)];
    const char *where = c->path[0] ? c->path : "sdc's SD scheduler config";
    const unsigned h = c->have;
    // the config's use_karras_sigmas reaches every class that has it; the
    // *_karras names are their base method with Karras sigmas
    const int karras = ci->karras && (kind == SAMPLER_EULER_KARRAS || kind == SAMPLER_HEUN_KARRAS ||
                                      kind == SAMPLER_LMS_KARRAS || kind == SAMPLER_DPMPP_2M_KARRAS ||
                                      kind == SAMPLER_DPMPP_2M_SDE_KARRAS ||
                                      ((h & SCHED_HAS_KARRAS) && c->use_karras_sigmas));
    for (int k = 0; k < c->n_unsupported; k++) {
        const SchedUnsupported *u = &c->unsupported[k];
        if ((u->classes & ci->bit) && (!u->karras_only || karras))
            return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"%s\" is %s: diffusers' %s reads it for sampler %s, and "
                           "sdc does not implement it\n---> choose another sampler (--sampler), or remove \"%s\" "
                           "from the file if the model does not need it", where, u->field, u->value, ci->name,
                           sampler_name(kind), u->field);
    }
    if (kind == SAMPLER_EULER_KARRAS) kind = SAMPLER_EULER;
    if (kind == SAMPLER_HEUN_KARRAS) kind = SAMPLER_HEUN;
    if (kind == SAMPLER_LMS_KARRAS) kind = SAMPLER_LMS;
    if (kind == SAMPLER_DPMPP_2M_KARRAS) kind = SAMPLER_DPMPP_2M;
    if (kind == SAMPLER_DPMPP_2M_SDE_KARRAS) kind = SAMPLER_DPMPP_2M_SDE;
    if (steps < 1 || steps > SCHED_MAX_STEPS)
        return sdc_err(err, SDC_ERR_ARG, "--steps %d out of range ---> use 1 to %d", steps, SCHED_MAX_STEPS);
    if (eta < 0) return sdc_err(err, SDC_ERR_ARG, "eta %g is negative ---> use 0 (DDIM) to 1 (DDPM-like)", eta);

    // ---- the config resolved for the class
    const int N = (h & SCHED_HAS_TRAIN_STEPS) ? c->num_train_timesteps : 1000;
    if (N < 2 || N > SCHED_MAX_TRAIN_STEPS)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: num_train_timesteps %d: sdc supports 2 to %d", where, N,
                       SCHED_MAX_TRAIN_STEPS);
    if ((h & SCHED_HAS_TRAINED_BETAS) && c->n_trained != N)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: %d trained_betas for %d training steps", where, c->n_trained, N);
    if (steps > N)
        return sdc_err(err, SDC_ERR_ARG, "--steps %d is more than the %d training steps of %s ---> use at most %d",
                       steps, N, where, N);
    const BetaSchedule bs = (h & SCHED_HAS_BETA_SCHEDULE) ? c->beta_schedule : BETAS_LINEAR;
    const double b0 = (h & SCHED_HAS_BETA_START) ? c->beta_start : ci->beta_start;
    const double b1 = (h & SCHED_HAS_BETA_END) ? c->beta_end : ci->beta_end;
    const int zsnr = ci->zero_snr && (h & SCHED_HAS_ZERO_SNR) && c->rescale_betas_zero_snr ? ci->zero_snr : 0;
    const TimestepSpacing spacing = (h & SCHED_HAS_SPACING) ? c->spacing : ci->spacing;
    const int offset = (h & SCHED_HAS_STEPS_OFFSET) ? c->steps_offset : 0;
    s->kind = kind;
    s->prediction = (h & SCHED_HAS_PREDICTION) ? c->prediction : PRED_EPSILON;
    s->spacing = spacing;
    s->karras = karras;
    s->steps = steps;
    s->eta = eta;
    s->n = n_latent;
    s->n_train = N;
    s->clip = ci->clip_sample >= 0 && ((h & SCHED_HAS_CLIP_SAMPLE) ? c->clip_sample : ci->clip_sample);
    s->clip_range = (h & SCHED_HAS_CLIP_RANGE) ? (float)c->clip_sample_range : 1.0f;

    float sig[SCHED_MAX_TRAIN_STEPS], log_sig[SCHED_MAX_TRAIN_STEPS];
    train_schedule(c, N, bs, b0, b1, zsnr, s->alphas_cumprod, sig);
    for (int t = 0; t < N; t++) log_sig[t] = (float)log((double)sig[t]);
    const int alpha_to_one = ci->alpha_to_one >= 0 && ((h & SCHED_HAS_ALPHA_TO_ONE) ? c->set_alpha_to_one
                                                                                    : ci->alpha_to_one);
    s->final_abar = alpha_to_one ? 1.0f : s->alphas_cumprod[0];
    double ts[SCHED_MAX_STEPS], sg[SCHED_MAX_STEPS + 1];
    int n_sig = 0; // sigmas before the doubling for Heun, with the final 0

    switch (kind) {
    case SAMPLER_DDIM:
    case SAMPLER_DDPM:
        common_timesteps(spacing, steps, 1, N, offset, ts);
        s->n_evals = steps;
        break;
    case SAMPLER_PNDM:
        // PLMS order: [t0, t1, t1, t2, ..., t_{n-1}] (diffusers' skip_prk_steps)
        common_timesteps(spacing, steps, 1, N, offset, sg);
        s->n_evals = steps == 1 ? 1 : steps + 1;
        for (int i = 0; i < s->n_evals; i++) ts[i] = sg[i <= 1 ? i : i - 1];
        break;
    case SAMPLER_EULER:
    case SAMPLER_EULER_A:
    case SAMPLER_HEUN:
    case SAMPLER_LMS:
        common_timesteps(spacing, steps, 0, N, offset, ts);
        for (int i = 0; i < steps; i++) sg[i] = interp_sigma(sig, N, ts[i]);
        if (karras) {
            // diffusers' _convert_to_karras over the range of the spaced
            // sigmas, timesteps back from the sigmas (not rounded)
            const double smin = sg[steps - 1], smax = sg[0];
            for (int i = 0; i < steps; i++) {
                sg[i] = karras_sigma(smin, smax, steps, i);
                ts[i] = sigma_to_t(sg[i], log_sig, N);
            }
        }
        sg[steps] = 0;
        n_sig = steps + 1;
        s->n_evals = kind == SAMPLER_HEUN ? 2 * steps - 1 : steps;
        break;
    case SAMPLER_DPMPP_2M:
    case SAMPLER_DPMPP_2M_SDE:
    case SAMPLER_UNIPC:
        if (karras) {
            // Karras over the whole training range; timesteps back from the
            // sigmas, rounded (DPM-Solver on the cosine schedule: truncated,
            // as its int64 cast does); the spacing plays no part
            const int truncate = kind != SAMPLER_UNIPC && bs == BETAS_SQUAREDCOS_CAP_V2;
            for (int i = 0; i < steps; i++) {
                sg[i] = karras_sigma(sig[0], sig[N - 1], steps, i);
                const double t = sigma_to_t(sg[i], log_sig, N);
                ts[i] = truncate ? trunc(t) : rint(t);
            }
        } else {
            multistep_timesteps(spacing, steps, N, offset, ts);
            for (int i = 0; i < steps; i++) sg[i] = interp_sigma(sig, N, ts[i]);
        }
        sg[steps] = 0;
        n_sig = steps + 1;
        s->n_evals = steps;
        break;
    default:
        return sdc_err(err, SDC_ERR_INTERNAL, "sampler kind %d has no schedule", (int)kind);
    }
    s->n_sigmas = kind == SAMPLER_HEUN ? 2 * steps : n_sig;

    // buffers: timesteps, sigmas, history, saved sample, noise, scratch
    // history: LMS's 4 derivatives, PNDM's 4 eps, DPM/UniPC's 2 x0 predictions, Heun's first slope
    if (kind == SAMPLER_LMS || kind == SAMPLER_PNDM)
        s->hist_cap = 4;
    else if (kind == SAMPLER_HEUN)
        s->hist_cap = 1;
    else if (kind == SAMPLER_DPMPP_2M || kind == SAMPLER_DPMPP_2M_KARRAS || kind == SAMPLER_DPMPP_2M_SDE ||
             kind == SAMPLER_DPMPP_2M_SDE_KARRAS || kind == SAMPLER_UNIPC)
        s->hist_cap = 2;
    size_t nf = (size_t)s->n_evals + (size_t)s->n_sigmas + (size_t)(s->hist_cap + 3) * n_latent;
    s->mem = malloc(nf * sizeof(float));
    if (!s->mem) return sdc_err(err, SDC_ERR_OOM, "sampler buffers (%zu floats)", nf);
    float *p = s->mem;
    s->timesteps = p, p += s->n_evals;
    s->sigmas = s->n_sigmas ? p : NULL, p += s->n_sigmas;
    for (int k = 0; k < s->hist_cap; k++) s->hist[k] = p, p += n_latent;
    s->saved = p, p += n_latent;
    s->noise = p, p += n_latent;
    s->tmp = p;

    if (kind == SAMPLER_HEUN) {
        // [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0] and [t0, t1, t1, ..., t_{n-1}, t_{n-1}]
        s->sigmas[0] = (float)sg[0];
        for (int i = 1; i < steps; i++) s->sigmas[2 * i - 1] = s->sigmas[2 * i] = (float)sg[i];
        s->sigmas[2 * steps - 1] = 0;
        s->timesteps[0] = (float)ts[0];
        for (int i = 1; i < steps; i++) s->timesteps[2 * i - 1] = s->timesteps[2 * i] = (float)ts[i];
    } else {
        for (int i = 0; i < s->n_evals; i++) s->timesteps[i] = (float)ts[i];
        for (int i = 0; i < s->n_sigmas; i++) s->sigmas[i] = (float)sg[i];
    }

    s->init_noise_sigma = 1.0f;
    if (is_k_diffusion(kind)) {
        float smax = 0;
        for (int i = 0; i < s->n_sigmas; i++) smax = fmaxf(smax, s->sigmas[i]);
        s->init_noise_sigma = spacing == SPACING_LEADING ? sqrtf(smax * smax + 1.0f) : smax;
    }
    sampler_reset(s);
    return 0;
}

void sampler_free(Sampler *s) {
    free(s->mem);
    memset(s, 0, sizeof *s);
}

int sampler_num_evals(const Sampler *s) { return s->n_evals; }
float sampler_timestep(const Sampler *s, int i) { return s->timesteps[i]; }

float sampler_input_scale(const Sampler *s, int i) {
    if (!is_k_diffusion(s->kind)) return 1.0f;
    float sg = s->sigmas[i];
    return 1.0f / sqrtf(sg * sg + 1.0f);
}

// Makes room for one more history buffer and returns it (the oldest is reused).
static float *hist_push(Sampler *s) {
    if (s->n_hist == s->hist_cap) {
        float *old = s->hist[0];
        for (int k = 0; k + 1 < s->hist_cap; k++) s->hist[k] = s->hist[k + 1];
        s->hist[s->hist_cap - 1] = old;
    } else {
        s->n_hist++;
    }
    return s->hist[s->n_hist - 1];
}
// k = 0: newest
static const float *hist_get(const Sampler *s, int k) { return s->hist[s->n_hist - 1 - k]; }

// ---------------------------------------------------------------- k-diffusion samplers (sigma space)

// torch.clamp(v, -r, r) (NaN stays NaN): clip_sample on the x0 prediction.
static inline float clamp_x0(float v, float r) { return v < -r ? -r : v > r ? r : v; }

// x0 predicted at sigma (diffusers' pred_original_sample of the Euler
// family), clamped when the class clips (Heun's clip_sample)
static void k_x0(const Sampler *s, float sigma, const float *x, const float *m, float *x0) {
    if (s->prediction == PRED_V) {
        float c_out = -sigma / sqrtf(sigma * sigma + 1.0f), c_skip = sigma * sigma + 1.0f;
        for (size_t k = 0; k < s->n; k++) x0[k] = m[k] * c_out + x[k] / c_skip;
    } else {
        for (size_t k = 0; k < s->n; k++) x0[k] = x[k] - sigma * m[k];
    }
    if (s->clip)
        for (size_t k = 0; k < s->n; k++) x0[k] = clamp_x0(x0[k], s->clip_range);
}

static void step_euler(Sampler *s, int i, float *x, const float *m) {
    float sigma = s->sigmas[i], dt = s->sigmas[i + 1] - sigma;
    k_x0(s, sigma, x, m, s->tmp);
    for (size_t k = 0; k < s->n; k++) x[k] = x[k] + (x[k] - s->tmp[k]) / sigma * dt;
}

static void step_euler_a(Sampler *s, int i, float *x, const float *m, Rng *rng) {
    float sf = s->sigmas[i], st = s->sigmas[i + 1];
    float up = sqrtf(st * st * (sf * sf - st * st) / (sf * sf));
    float down = sqrtf(st * st - up * up), dt = down - sf;
    k_x0(s, sf, x, m, s->tmp);
    rng_normal(rng, s->noise, s->n);
    for (size_t k = 0; k < s->n; k++) x[k] = x[k] + (x[k] - s->tmp[k]) / sf * dt + s->noise[k] * up;
}

// Even evaluations take an Euler step and remember it; odd ones redo it with
// the mean of both slopes (sigmas[i] is the sigma the UNet saw at i).
static void step_heun(Sampler *s, int i, float *x, const float *m) {
    float *d1 = s->hist[0];
    if (!s->heun_pending) {
        float sigma = s->sigmas[i], next = s->sigmas[i + 1];
        k_x0(s, sigma, x, m, s->tmp);
        s->heun_dt = next - sigma;
        for (size_t k = 0; k < s->n; k++) {
            d1[k] = (x[k] - s->tmp[k]) / sigma;
            s->saved[k] = x[k];
            x[k] = x[k] + d1[k] * s->heun_dt;
        }
        s->heun_pending = 1; // diffusers leaves the last (Euler only) one pending too: no evaluation follows
    } else {
        float next = s->sigmas[i], dt = s->heun_dt;
        k_x0(s, next, x, m, s->tmp);
        for (size_t k = 0; k < s->n; k++) {
            float d = (d1[k] + (x[k] - s->tmp[k]) / next) / 2;
            x[k] = s->saved[k] + d * dt;
        }
        s->heun_pending = 0;
    }
}

// Integral over [a, b] of the Lagrange basis polynomial `cur` of the nodes
// sig[i], sig[i-1], ..., sig[i-order+1]: a cubic at most, so 3-point
// Gauss-Legendre is exact (diffusers integrates it with scipy's quad).
static double lms_coeff(const float *sig, int i, int order, int cur) {
    static const double gx[3] = {-0.7745966692414834, 0.0, 0.7745966692414834};
    static const double gw[3] = {0.5555555555555556, 0.8888888888888888, 0.5555555555555556};
    double a = sig[i], b = sig[i + 1], half = 0.5 * (b - a), mid = 0.5 * (a + b), sum = 0;
    for (int q = 0; q < 3; q++) {
        double tau = mid + half * gx[q], prod = 1.0;
        for (int k = 0; k < order; k++)
            if (k != cur) prod *= (tau - sig[i - k]) / ((double)sig[i - cur] - sig[i - k]);
        sum += gw[q] * prod;
    }
    return sum * half;
}

static void step_lms(Sampler *s, int i, float *x, const float *m) {
    float sigma = s->sigmas[i];
    k_x0(s, sigma, x, m, s->tmp);
    float *d = hist_push(s);
    for (size_t k = 0; k < s->n; k++) d[k] = (x[k] - s->tmp[k]) / sigma;
    // diffusers: order from the absolute step index, terms limited by the
    // derivatives kept since the run began (img2img starts with one)
    int order = i + 1 < 4 ? i + 1 : 4, terms = order < s->n_hist ? order : s->n_hist;
    float c[4];
    for (int j = 0; j < terms; j++) c[j] = (float)lms_coeff(s->sigmas, i, order, j);
    for (size_t k = 0; k < s->n; k++) {
        float acc = 0;
        for (int j = 0; j < terms; j++) acc += c[j] * hist_get(s, j)[k];
        x[k] = x[k] + acc;
    }
}

// ---------------------------------------------------------------- alpha-space samplers (DDIM, PNDM, DDPM)

static float abar_at(const Sampler *s, int t) {
    if (t > s->n_train - 1) t = s->n_train - 1;
    return s->alphas_cumprod[t];
}

static void step_ddim(Sampler *s, int i, float *x, const float *m, Rng *rng) {
    int t = (int)s->timesteps[i], prev = t - s->n_train / s->steps;
    float a = abar_at(s, t), ap = prev >= 0 ? abar_at(s, prev) : s->final_abar;
    float b = 1 - a, bp = 1 - ap;
    float sa = sqrtf(a), sb = sqrtf(b), sap = sqrtf(ap);
    float var = (bp / b) * (1 - a / ap), std = s->eta * sqrtf(var);
    float cdir = sqrtf(1 - ap - std * std);
    if (s->eta > 0) rng_normal(rng, s->noise, s->n);
    for (size_t k = 0; k < s->n; k++) {
        float x0, e;
        if (s->prediction == PRED_V) {
            x0 = sa * x[k] - sb * m[k];
            e = sa * m[k] + sb * x[k];
        } else {
            x0 = (x[k] - sb * m[k]) / sa;
            e = m[k];
        }
        if (s->clip) x0 = clamp_x0(x0, s->clip_range); // eps stays the model's (use_clipped_model_output False)
        float v = sap * x0 + cdir * e;
        x[k] = s->eta > 0 ? v + std * s->noise[k] : v;
    }
}

static void step_ddpm(Sampler *s, int i, float *x, const float *m, Rng *rng) {
    int t = (int)s->timesteps[i], prev = i + 1 < s->n_evals ? (int)s->timesteps[i + 1] : -1;
    float a = abar_at(s, t), ap = prev >= 0 ? abar_at(s, prev) : 1.0f;
    float b = 1 - a, bp = 1 - ap, ca = a / ap, cb = 1 - ca;
    float sa = sqrtf(a), sb = sqrtf(b);
    float c_x0 = sqrtf(ap) * cb / b, c_x = sqrtf(ca) * bp / b;
    float var = fmaxf((1 - ap) / (1 - a) * cb, 1e-20f), sd = sqrtf(var); // fixed_small
    if (t > 0) rng_normal(rng, s->noise, s->n);
    for (size_t k = 0; k < s->n; k++) {
        float x0 = s->prediction == PRED_V ? sa * x[k] - sb * m[k] : (x[k] - sb * m[k]) / sa;
        if (s->clip) x0 = clamp_x0(x0, s->clip_range);
        float v = c_x0 * x0 + c_x * x[k];
        x[k] = t > 0 ? v + sd * s->noise[k] : v;
    }
}

// PNDM formula (9): x at t -> x at prev given the (combined) eps e.
static void pndm_prev(const Sampler *s, const float *x, int t, int prev, const float *e, float *out) {
    float a = abar_at(s, t), ap = prev >= 0 ? abar_at(s, prev) : s->final_abar;
    float b = 1 - a, bp = 1 - ap;
    float c_x = sqrtf(ap / a), denom = a * sqrtf(bp) + sqrtf(a * b * ap), c_e = ap - a;
    float sa = sqrtf(a), sb = sqrtf(b);
    for (size_t k = 0; k < s->n; k++) {
        float ek = s->prediction == PRED_V ? sa * e[k] + sb * x[k] : e[k];
        out[k] = c_x * x[k] - c_e * ek / denom;
    }
}

// PLMS (diffusers' step_plms): the first step is Euler-like; the second
// evaluation (the repeated timestep) redoes it from the saved sample with the
// mean eps (a Heun step); then Adams-Bashforth of order 2, 3, 4 on the eps
// history.
static void step_pndm(Sampler *s, int i, float *x, const float *m) {
    const int ratio = s->n_train / s->steps, c = s->n_done;
    int t = (int)s->timesteps[i], prev = t - ratio;
    float *e = s->tmp;
    if (c != 1) {
        float *h = hist_push(s);
        memcpy(h, m, s->n * sizeof *m);
    } else {
        prev = t;
        t = t + ratio;
    }
    const float *e1 = s->n_hist >= 1 ? hist_get(s, 0) : NULL, *e2 = s->n_hist >= 2 ? hist_get(s, 1) : NULL;
    const float *e3 = s->n_hist >= 3 ? hist_get(s, 2) : NULL, *e4 = s->n_hist >= 4 ? hist_get(s, 3) : NULL;
    const float *xs = x;
    if (s->n_hist == 1 && c == 0) {
        memcpy(s->saved, x, s->n * sizeof *x);
        memcpy(e, m, s->n * sizeof *m);
    } else if (s->n_hist == 1 && c == 1) {
        for (size_t k = 0; k < s->n; k++) e[k] = (m[k] + e1[k]) / 2;
        xs = s->saved;
    } else if (s->n_hist == 2) {
        for (size_t k = 0; k < s->n; k++) e[k] = (3 * e1[k] - e2[k]) / 2;
    } else if (s->n_hist == 3) {
        for (size_t k = 0; k < s->n; k++) e[k] = (23 * e1[k] - 16 * e2[k] + 5 * e3[k]) / 12;
    } else {
        const float c24 = (float)(1.0 / 24);
        for (size_t k = 0; k < s->n; k++) e[k] = c24 * (55 * e1[k] - 59 * e2[k] + 37 * e3[k] - 9 * e4[k]);
    }
    pndm_prev(s, xs, t, prev, e, x);
}

// ---------------------------------------------------------------- DPM-Solver++ and UniPC (x0 prediction)

typedef struct {
    float alpha, sigma, lambda;
} AlphaSigma;

// diffusers' _sigma_to_alpha_sigma_t plus lambda = log alpha - log sigma
// (+inf at sigma = 0, the last step, where every formula reduces to x0).
static AlphaSigma alpha_sigma(float sg) {
    AlphaSigma r;
    r.alpha = 1.0f / sqrtf(sg * sg + 1.0f);
    r.sigma = sg * r.alpha;
    r.lambda = logf(r.alpha) - logf(r.sigma);
    return r;
}

// The model output as an x0 prediction at sigmas[i] (convert_model_output).
static void to_x0(const Sampler *s, int i, const float *x, const float *m, float *x0) {
    AlphaSigma c = alpha_sigma(s->sigmas[i]);
    if (s->prediction == PRED_V) {
        for (size_t k = 0; k < s->n; k++) x0[k] = c.alpha * x[k] - c.sigma * m[k];
    } else {
        for (size_t k = 0; k < s->n; k++) x0[k] = (x[k] - c.sigma * m[k]) / c.alpha;
    }
}

// dpmsolver++ / sde-dpmsolver++, solver_order 2, midpoint. lower_order_final
// with final_sigmas_type zero: the last step is always first order.
static void step_dpm(Sampler *s, int i, float *x, const float *m, Rng *rng) {
    const int sde = s->kind == SAMPLER_DPMPP_2M_SDE || s->kind == SAMPLER_DPMPP_2M_SDE_KARRAS;
    float *m0 = hist_push(s);
    to_x0(s, i, x, m, m0);
    if (sde) rng_normal(rng, s->noise, s->n);
    AlphaSigma t = alpha_sigma(s->sigmas[i + 1]), s0 = alpha_sigma(s->sigmas[i]);
    float h = t.lambda - s0.lambda;
    int first = s->n_done < 1 || i == s->n_evals - 1;
    if (!sde) {
        float cx = t.sigma / s0.sigma, cd = t.alpha * (expf(-h) - 1.0f);
        if (first) {
            for (size_t k = 0; k < s->n; k++) x[k] = cx * x[k] - cd * m0[k];
        } else {
            AlphaSigma s1 = alpha_sigma(s->sigmas[i - 1]);
            float r0 = (s0.lambda - s1.lambda) / h, inv_r0 = 1.0f / r0, cd1 = 0.5f * cd;
            const float *m1 = hist_get(s, 1);
            for (size_t k = 0; k < s->n; k++) {
                float d1 = inv_r0 * (m0[k] - m1[k]);
                x[k] = cx * x[k] - cd * m0[k] - cd1 * d1;
            }
        }
    } else {
        float e2h = expf(-2.0f * h);
        float cx = t.sigma / s0.sigma * expf(-h), cd = t.alpha * (1 - e2h), cn = t.sigma * sqrtf(1.0f - e2h);
        if (first) {
            for (size_t k = 0; k < s->n; k++) x[k] = cx * x[k] + cd * m0[k] + cn * s->noise[k];
        } else {
            AlphaSigma s1 = alpha_sigma(s->sigmas[i - 1]);
            float r0 = (s0.lambda - s1.lambda) / h, inv_r0 = 1.0f / r0, cd1 = 0.5f * cd;
            const float *m1 = hist_get(s, 1);
            for (size_t k = 0; k < s->n; k++) {
                float d1 = inv_r0 * (m0[k] - m1[k]);
                x[k] = cx * x[k] + cd * m0[k] + cd1 * d1 + cn * s->noise[k];
            }
        }
    }
}

// UniPC's b vector for the bh2 variant with x0 prediction (hh = -h).
static void unipc_b(float h, int order, float *b) {
    float hh = -h, h_phi_1 = expm1f(hh), h_phi_k = h_phi_1 / hh - 1, bh = expm1f(hh);
    int fact = 1;
    for (int k = 1; k <= order; k++) {
        b[k - 1] = h_phi_k * (float)fact / bh;
        fact *= k + 1;
        h_phi_k = h_phi_k / hh - 1.0f / (float)fact;
    }
}

// UniPC (bh2, order 2, predict_x0): at each step the corrector (UniC) first
// refines the sample the previous predictor produced, using the new model
// output; then the predictor (UniP) steps to the next sigma.
static void step_unipc(Sampler *s, int i, float *x, const float *m) {
    float *mc = s->tmp; // this evaluation's x0 prediction, from the uncorrected x
    to_x0(s, i, x, m, mc);
    if (s->n_done > 0) {
        // UniC: from last_sample (s->saved) at sigmas[i-1] to sigmas[i]
        AlphaSigma t = alpha_sigma(s->sigmas[i]), s0 = alpha_sigma(s->sigmas[i - 1]);
        float h = t.lambda - s0.lambda, hh = -h, h_phi_1 = expm1f(hh), bh = expm1f(hh);
        const float *m0 = hist_get(s, 0);
        float rho_d = 0, rho_t = 0.5f, rk = 0;
        const float *mi = NULL;
        if (s->unipc_order == 2) {
            AlphaSigma si = alpha_sigma(s->sigmas[i - 2]);
            rk = (si.lambda - s0.lambda) / h;
            mi = hist_get(s, 1);
            // solve [[1, 1], [rk, 1]] rho = b by LU with partial pivoting, as LAPACK sgesv
            float b[2], r00 = 1, r01 = 1, r10 = rk, r11 = 1;
            unipc_b(h, 2, b);
            if (fabsf(r10) > fabsf(r00)) {
                float tmp;
                tmp = r00, r00 = r10, r10 = tmp;
                tmp = r01, r01 = r11, r11 = tmp;
                tmp = b[0], b[0] = b[1], b[1] = tmp;
            }
            float l = r10 / r00, u11 = r11 - l * r01, y1 = b[1] - l * b[0];
            rho_t = y1 / u11;
            rho_d = (b[0] - r01 * rho_t) / r00;
        }
        float cx = t.sigma / s0.sigma, cm = t.alpha * h_phi_1, cb = t.alpha * bh;
        for (size_t k = 0; k < s->n; k++) {
            float corr = mi ? rho_d * ((mi[k] - m0[k]) / rk) : 0.0f;
            x[k] = cx * s->saved[k] - cm * m0[k] - cb * (corr + rho_t * (mc[k] - m0[k]));
        }
    }
    float *h0 = hist_push(s);
    memcpy(h0, mc, s->n * sizeof *mc);
    int order = s->n_evals - i < 2 ? s->n_evals - i : 2; // lower_order_final
    if (order > s->n_done + 1) order = s->n_done + 1;    // warm-up
    s->unipc_order = order;
    memcpy(s->saved, x, s->n * sizeof *x);

    // UniP: from x at sigmas[i] to sigmas[i+1]
    AlphaSigma t = alpha_sigma(s->sigmas[i + 1]), s0 = alpha_sigma(s->sigmas[i]);
    float h = t.lambda - s0.lambda, hh = -h, h_phi_1 = expm1f(hh), bh = expm1f(hh);
    float cx = t.sigma / s0.sigma, cm = t.alpha * h_phi_1, cb = t.alpha * bh;
    const float *m0 = hist_get(s, 0);
    if (order == 2) {
        AlphaSigma s1 = alpha_sigma(s->sigmas[i - 1]);
        float rk = (s1.lambda - s0.lambda) / h;
        const float *m1 = hist_get(s, 1);
        for (size_t k = 0; k < s->n; k++) {
            float pred = 0.5f * ((m1[k] - m0[k]) / rk);
            x[k] = cx * x[k] - cm * m0[k] - cb * pred;
        }
    } else {
        for (size_t k = 0; k < s->n; k++) x[k] = cx * x[k] - cm * m0[k];
    }
}

// ---------------------------------------------------------------- dispatch

void sampler_step(Sampler *s, int i, float *x, const float *model_out, Rng *rng) {
    SDC_CHECK(i >= 0 && i < s->n_evals);
    SDC_CHECK(rng || !is_stochastic(s));
    switch (s->kind) {
    case SAMPLER_EULER: step_euler(s, i, x, model_out); break;
    case SAMPLER_EULER_A: step_euler_a(s, i, x, model_out, rng); break;
    case SAMPLER_HEUN: step_heun(s, i, x, model_out); break;
    case SAMPLER_LMS: step_lms(s, i, x, model_out); break;
    case SAMPLER_DDIM: step_ddim(s, i, x, model_out, rng); break;
    case SAMPLER_PNDM: step_pndm(s, i, x, model_out); break;
    case SAMPLER_DDPM: step_ddpm(s, i, x, model_out, rng); break;
    case SAMPLER_DPMPP_2M:
    case SAMPLER_DPMPP_2M_KARRAS:
    case SAMPLER_DPMPP_2M_SDE:
    case SAMPLER_DPMPP_2M_SDE_KARRAS: step_dpm(s, i, x, model_out, rng); break;
    case SAMPLER_UNIPC: step_unipc(s, i, x, model_out); break;
    default: SDC_CHECK(0 && "unknown sampler kind");
    }
    s->n_done++;
}

// ---------------------------------------------------------------- img2img

int sampler_begin_for_strength(const Sampler *s, double strength) {
    int init = (int)(s->steps * strength); // Python int(): toward zero
    if (init > s->steps) init = s->steps;
    int t_start = s->steps - init;
    if (t_start < 0) t_start = 0;
    int begin = t_start * (s->kind == SAMPLER_HEUN ? 2 : 1);
    return begin < s->n_evals ? begin : s->n_evals;
}

// ---------------------------------------------------------------- denoising_end / denoising_start

// int(round(N - f * N)) in doubles, as Python computes it: the product
// rounded before the subtraction (volatile: no fused multiply-add, which
// turns 1000 - 0.7775 * 1000 into 222.50000000000003), then half to even.
static double denoising_cut(const Sampler *s, double f) {
    volatile double fn = f * s->n_train;
    return nearbyint((double)s->n_train - fn);
}

int sampler_end_for_denoising(const Sampler *s, int first, double end) {
    const double cut = denoising_cut(s, end);
    int n = 0;
    for (int i = first; i < s->n_evals; i++) n += s->timesteps[i] >= cut;
    return first + n;
}

int sampler_begin_for_denoising(const Sampler *s, double start) {
    const double cut = denoising_cut(s, start);
    int n = 0;
    for (int i = 0; i < s->n_evals; i++) n += s->timesteps[i] < cut;
    if (s->kind == SAMPLER_HEUN && n % 2 == 0) n++; // diffusers: scheduler.order == 2
    return n < s->n_evals ? s->n_evals - n : 0;
}

void sampler_add_noise(const Sampler *s, int i, const float *x0, const float *noise, float *out) {
    SDC_CHECK(i >= 0 && i < s->n_evals);
    if (is_alpha_space(s->kind)) {
        float a = abar_at(s, (int)s->timesteps[i]), ca = sqrtf(a), cn = sqrtf(1 - a);
        for (size_t k = 0; k < s->n; k++) out[k] = ca * x0[k] + cn * noise[k];
    } else if (is_k_diffusion(s->kind)) {
        float sg = s->sigmas[i];
        for (size_t k = 0; k < s->n; k++) out[k] = x0[k] + noise[k] * sg;
    } else {
        AlphaSigma c = alpha_sigma(s->sigmas[i]);
        for (size_t k = 0; k < s->n; k++) out[k] = c.alpha * x0[k] + c.sigma * noise[k];
    }
}
