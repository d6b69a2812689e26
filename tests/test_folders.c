// test_folders.c: diffusers folders sampled as diffusers samples them.
// A folder's scheduler/scheduler_config.json decides what every scheduler a
// user builds on it does; tests/fixtures/ref-folders.safetensors
// (tools/make_folder_fixture.py) holds what diffusers does with the configs
// in tests/fixtures/sched/ (the files SD 1.5 / 2.1 shipped with, the same as
// current diffusers writes them, zero-SNR trailing, DPM++ Karras with
// -Infinity, class defaults, linear / cosine / trained betas, x0 clipping).
//   (1) trajectories: every sampler on every config against the diffusers
//       class built with from_config(config, **the sampler's options), fed
//       fixed model outputs (timesteps, sigmas, init_noise_sigma, final,
//       img2img);
//   (2) images: tiny-sd1 / tiny-sd2 folders whose scheduler/ is a config,
//       every sampler, sdc's pipeline against StableDiffusionPipeline: the
//       largest pixel difference must be at most 1 (of 255); also the
//       per-run overrides (--timestep-spacing, --karras);
//   (3) configs sdc does not implement: refused, naming file, field, value.
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/image.h"
#include "io/safetensors.h"
#include "pipeline/sd.h"
#include "sampling/sched_config.h"
#include "testutil.h"

#define FIX "tests/fixtures"
#define REF FIX "/ref-folders.safetensors"

static const float *ref(const StFile *f, const char *name, size_t *n) {
    const StEntry *e = st_find(f, name);
    if (!e || e->dtype != DT_F32) return NULL;
    Tensor t = st_tensor(f, e);
    *n = (size_t)tensor_numel(&t);
    return t.data;
}

static int read_style(const char *style, SchedConfig *c, SdcError *err) {
    char path[256];
    snprintf(path, sizeof path, FIX "/sched/%s.json", style);
    return sched_config_read(c, path, NULL, err);
}

// ---------------------------------------------------------------- (1) trajectories

// Worst final-latent rel_err per style, for the summary.
static void trajectory(TestCtx *t, const StFile *f, const char *style, const SchedConfig *cfg, const char *sampler,
                       double *worst) {
    char base[128], name[192];
    snprintf(base, sizeof base, "traj.%s.%s", style, sampler);
    size_t n_ts = 0, n_isig = 0, n_fin = 0, n_outs = 0, nx = 0;
    snprintf(name, sizeof name, "%s.timesteps", base);
    const float *ts = ref(f, name, &n_ts);
    if (!ts) return; // a run diffusers cannot make (see the script's SKIP)
    snprintf(name, sizeof name, "%s.init_noise_sigma", base);
    const float *isig = ref(f, name, &n_isig);
    snprintf(name, sizeof name, "%s.final", base);
    const float *fin = ref(f, name, &n_fin);
    const float *outs = ref(f, "traj.model_out", &n_outs), *x0img = ref(f, "traj.x0", &nx);
    if (!isig || !fin || !outs || !x0img || n_fin != nx) {
        check_true(t, 0, "%s: fixture tensors present", base);
        return;
    }
    const size_t n_init = n_fin;
    SamplerKind kind;
    SdcError err = {0};
    Sampler s;
    if (sampler_parse(sampler, &kind, &err) || sampler_init_cfg(&s, kind, 20, cfg, 0.0f, n_init, &err)) {
        check_true(t, 0, "%s: %s", base, err.msg);
        return;
    }
    const int evals = sampler_num_evals(&s);
    if (!check_true(t, (size_t)evals == n_ts && (size_t)evals * n_init <= n_outs,
                    "%s: %d evaluations (diffusers: %zu)", base, evals, n_ts)) {
        sampler_free(&s);
        return;
    }
    // float timesteps (Euler / Heun / LMS with Karras sigmas) agree to rounding
    int exact = 1;
    for (int i = 0; i < evals; i++) exact &= s.timesteps[i] == ts[i];
    snprintf(name, sizeof name, "%s timesteps", base);
    check_rel(t, name, s.timesteps, ts, n_ts, exact ? 0.0 : 1e-6);
    snprintf(name, sizeof name, "%s.sigmas", base);
    size_t n_sig = 0;
    const float *sig = ref(f, name, &n_sig);
    check_true(t, (sig != NULL) == (s.sigmas != NULL), "%s: sigmas defined here iff in diffusers", base);
    if (sig && s.sigmas && check_true(t, n_sig == (size_t)s.n_sigmas, "%s: %d sigmas (diffusers %zu)", base,
                                      s.n_sigmas, n_sig)) {
        snprintf(name, sizeof name, "%s sigmas", base);
        check_rel(t, name, s.sigmas, sig, n_sig, 1e-6);
    }
    float *x = malloc(n_init * sizeof *x), *noise = malloc(n_init * sizeof *noise);
    Rng g;
    rng_seed(&g, 42);
    rng_normal(&g, x, n_init);
    for (size_t k = 0; k < n_init; k++) x[k] *= s.init_noise_sigma;
    snprintf(name, sizeof name, "%s init_noise_sigma", base);
    check_rel(t, name, &s.init_noise_sigma, isig, 1, 1e-6);
    for (int i = 0; i < evals; i++) sampler_step(&s, i, x, outs + (size_t)i * n_init, &g);
    // float32 rounding of the first steps scales with the largest sigma: SD's
    // is 14.6, a zero-terminal-SNR schedule's 4096 (alphabar[-1] = 2^-24)
    const double tol = 1e-5 * fmax(1.0, s.init_noise_sigma / 15.0);
    snprintf(name, sizeof name, "%s final", base);
    check_rel(t, name, x, fin, n_fin, tol);
    double e = rel_err(x, fin, n_fin);
    if (e > *worst || isnan(e)) *worst = isnan(e) ? INFINITY : e;

    size_t nb = 0, nf2 = 0;
    snprintf(name, sizeof name, "%s.img2img.begin", base);
    const float *rb = ref(f, name, &nb);
    snprintf(name, sizeof name, "%s.img2img.final", base);
    const float *fin2 = ref(f, name, &nf2);
    if (check_true(t, rb && fin2 && nf2 == n_init, "%s: img2img tensors present", base)) {
        sampler_reset(&s);
        int b = sampler_begin_for_strength(&s, 0.6);
        check_true(t, b == (int)rb[0], "%s img2img begin %d (diffusers: %d)", base, b, (int)rb[0]);
        rng_seed(&g, 42);
        rng_normal(&g, noise, n_init);
        sampler_add_noise(&s, b, x0img, noise, x);
        for (int i = b; i < evals; i++) sampler_step(&s, i, x, outs + (size_t)i * n_init, &g);
        snprintf(name, sizeof name, "%s img2img final", base);
        check_rel(t, name, x, fin2, n_init, tol);
    }
    free(x);
    free(noise);
    sampler_free(&s);
}

// ---------------------------------------------------------------- (2) images

// dir := a fresh folder that is tests/fixtures/<model> with scheduler/ holding
// the style's config (what the fixture script loaded in diffusers).
static int make_folder(char *dir, size_t cap, const char *model, const char *style) {
    snprintf(dir, cap, "/tmp/sdc_test_folders_XXXXXX");
    if (!mkdtemp(dir)) return -1;
    static const char *const subs[] = {"unet", "vae", "text_encoder", "model_index.json"};
    char src[PATH_MAX], rel[512], dst[1024];
    for (int i = 0; i < 4; i++) {
        snprintf(rel, sizeof rel, FIX "/%s/%s", model, subs[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, subs[i]);
        if (!realpath(rel, src) || symlink(src, dst)) return -1;
    }
    snprintf(dst, sizeof dst, "%s/scheduler", dir);
    if (mkdir(dst, 0755)) return -1;
    snprintf(rel, sizeof rel, FIX "/sched/%s.json", style);
    snprintf(dst, sizeof dst, "%s/scheduler/scheduler_config.json", dir);
    FILE *in = fopen(rel, "rb"), *out = fopen(dst, "wb");
    int rc = in && out ? 0 : -1;
    char buf[8192];
    size_t k;
    while (!rc && (k = fread(buf, 1, sizeof buf, in)) > 0) rc = fwrite(buf, 1, k, out) == k ? 0 : -1;
    if (in) fclose(in);
    if (out && fclose(out)) rc = -1;
    return rc;
}

static void remove_folder(const char *dir) {
    static const char *const subs[] = {"unet", "vae", "text_encoder", "model_index.json",
                                       "scheduler/scheduler_config.json", "scheduler"};
    char p[1024];
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, subs[i]);
        remove(p);
    }
    rmdir(dir);
}

typedef struct ImgStats {
    int cases, worst;
    char worst_case[160];
} ImgStats;

// One image case "img.<model>.<style>[+<override>].<sampler>".
static void image_case(TestCtx *t, const StFile *f, SdModel *m, const char *key, const char *model,
                       const char *sampler, const char *override, ImgStats *st) {
    const StEntry *e = st_find(f, key);
    size_t np;
    const float *prm = ref(f, "img.params", &np); // steps, cfg, seed, width, height
    if (!e || e->dtype != DT_U8 || !prm || np != 5) {
        check_true(t, 0, "%s: fixture tensors present", key);
        return;
    }
    const uint8_t *want = st_tensor(f, e).data;
    char ctxname[96];
    snprintf(ctxname, sizeof ctxname, "img.%s.ctx", model);
    size_t nctx;
    const float *ctx = ref(f, ctxname, &nctx);
    GenParams p = {.mode = GEN_TXT2IMG, .steps = (int)prm[0], .cfg_scale = prm[1], .seed = (uint64_t)prm[2],
                   .width = (int)prm[3], .height = (int)prm[4], .batch = 1};
    if (override && !strcmp(override, "karras")) p.karras = 1;
    else if (override) p.timestep_spacing = override;
    SdcError err = {0};
    const size_t npix = (size_t)p.width * p.height;
    float *img = malloc(3 * npix * sizeof *img);
    uint8_t *rgb = malloc(3 * npix);
    int rc = ctx ? sampler_parse(sampler, &p.sampler, &err) : sdc_err(&err, SDC_ERR_FORMAT, "no %s", ctxname);
    if (!rc) rc = sd_generate(m, &p, ctx, NULL, img, NULL, NULL, &err);
    if (rc) {
        check_true(t, 0, "%s: %s", key, err.msg);
    } else {
        image_from_vae(rgb, img, 0, p.height, p.width);
        int worst = 0, differ = 0;
        for (size_t k = 0; k < 3 * npix; k++) {
            int d = abs((int)rgb[k] - (int)want[k]);
            worst = d > worst ? d : worst;
            differ += d > 0;
        }
        check_true(t, worst <= 1, "%-52s max |sdc - diffusers| = %3d/255 (%d of %zu values differ)", key, worst,
                   differ, 3 * npix);
        st->cases++;
        if (worst > st->worst || !st->worst_case[0]) {
            st->worst = worst;
            snprintf(st->worst_case, sizeof st->worst_case, "%s", key);
        }
    }
    free(img);
    free(rgb);
}

static void test_images(TestCtx *t, const StFile *f, const Backend *be, ImgStats *st) {
    const char *list = st_meta(f, "images");
    if (!check_true(t, list && *list, "fixture lists its image cases")) return;
    char *buf = strdup(list);
    // cases come grouped by (model, style): one folder and one load per group
    char cur[160] = "", dir[64] = "";
    SdModel m = {0};
    int loaded = 0;
    for (char *c = strtok(buf, ","); c; c = strtok(NULL, ",")) {
        char model[32], style[64], sampler[32];
        if (sscanf(c, "img.%31[^.].%63[^.].%31s", model, style, sampler) != 3) {
            check_true(t, 0, "case name %s", c);
            continue;
        }
        char *plus = strchr(style, '+');
        const char *override = plus ? plus + 1 : NULL;
        char base_style[64];
        snprintf(base_style, sizeof base_style, "%.*s", plus ? (int)(plus - style) : (int)strlen(style), style);
        char group[160];
        snprintf(group, sizeof group, "%s/%s", model, base_style);
        if (strcmp(group, cur)) {
            if (loaded) sd_model_free(&m), remove_folder(dir), loaded = 0;
            snprintf(cur, sizeof cur, "%s", group);
            SdcError err = {0};
            if (!check_true(t, make_folder(dir, sizeof dir, model, base_style) == 0, "make a %s folder with %s",
                            model, base_style))
                continue;
            if (!check_true(t, sd_model_load(&m, dir, NULL, -1, be, &err) == 0, "load %s with scheduler %s: %s",
                            model, base_style, err.msg)) {
                remove_folder(dir);
                continue;
            }
            loaded = 1;
            printf("  %s with scheduler/ = tests/fixtures/sched/%s.json:\n", model, base_style);
        }
        if (loaded) image_case(t, f, &m, c, model, sampler, override, st);
    }
    if (loaded) sd_model_free(&m), remove_folder(dir);
    free(buf);
}

// ---------------------------------------------------------------- (3) configs sdc refuses

static void expect_refusal(TestCtx *t, const char *json, const char *sampler, const char *must1, const char *must2) {
    SchedConfig c;
    SdcError err = {0};
    int rc = sched_config_parse(&c, json, strlen(json), "x/scheduler/scheduler_config.json", &err);
    if (!rc) {
        SamplerKind k;
        Sampler s;
        sampler_parse(sampler, &k, &err);
        rc = sampler_init_cfg(&s, k, 10, &c, 0, 16, &err);
        if (!rc) sampler_free(&s);
    }
    check_true(t, rc != 0 && strstr(err.msg, "scheduler_config.json") && strstr(err.msg, must1) &&
                      strstr(err.msg, must2) && strstr(err.msg, "--->"),
               "%s on %s refused: %s", sampler, json, rc ? err.msg : "(accepted)");
}

static void expect_accepted(TestCtx *t, const char *json, const char *sampler) {
    SchedConfig c;
    SdcError err = {0};
    int rc = sched_config_parse(&c, json, strlen(json), "x/scheduler/scheduler_config.json", &err);
    SamplerKind k;
    Sampler s;
    if (!rc) rc = sampler_parse(sampler, &k, &err);
    if (!rc) rc = sampler_init_cfg(&s, k, 10, &c, 0, 16, &err);
    if (!rc) sampler_free(&s);
    check_true(t, rc == 0, "%s on %s accepted%s%s", sampler, json, rc ? ": " : "", rc ? err.msg : "");
}

static void test_refusals(TestCtx *t) {
    expect_refusal(t, "{\"thresholding\": true}", "ddim", "\"thresholding\"", "true");
    expect_refusal(t, "{\"final_sigmas_type\": \"sigma_min\"}", "euler", "final_sigmas_type", "\"sigma_min\"");
    expect_refusal(t, "{\"use_exponential_sigmas\": true}", "dpm++2m", "use_exponential_sigmas", "true");
    expect_refusal(t, "{\"solver_type\": \"heun\"}", "dpm++2m_sde", "solver_type", "\"heun\"");
    expect_refusal(t, "{\"lambda_min_clipped\": -5.1}", "dpm++2m", "lambda_min_clipped", "-5.1");
    expect_refusal(t, "{\"disable_corrector\": [0]}", "unipc", "disable_corrector", "a list of 1");
    expect_refusal(t, "{\"variance_type\": \"fixed_large\"}", "ddpm", "variance_type", "\"fixed_large\"");
    expect_refusal(t, "{\"sigma_min\": 0.1}", "euler_karras", "sigma_min", "0.1");
    expect_refusal(t, "{\"timestep_type\": \"continuous\"}", "euler", "timestep_type", "\"continuous\"");
    expect_refusal(t, "{\"beta_schedule\": \"sigmoid\"}", "ddpm", "beta_schedule", "\"sigmoid\"");
    expect_refusal(t, "{\"timestep_spacing\": \"even\"}", "euler", "timestep_spacing", "\"even\"");
    expect_refusal(t, "{\"prediction_type\": \"sample\"}", "euler", "prediction_type", "\"sample\"");
    expect_refusal(t, "{\"num_train_timesteps\": 4000}", "euler", "num_train_timesteps", "4000");
    expect_refusal(t, "{\"num_train_timesteps\": 3, \"trained_betas\": [0.1, 0.2]}", "euler", "trained_betas",
                   "2 values");
    expect_refusal(t, "{\"clip_sample\": \"yes\"}", "ddim", "clip_sample", "\"yes\"");
    // the same fields where the sampler's class does not read them, or at their harmless values
    expect_accepted(t, "{\"thresholding\": true}", "euler");
    expect_accepted(t, "{\"final_sigmas_type\": \"sigma_min\"}", "ddim");
    expect_accepted(t, "{\"sigma_min\": 0.1}", "euler");
    expect_accepted(t, "{\"solver_type\": \"bh2\", \"lambda_min_clipped\": -Infinity, \"variance_type\": null}",
                    "dpm++2m");
    expect_accepted(t, "{\"disable_corrector\": [], \"solver_p\": null, \"lower_order_final\": true}", "unipc");
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    StFile f;
    if (st_open(&f, REF, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const char *styles = st_meta(&f, "styles"), *samplers = st_meta(&f, "samplers");
    check_true(&t, styles && samplers, "fixture lists its styles and samplers");
    char sbuf[1024], kbuf[1024];
    snprintf(sbuf, sizeof sbuf, "%s", styles ? styles : "");
    printf("(1) sampler trajectories on each scheduler config (20 steps, + img2img at 0.6):\n");
    char *ss, *ks;
    for (char *style = strtok_r(sbuf, ",", &ss); style; style = strtok_r(NULL, ",", &ss)) {
        SchedConfig cfg;
        if (!check_true(&t, read_style(style, &cfg, &err) == 0, "read sched/%s.json: %s", style, err.msg)) continue;
        double worst = 0;
        snprintf(kbuf, sizeof kbuf, "%s", samplers ? samplers : "");
        for (char *k = strtok_r(kbuf, ",", &ks); k; k = strtok_r(NULL, ",", &ks))
            trajectory(&t, &f, style, &cfg, k, &worst);
        printf("  == %-16s worst final-latent rel_err over the samplers %.2e\n", style, worst);
    }
    Backend *be = NULL;
    if (backend_cpu_create(&be, 0, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("(2) images: sdc on folders vs diffusers' StableDiffusionPipeline (u8 pixels):\n");
    ImgStats st = {0};
    test_images(&t, &f, be, &st);
    printf("  == %d image cases, worst %d/255 (%s)\n", st.cases, st.worst, st.worst_case);
    printf("(3) scheduler configs sdc does not implement:\n");
    test_refusals(&t);
    backend_destroy(be);
    st_close(&f);
    return test_summary(&t);
}
