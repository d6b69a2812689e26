// test_dreambooth.c: sdc's DreamBooth trainer (src/train/dreambooth.c) step for
// step against diffusers' train_dreambooth.py run in torch.
//
// tests/fixtures/ref-dreambooth.safetensors (tools/make_db_fixture.py): the
// demo model (data/models/sdc-tiny-sd1.safetensors), 1 instance and 1 class
// latent (4, 8, 8) (case e: 3 instance latents), batch 1, 3 optimizer steps
// of diffusers' loop body with accelerate, torch.optim.AdamW (lr 1e-4, betas
// 0.9/0.999, wd 1e-2, eps 1e-8), clip_grad_norm_(1.0) and get_scheduler,
// fp32 on the CPU, the epoch's order and each sample's noise and timestep
// drawn as sdc draws them. Cases:
//   a  full fine-tuning + text encoder, prior preservation, constant lr
//   b  UNet, no prior, min-SNR 5, offset noise 0.1, accumulation 2 (each
//      micro-batch ends the 1-item epoch: a step per micro-batch, loss / 2),
//      linear schedule, warmup 1 (the first step at lr 0)
//   c  LoRA rank 4 on the UNet's attention projections, prior preservation
//   d  UNet, v-prediction (velocity target, min-SNR weight + 1), min-SNR 5,
//      cosine schedule
//   e  UNet, 3 instance latents in sdc's shuffled order, accumulation 2:
//      steps of 2, 1 (the epoch's end syncs) and 2 micro-batches; the loss
//      reported is the mean of the step's micro-batches
//   f  UNet, prior preservation + min-SNR 5, each half weighted by its own
//      timesteps (sdc's definition; diffusers has a shape bug there)
// Compared, with the tolerances and why:
//   loss per step      1e-5 relative (seen: <= 2e-7). Step 1 is one fp32
//                      forward of CLIP + UNet against torch's, ~1e-7 from
//                      summation order; steps 2-3 add weights that differ
//                      by an ulp here and there.
//   grad norm per step 1e-5 relative (seen: <= 2e-7): the same, backward.
//   lr per step        1e-6 relative (the same double formula; torch's
//                      value is stored as f32).
//   final values       of ~40 tensors per case (every text encoder tensor,
//                      the prompts' token embedding rows, every 5th UNet
//                      tensor, every LoRA tensor), value by value:
//                      |sdc - torch| <= 1 ulp of the value + 1e-3 of the
//                      case's largest change from the initial weights
//                      (~2e-4: 3 Adam steps of lr 1e-4); seen: <= 1.7e-4.
//                      Both sides round p + update in fp32, and where the
//                      updates differ in their last bits the rounding can
//                      flip: one ulp of |p| ~ 1.5 is 1.2e-7, 4e-4 of the
//                      largest change (that flip is the seen max without the
//                      ulp allowance, 6e-4). The rest is the updates' own
//                      error, ~1e-4 of lr. A wrong step (lr, decay,
//                      clipping, a missing term) shows as >= 1e-2.
//                      Only values whose Adam step was well conditioned are
//                      held to this: gradient RMS (AdamW's exp_avg_sq, bias
//                      corrected) >= 100 eps = 1e-6, or exactly 0, after
//                      every step. Below it lr * m / (sqrt(v) + eps) turns
//                      the gradient's rounding noise (~1e-9 here) into a
//                      change of up to ~lr, differently in torch and sdc:
//                      the gradients that are zero but for rounding (every
//                      per-channel bias and the time embedding ahead of a
//                      GroupNorm of one channel per group, as the demo
//                      model's 32 channels in 32 groups make them; the
//                      attention key biases) and single values whose
//                      gradient cancels to ~eps in one step. Those are only
//                      held to the envelope 2 * sum(lr) and counted.
//   sum (final - initial)^2 over the well conditioned values, per tensor,
//                      every trainable tensor: 1e-3 relative (seen: 6e-5),
//                      and the same count of such values as torch's, give
//                      or take 1 + 0.1% (a value at the threshold itself).
//   sum final^2        every trainable value: 1e-6 relative.
// The tokenizer's ids for the two prompts must equal transformers' exactly.
//
// SDXL (tests/fixtures/ref-dreambooth-xl.safetensors, tools/make_dbxl_fixture.py:
// train_dreambooth_lora_sdxl.py's loop on the tiny SDXL folder, both text
// encoders frozen, each sample's time ids from its instance's original size
// and crop, AdamW weight decay 1e-4 as that script's default), the same
// comparisons:
//   xa  LoRA rank 4, prior preservation, 2 instances of different sizes / crops
//   xb  LoRA rank 4, batch 2, min-SNR 5, offset noise, accumulation 2, linear
//       warmup 1
//   xc  --train-text-encoder: LoRA rank 4 on the UNet and both text encoders,
//       prior preservation, three param groups (the text encoders' at
//       --text-encoder-lr 5e-5, --adam-weight-decay-text-encoder 0.3: large, so
//       a decay from the wrong group shows), the
//       prompts through the trained encoders every step
//   xd  full fine-tuning of the UNet and both text encoders, the same groups
// (xc / xd: the first encoder's last layer and final norm reach no loss;
// torch skips them, sdc does not train them; neither side stores them.)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/config.h"
#include "models/unet.h"
#include "pipeline/sd.h"
#include "text/tokenizer.h"
#include "train/dreambooth.h"
#include "testutil.h"

#define REF "tests/fixtures/ref-dreambooth.safetensors"
#define REF_XL "tests/fixtures/ref-dreambooth-xl.safetensors"
#define DEMO "data/models/sdc-tiny-sd1.safetensors"
#define TINY_XL "tests/fixtures/tiny-sdxl"
#define STEPS 3

#define TOL_LOSS 1e-5
#define TOL_NORM 1e-5
#define TOL_LR 1e-6
#define TOL_PARAM 1e-3
#define TOL_D2 1e-3
#define TOL_SSQ 1e-6
#define WELL_RMS 1e-6 // 100 * adam eps, as tools/make_db_fixture.py

typedef struct Case {
    const char *tag, *what;
    uint64_t seed;
    int train_text_encoder, prior, accum, lora_rank;
    float snr_gamma, offset_noise;
    LrScheduleKind sched;
    int64_t warmup;
    int prediction; // -1: the model's (epsilon), else PRED_V
    int n_inst;     // 1 (latents.inst) or 3 (latents.inst3)
    const char *config_dir; // the model's configs (its scheduler config: the noise schedule), or NULL
    int xl;                 // SDXL: the tiny SDXL folder, 2 instance latents with time ids
    int batch;              // train_batch_size (0: 1)
    double te_lr, te_wd;    // --text-encoder-lr (0: the lr), --adam-weight-decay-text-encoder (0: --adam-weight-decay)
} Case;

// Text-to-image (tests/fixtures/ref-t2i.safetensors): 3 items with their own captions.
typedef struct T2iCase {
    Case c;
    int flip, sample, ema;
    float input_perturbation, proportion_empty;
} T2iCase;

// The same configurations as tools/make_db_fixture.py's CASES.
static const Case CASES[] = {
    {"a", "full fine-tuning + text encoder, prior preservation, constant lr", 1234, 1, 1, 1, 0, 0.0f, 0.0f,
     LR_CONSTANT, 0, -1, 1, NULL, 0, 0, 0, 0},
    {"b", "UNet, min-SNR 5, offset noise 0.1, accumulation 2, linear warmup 1", 77, 0, 0, 2, 0, 5.0f, 0.1f,
     LR_LINEAR, 1, -1, 1, NULL, 0, 0, 0, 0},
    {"c", "LoRA rank 4 on the UNet, prior preservation, constant lr", 4321, 0, 1, 1, 4, 0.0f, 0.0f, LR_CONSTANT, 0,
     -1, 1, NULL, 0, 0, 0, 0},
    {"d", "UNet, v-prediction, min-SNR 5, cosine", 99, 0, 0, 1, 0, 5.0f, 0.0f, LR_COSINE, 0, PRED_V, 1, NULL, 0, 0,
     0, 0},
    {"e", "UNet, 3 instance latents shuffled, accumulation 2 (2 + 1 + 2 micro-batches)", 2024, 0, 0, 2, 0, 0.0f,
     0.0f, LR_CONSTANT, 0, -1, 3, NULL, 0, 0, 0, 0},
    {"f", "UNet, prior preservation + min-SNR 5, each half weighted by its own timesteps", 15, 0, 1, 1, 0, 5.0f,
     0.0f, LR_CONSTANT, 0, -1, 1, NULL, 0, 0, 0, 0},
    {"g", "UNet, min-SNR 5, the model's scheduler config: cosine betas over 500 training steps", 31, 0, 0, 1, 0, 5.0f,
     0.0f, LR_CONSTANT, 0, -1, 1, "tests/fixtures/db-sched", 0, 0, 0, 0},
};

// The same configurations as tools/make_dbxl_fixture.py's CASES.
static const Case CASES_XL[] = {
    {"xa", "SDXL LoRA rank 4, prior preservation, 2 instances of their own sizes and crops", 1234, 0, 1, 1, 4, 0.0f,
     0.0f, LR_CONSTANT, 0, -1, 2, NULL, 1, 1, 0, 0},
    {"xb", "SDXL LoRA rank 4, batch 2, min-SNR 5, offset noise 0.1, accumulation 2, linear warmup 1", 77, 0, 0, 2, 4,
     5.0f, 0.1f, LR_LINEAR, 1, -1, 2, NULL, 1, 2, 0, 0},
    {"xc", "SDXL LoRA rank 4 on the UNet and both text encoders (lr 5e-5, wd 0.3), prior preservation", 4321, 1, 1,
     1, 4, 0.0f, 0.0f, LR_CONSTANT, 0, -1, 2, NULL, 1, 1, 5e-5, 0.3},
    {"xd", "SDXL full fine-tuning of the UNet and both text encoders (lr 5e-5, wd 0.3), prior preservation", 2024,
     1, 1, 1, 0, 0.0f, 0.0f, LR_CONSTANT, 0, -1, 2, NULL, 1, 1, 5e-5, 0.3},
};

// ---------------------------------------------------------------------------
// fixture access
// ---------------------------------------------------------------------------

// A float copy of an F32 fixture tensor, NULL if absent.
static float *ref_f32(const StFile *f, const char *name, size_t *n) {
    const StEntry *e = st_find(f, name);
    if (!e || !e->supported) return NULL;
    Tensor v = st_tensor(f, e);
    *n = (size_t)tensor_numel(&v);
    float *h = malloc(*n * sizeof *h);
    if (h) convert_to_f32(h, v.data, v.dtype, *n);
    return h;
}

static const int32_t *ref_i32(const StFile *f, const char *name, size_t *n) {
    const StEntry *e = st_find(f, name);
    if (!e || strcmp(e->dtype_str, "I32")) return NULL;
    *n = e->nbytes / 4;
    return (const int32_t *)(f->data + e->offset);
}

// A U8 fixture tensor as a C string (UTF-8), into buf.
static const char *ref_str(const StFile *f, const char *name, char *buf, size_t cap) {
    const StEntry *e = st_find(f, name);
    if (!e || strcmp(e->dtype_str, "U8") || e->nbytes >= cap) return NULL;
    memcpy(buf, f->data + e->offset, e->nbytes);
    buf[e->nbytes] = 0;
    return buf;
}

static int ref_f64(const StFile *f, const char *name, double *v) {
    const StEntry *e = st_find(f, name);
    if (!e || strcmp(e->dtype_str, "F64") || e->nbytes != 8) return 0;
    memcpy(v, f->data + e->offset, 8);
    return 1;
}

// ---------------------------------------------------------------------------
// the trainer's tensors
// ---------------------------------------------------------------------------

// One trainable tensor: fixture name, its values now and before training.
typedef struct Named {
    char name[192];
    const float *p;
    const float *init;
    const uint8_t *well; // 1: its Adam step was well conditioned at every step
    size_t n;
} Named;

typedef struct Record {
    double loss[STEPS], norm[STEPS], lr[STEPS];
    int n;
    const DbTrainer *tr;
    uint8_t *well[DB_MAX_GROUPS]; // (group numel) per optimizer group, in the state's order
    float *scratch;               // host copies of device buffers (host_view)
} Record;

// n floats of the backend's memory p readable on the host: p itself on the
// CPU, else a copy in *buf (grown as needed; the caller frees it). NULL when
// out of memory.
static const float *host_view(const Backend *be, const float *p, size_t n, float **buf) {
    if (be->device == DEV_CPU) return p;
    float *b = realloc(*buf, (n ? n : 1) * sizeof(float));
    if (!b) return NULL;
    *buf = b;
    be->download(be, b, p, n * sizeof(float));
    return b;
}

// After every optimizer step: the step's figures, and which values' Adam
// step is still well conditioned, gradient RMS (AdamW's bias-corrected
// exp_avg_sq) >= WELL_RMS, or exactly 0 (no step), at every step so far (tools/make_db_fixture.py's
// track_well): below it lr * m / (sqrt(v) + eps) turns gradient rounding
// noise into a visible change, in torch as in sdc.
static int on_step(void *user, const DbStepInfo *s, SdcError *err) {
    Record *r = user;
    if (r->n < STEPS) {
        r->loss[r->n] = s->loss;
        r->norm[r->n] = s->grad_norm;
        r->lr[r->n] = s->lr;
        r->n++;
    }
    const AdamW *o = &r->tr->opt;
    const double bc2 = 1.0 - pow(o->cfg.beta2, (double)o->step);
    for (int g = 0; g < o->n_groups && g < DB_MAX_GROUPS; g++) {
        const float *v = host_view(r->tr->be, o->groups[g].v, o->groups[g].numel, &r->scratch);
        if (!v) return sdc_err(err, SDC_ERR_OOM, "test: out of memory");
        for (size_t j = 0; j < o->groups[g].numel; j++)
            if (v[j] != 0 && !(sqrt((double)v[j] / bc2) >= WELL_RMS)) r->well[g][j] = 0;
    }
    return 0;
}

// The tables of group 0 (UNet), 1 (text encoder) and 2 (text_encoder_2) as
// fixture names (unet., text., text2.), with a copy of the initial values
// (init_buf, freed by the caller).
static int list_named(DbTrainer *tr, const Record *rec, Named **out, float **init_buf) {
    static const char *const PRE[DB_MAX_GROUPS] = {"unet", "text", "text2"};
    const ParamTable *tb[DB_MAX_GROUPS] = {unet_train_table(tr->model->unet), NULL, NULL};
    float *pb[DB_MAX_GROUPS] = {NULL}, *gb[DB_MAX_GROUPS];
    size_t nn[DB_MAX_GROUPS] = {0}, base[DB_MAX_GROUPS] = {0}, all = 0;
    unet_trainables(tr->model->unet, &pb[0], &gb[0], &nn[0]);
    for (int g = 1; g < tr->n_groups; g++) {
        ClipModel *cm = g == 2 ? tr->model->clip2 : tr->model->clip;
        tb[g] = clip_train_table(cm);
        clip_trainables(cm, &pb[g], &gb[g], &nn[g]);
    }
    int n = 0;
    for (int g = 0; g < DB_MAX_GROUPS; g++) base[g] = all, all += nn[g], n += tb[g] ? tb[g]->n : 0;
    Named *v = calloc((size_t)n, sizeof *v);
    float *ib = malloc(all * sizeof(float));
    if (!v || !ib) {
        free(v), free(ib);
        return -1;
    }
    for (int g = 0; g < DB_MAX_GROUPS; g++)
        if (nn[g]) tr->be->download(tr->be, ib + base[g], pb[g], nn[g] * sizeof(float));
    int k = 0;
    for (int g = 0; g < DB_MAX_GROUPS; g++) {
        if (!tb[g]) continue;
        size_t off = 0; // the optimizer's state: the table's tensors concatenated in order
        for (int i = 0; i < tb[g]->n; i++, k++) {
            const ParamEntry *e = &tb[g]->e[i];
            const float *p = tensor_f32p(&e->t);
            snprintf(v[k].name, sizeof v[k].name, "%s.%s", PRE[g], e->name);
            v[k].p = p;
            v[k].init = ib + base[g] + (size_t)(p - pb[g]);
            v[k].n = (size_t)tensor_numel(&e->t);
            v[k].well = rec->well[g] + off;
            off += v[k].n;
        }
    }
    *out = v;
    *init_buf = ib;
    return n;
}

// Points every Named's p at a host copy of the trainer's values (fin, the
// layout of init_buf: list_named's), downloaded from the backend now; 0, or -1
// when out of memory.
static int named_to_host(DbTrainer *tr, Named *v, int n, const float *init_buf, float **fin) {
    float *pb[DB_MAX_GROUPS] = {NULL}, *gb[DB_MAX_GROUPS];
    size_t nn[DB_MAX_GROUPS] = {0}, all = 0;
    unet_trainables(tr->model->unet, &pb[0], &gb[0], &nn[0]);
    for (int g = 1; g < tr->n_groups; g++)
        clip_trainables(g == 2 ? tr->model->clip2 : tr->model->clip, &pb[g], &gb[g], &nn[g]);
    for (int g = 0; g < DB_MAX_GROUPS; g++) all += nn[g];
    float *f = malloc((all ? all : 1) * sizeof(float));
    if (!f) return -1;
    tr->be->sync(tr->be);
    for (size_t g = 0, base = 0; g < DB_MAX_GROUPS; base += nn[g], g++)
        if (nn[g]) tr->be->download(tr->be, f + base, pb[g], nn[g] * sizeof(float));
    for (int k = 0; k < n; k++) v[k].p = f + (v[k].init - init_buf);
    *fin = f;
    return 0;
}

// What the comparison of final values needs to know.
typedef struct Cmp {
    double scale;    // the case's largest change from the initial weights (torch's)
    double envelope; // 2 * the sum of the steps' lr: the farthest two runs can drift apart per value
} Cmp;

// Final values against torch's: the well conditioned values to one ulp of the
// value plus TOL_PARAM of the largest change; the others (rounding noise
// through Adam's eps) only to the envelope. Prints, over the largest change,
// max (|sdc - torch| - ulp) of the first kind and max |sdc - torch| of the
// second.
static int check_values(TestCtx *t, const char *name, const float *got, const float *ref, const uint8_t *well,
                        size_t n, const Cmp *c) {
    double ew = 0, en = 0;
    size_t nn = 0;
    for (size_t j = 0; j < n; j++) {
        double d = fabs((double)got[j] - ref[j]);
        if (!(d == d)) d = INFINITY;
        float au = fabsf(ref[j]);
        double ulp = (double)(nextafterf(au, INFINITY) - au); // the rounding of p + update may flip
        if (well[j])
            ew = fmax(ew, d - ulp);
        else
            en = fmax(en, d), nn++;
    }
    int ok = ew / c->scale <= TOL_PARAM && en <= c->envelope;
    t->checks++;
    if (!ok) t->failures++;
    printf("  %-78s (err - ulp)/max change=%.2e  tol=%.0e", name, ew / c->scale, TOL_PARAM);
    if (nn) printf("; %zu eps-dominated: %.2e", nn, en / c->scale);
    printf("  %s\n", ok ? "OK" : "NOT OK");
    return ok;
}

static int check_scalar(TestCtx *t, const char *name, double got, double ref, double tol) {
    double e = fabs(got - ref) / fmax(fabs(ref), 1e-30);
    int ok = e <= tol;
    t->checks++;
    if (!ok) t->failures++;
    printf("  %-40s sdc=%.9g  torch=%.9g  rel_err=%.3e  tol=%.0e  %s\n", name, got, ref, e, tol,
           ok ? "OK" : "NOT OK");
    return ok;
}

// ---------------------------------------------------------------------------
// one case
// ---------------------------------------------------------------------------

static void run_case(TestCtx *t, const Backend *be, const StFile *ref, const Case *c, const T2iCase *x) {
    const char *only = getenv("SDC_DB_CASES"); // e.g. "xc,xd": those cases alone (development)
    if (only) {
        char want[16];
        snprintf(want, sizeof want, ",%s,", c->tag);
        char list[256];
        snprintf(list, sizeof list, ",%s,", only);
        if (!strstr(list, want)) return;
    }
    printf("== case %s: %s\n", c->tag, c->what);
    SdcError err = {0};
    SdModel m = {0};
    DbTrainer tr;
    Record rec = {0};
    int have_tr = 0;
    Named *nm = NULL;
    float *init = NULL, *fin = NULL, *li = NULL, *lc = NULL, *rbuf = NULL, *tids = NULL;
    float *t2i_std = NULL, *t2i_fmean = NULL, *t2i_fstd = NULL;
    const int32_t *t2i_ids = NULL;
    char key[320];
    m.be = be;
    const char *model = c->xl ? TINY_XL : DEMO;
    if (!check_true(t, model_files_open(&m.files, model, c->config_dir, c->prediction, &err) == 0, "open %s: %s",
                    model, err.msg))
        goto done;
    if (!c->xl && !check_true(t, clip_tok_load_default(&m.tok, &err) == 0, "tokenizer: %s", err.msg)) goto done;
    if (c->xl && (!check_true(t, clip_tok_load_dir(&m.tok, TINY_XL "/tokenizer", &err) == 0, "tokenizer: %s",
                              err.msg) ||
                  !check_true(t, clip_tok_load_dir(&m.tok2, TINY_XL "/tokenizer_2", &err) == 0, "tokenizer_2: %s",
                              err.msg)))
        goto done;
    ModelLoadOpts full = {.trainable = 1}, te = {.trainable = c->train_text_encoder && !c->lora_rank};
    if (!check_true(t, clip_load_opts(&m.clip, m.files, be, &te, &err) == 0, "clip: %s", err.msg)) goto done;
    ModelLoadOpts te2 = te;
    te2.second_text_encoder = 1;
    if (c->xl && !check_true(t, clip_load_opts(&m.clip2, m.files, be, &te2, &err) == 0, "clip 2: %s", err.msg))
        goto done;
    if (!check_true(t, unet_load_opts(&m.unet, m.files, be, &full, &err) == 0, "unet: %s", err.msg)) goto done;

    size_t ni = 0, nc = 0, nt = 0;
    if (c->xl) {
        tids = ref_f32(ref, "time_ids.inst", &nt);
        if (!check_true(t, tids && nt == 6 * (size_t)c->n_inst, "fixture time ids (%d, 6)", c->n_inst)) goto done;
    }
    if (x) { // the items' latent distributions (and their mirror images'), captions as ids
        size_t k[4] = {0};
        li = ref_f32(ref, "t2i.mean", &ni);
        t2i_std = ref_f32(ref, "t2i.std", &k[0]);
        t2i_fmean = ref_f32(ref, "t2i.fmean", &k[1]);
        t2i_fstd = ref_f32(ref, "t2i.fstd", &k[2]);
        t2i_ids = ref_i32(ref, "t2i.ids", &k[3]);
        if (!check_true(t, li && t2i_std && t2i_fmean && t2i_fstd && t2i_ids && ni == 768 && k[0] == 768 &&
                               k[1] == 768 && k[2] == 768 && k[3] == 3 * 77, "fixture t2i data (3, 4, 8, 8)"))
            goto done;
    } else {
        li = ref_f32(ref, c->n_inst == 3 ? "latents.inst3" : "latents.inst", &ni);
        lc = ref_f32(ref, "latents.class", &nc);
        if (!check_true(t, li && lc && ni == 256 * (size_t)c->n_inst && nc == 256, "fixture latents (%d + 1, 4, 8, 8)",
                        c->n_inst))
            goto done;
    }
    DbConfig cfg = {.train_batch_size = c->batch > 0 ? c->batch : 1, .grad_accum = c->accum, .max_train_steps = STEPS, .learning_rate = 1e-4,
                    .lr_scheduler = c->sched, .lr_warmup_steps = c->warmup, .lr_num_cycles = 1, .lr_power = 1.0,
                    .max_grad_norm = 1.0,
                    .adam = {.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = c->xl ? 1e-4 : 1e-2},
                    .with_prior_preservation = c->prior, .prior_loss_weight = 1.0,
                    .train_text_encoder = c->train_text_encoder, .lora_rank = c->lora_rank,
                    .text_encoder_lr = c->te_lr, .has_te_weight_decay = c->te_wd > 0, .te_weight_decay = c->te_wd,
                    .offset_noise = c->offset_noise, .snr_gamma = c->snr_gamma, .seed = c->seed,
                    .input_perturbation = x ? x->input_perturbation : 0, .proportion_empty = x ? x->proportion_empty : 0,
                    .snr_v_plus_one = x != NULL, .use_ema = x && x->ema, .ema = ema_config_default()};
    char ibuf[256], cbuf[256];
    const char *ip = ref_str(ref, "prompt.inst", ibuf, sizeof ibuf);
    const char *cp = ref_str(ref, "prompt.class", cbuf, sizeof cbuf);
    DbData data = {.n_inst = c->n_inst, .n_class = 1, .inst_latents = li, .class_latents = lc, .lat_h = 8, .lat_w = 8,
                   .instance_prompt = ip, .class_prompt = cp, .inst_time_ids = tids};
    if (x) {
        data.n_class = 0, data.instance_prompt = data.class_prompt = ip = cp = "";
        data.item_ids = t2i_ids;
        data.inst_std = x->sample ? t2i_std : NULL;
        data.flip_latents = x->flip ? t2i_fmean : NULL, data.flip_std = x->flip && x->sample ? t2i_fstd : NULL;
    }
    DbHooks hooks = {.user = &rec, .rank = 0, .world = 1, .on_step = on_step};
    if (!check_true(t, ip && cp && db_init(&tr, &m, &cfg, &data, &hooks, &err) == 0, "db_init: %s", err.msg))
        goto done;
    have_tr = 1;

    // the prompts' ids: sdc's tokenizer against transformers' CLIPTokenizer
    size_t nid = 0;
    if (x) { // every caption, and the empty one
        int same = 1;
        for (int i = 0; i < 3; i++) {
            char cap[256];
            int32_t ids[77];
            int dropped = 0;
            snprintf(key, sizeof key, "caption.%d", i);
            const char *text = ref_str(ref, key, cap, sizeof cap);
            same = same && text && !clip_tok_encode(m.tok, text, ids, 77, clip_config(m.clip)->pad_token, &dropped,
                                                    &err) && !memcmp(ids, t2i_ids + 77 * i, sizeof ids);
        }
        const int32_t *re = ref_i32(ref, "t2i.empty_ids", &nid);
        check_true(t, same && re && nid == 77 && !memcmp(re, tr.empty_ids, 77 * 4),
                   "the 3 captions' and the empty caption's token ids equal transformers'");
        goto tokens_done;
    }
    const int32_t *ri = ref_i32(ref, "ids.inst", &nid), *rc = ref_i32(ref, "ids.class", &nid);
    check_true(t, ri && rc && nid == 77 && !memcmp(ri, tr.inst_ids, 77 * 4) && !memcmp(rc, tr.class_ids, 77 * 4),
               "token ids of \"%s\" / \"%s\" equal transformers'", ip, cp);
    if (c->xl) {
        ri = ref_i32(ref, "ids2.inst", &nid), rc = ref_i32(ref, "ids2.class", &nid);
        check_true(t, ri && rc && nid == 77 && !memcmp(ri, tr.inst_ids2, 77 * 4) && !memcmp(rc, tr.class_ids2, 77 * 4),
                   "tokenizer_2's ids equal transformers'");
    }

tokens_done:
    rec.tr = &tr;
    int have_well = 1;
    for (int g = 0; g < tr.opt.n_groups && g < DB_MAX_GROUPS; g++) {
        rec.well[g] = malloc(tr.opt.groups[g].numel);
        if (rec.well[g]) memset(rec.well[g], 1, tr.opt.groups[g].numel);
        have_well &= rec.well[g] != NULL;
    }
    if (!check_true(t, have_well && tr.opt.n_groups == tr.n_groups, "memory")) goto done;
    int n = list_named(&tr, &rec, &nm, &init);
    if (!check_true(t, n > 0, "trainable tensors: %d", n)) goto done;
    double t0 = now_s();
    if (!check_true(t, db_train(&tr, STEPS, &err) == 0, "db_train %d steps: %s", STEPS, err.msg)) goto done;
    printf("  %d steps in %.2f s\n", rec.n, now_s() - t0);
    if (!check_true(t, named_to_host(&tr, nm, n, init, &fin) == 0, "memory for the final values")) goto done;

    // per step: loss, gradient norm, lr
    for (int s = 0; s < rec.n; s++) {
        const char *what[3] = {"loss", "grad_norm", "lr"};
        const double *got[3] = {rec.loss, rec.norm, rec.lr};
        const double tol[3] = {TOL_LOSS, TOL_NORM, TOL_LR};
        for (int q = 0; q < 3; q++) {
            size_t k = 0;
            snprintf(key, sizeof key, "%s.%s", c->tag, what[q]);
            free(rbuf);
            rbuf = ref_f32(ref, key, &k);
            if (!check_true(t, rbuf && k == STEPS, "fixture has %s", key)) goto done;
            snprintf(key, sizeof key, "step %d %s", s + 1, what[q]);
            check_scalar(t, key, got[q][s], rbuf[s], tol[q]);
        }
    }
    check_true(t, rec.n == STEPS, "%d optimizer steps", rec.n);

    // the largest change of the stored tensors (torch's), the scale of the comparison
    Cmp cmp = {0};
    for (int s = 0; s < rec.n; s++) cmp.envelope += 2.0 * rec.lr[s];
    for (int i = 0; i < n; i++) {
        size_t k = 0;
        snprintf(key, sizeof key, "%s.p.%s", c->tag, nm[i].name);
        float *r = ref_f32(ref, key, &k);
        if (!r) continue;
        if (k == nm[i].n)
            for (size_t j = 0; j < k; j++) cmp.scale = fmax(cmp.scale, fabs((double)r[j] - nm[i].init[j]));
        free(r);
    }
    printf("  largest parameter change (torch): %.4e\n", cmp.scale);
    check_true(t, cmp.scale > 1e-5, "the parameters moved");

    // final values of the stored tensors, and every tensor's sum of squared changes
    double ssq = 0, worst_d2 = 0;
    int n_stored = 0, d2_bad = 0;
    size_t n_all = 0, n_well = 0, n_well_ref = 0;
    const char *worst = "";
    for (int i = 0; i < n; i++) {
        const Named *e = &nm[i];
        double d2 = 0;
        size_t nw = 0;
        for (size_t j = 0; j < e->n; j++) {
            double d = (double)e->p[j] - e->init[j];
            if (e->well[j]) d2 += d * d, nw++;
            ssq += (double)e->p[j] * e->p[j];
        }
        n_all += e->n, n_well += nw;
        size_t k = 0;
        snprintf(key, sizeof key, "%s.d2.%s", c->tag, e->name);
        float *rd = ref_f32(ref, key, &k);
        if (!check_true(t, rd && k == 2, "fixture has %s", key)) {
            free(rd);
            continue;
        }
        n_well_ref += (size_t)rd[1];
        // A value whose gradient RMS lies at WELL_RMS itself may be counted on
        // one side only (seen: 1 of 2e6 under valgrind's arithmetic); each
        // such value may add up to (envelope / 2)^2 to either sum.
        double miss = fabs((double)nw - rd[1]), half = cmp.envelope / 2;
        double ed = rd[0] == 0 && d2 == 0 ? 0 : (fabs(d2 - rd[0]) - miss * half * half) / fmax(rd[0], 1e-30);
        if (ed > TOL_D2 || miss > 1 + e->n / 1000) {
            d2_bad++;
            printf("  %-78s sum (final-initial)^2 over %zu values sdc=%.6e, over %.0f torch=%.6e  rel_err=%.3e  "
                   "NOT OK\n", e->name, nw, d2, rd[1], (double)rd[0], ed);
        }
        if (ed > worst_d2) worst_d2 = ed, worst = e->name;
        free(rd);
        snprintf(key, sizeof key, "%s.p.%s", c->tag, e->name);
        float *r = ref_f32(ref, key, &k);
        if (r) {
            n_stored++;
            if (check_true(t, k == e->n, "%s: %zu values", key, k))
                check_values(t, e->name, e->p, r, e->well, k, &cmp);
            free(r);
        }
        if (strstr(e->name, "token_embedding")) { // the prompts' rows (text2.: through tokenizer_2)
            size_t nr = 0;
            const int second = !strncmp(e->name, "text2.", 6);
            snprintf(key, sizeof key, "%s.tok_rows%s", c->tag, second ? "2" : "");
            const int32_t *rows = ref_i32(ref, key, &nr);
            snprintf(key, sizeof key, "%s.p.%s.rows", c->tag, e->name);
            r = ref_f32(ref, key, &k);
            const size_t D = (size_t)clip_config(second ? m.clip2 : m.clip)->hidden;
            if (check_true(t, rows && r && k == nr * D, "fixture has %s (%zu rows)", key, nr)) {
                float *got = malloc(k * sizeof *got);
                uint8_t *gw = malloc(k);
                for (size_t q = 0; q < nr; q++) {
                    memcpy(got + q * D, e->p + (size_t)rows[q] * D, D * sizeof(float));
                    memcpy(gw + q * D, e->well + (size_t)rows[q] * D, D);
                }
                snprintf(key, sizeof key, "%s (the prompts' %zu rows)", e->name, nr);
                check_values(t, key, got, r, gw, k, &cmp);
                free(got), free(gw);
            }
            free(r);
        }
    }
    t->checks++;
    if (d2_bad) t->failures++;
    printf("  sum (final - initial)^2 per tensor, %d tensors: worst rel_err=%.3e (%s)  tol=%.0e  %s\n", n,
           worst_d2, worst, TOL_D2, d2_bad ? "NOT OK" : "OK");
    printf("  %zu of %zu values well conditioned (torch: %zu); the other %zu: gradient RMS < %g at some step\n",
           n_well, n_all, n_well_ref, n_all - n_well, WELL_RMS);
    check_true(t, n_stored >= 30, "%d tensors compared value by value", n_stored);
    double rs = 0;
    snprintf(key, sizeof key, "%s.ssq", c->tag);
    if (check_true(t, ref_f64(ref, key, &rs), "fixture has %s", key))
        check_scalar(t, "sum final^2 (all trainables)", ssq, rs, TOL_SSQ);
    if (x && x->ema) { // the EMA shadow against EMAModel's: the stored tensors value by value, every value's square
        float *pb, *gb;
        size_t nn, n_ema = 0;
        unet_trainables(m.unet, &pb, &gb, &nn);
        (void)pb;
        const float *ema = host_view(be, tr.ema, nn, &rec.scratch); // the UNet's: init_buf's first nn values
        if (!check_true(t, ema != NULL, "memory for the EMA shadow")) goto done;
        double essq = 0;
        for (size_t j = 0; j < nn; j++) essq += (double)ema[j] * ema[j];
        for (int i = 0; i < n; i++) {
            if (strncmp(nm[i].name, "unet.", 5)) continue;
            size_t k = 0;
            snprintf(key, sizeof key, "%s.ema.%s", c->tag, nm[i].name);
            float *r = ref_f32(ref, key, &k);
            if (!r) continue;
            n_ema++;
            snprintf(key, sizeof key, "EMA %s", nm[i].name);
            if (check_true(t, k == nm[i].n, "%s: %zu values", key, k))
                check_values(t, key, ema + (nm[i].init - init), r, nm[i].well, k, &cmp);
            free(r);
        }
        check_true(t, n_ema >= 30, "%zu EMA tensors compared value by value", n_ema);
        snprintf(key, sizeof key, "%s.ema_ssq", c->tag);
        if (check_true(t, ref_f64(ref, key, &rs), "fixture has %s", key))
            check_scalar(t, "sum EMA^2 (every UNet value)", essq, rs, TOL_SSQ);
    }
done:
    if (err.code) printf("  error: %s\n", err.msg);
    if (have_tr) db_free(&tr);
    sd_model_free(&m);
    free(nm), free(init), free(fin), free(rec.scratch), free(li), free(lc), free(rbuf), free(tids), free(rec.well[0]);
    free(rec.well[1]), free(rec.well[2]);
    free(t2i_std), free(t2i_fmean), free(t2i_fstd);
}

// The same configurations as tools/make_t2i_fixture.py's CASES (batch 2 over 3 items).
static const T2iCase CASES_T2I[] = {
    {{"ta", "text-to-image: a caption per item, frozen text encoder, EMA", 2026, 0, 0, 1, 0, 0.0f, 0.0f, LR_CONSTANT,
      0, -1, 3, NULL, 0, 2, 0, 0}, 0, 0, 1, 0.0f, 0.0f},
    {{"tb", "text-to-image: random flip, sampled latents, input perturbation 0.1, noise offset 0.05, empty "
      "captions 0.5, min-SNR 5, accumulation 2, linear warmup 1, EMA", 31337, 0, 0, 2, 0, 5.0f, 0.05f, LR_LINEAR,
      1, -1, 3, NULL, 0, 2, 0, 0}, 1, 1, 1, 0.1f, 0.5f},
    {{"tc", "text-to-image: v-prediction, min-SNR 5 (snr + 1), text encoder trained, EMA, cosine", 7, 1, 0, 1, 0,
      5.0f, 0.0f, LR_COSINE, 0, PRED_V, 3, NULL, 0, 2, 0, 0}, 0, 1, 1, 0.0f, 0.0f},
};
#define REF_T2I "tests/fixtures/ref-t2i.safetensors"

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *be = NULL;
    StFile ref;
#ifdef TEST_DB_CUDA // test_dreambooth_cuda.c: the same cases on the CUDA backend in fp32 (issue 12, part 5)
    const int gpu_rc = test_cuda_backend(&be, DT_F32);
    if (gpu_rc >= 0) return gpu_rc;
#else
    if (!check_true(&t, backend_cpu_create(&be, 0, &err) == 0, "cpu backend: %s", err.msg)) return test_summary(&t);
#endif
    if (!check_true(&t, st_open(&ref, REF, &err) == 0, "open %s: %s\n---> run python3 tools/make_db_fixture.py",
                    REF, err.msg)) {
        backend_destroy(be);
        return test_summary(&t);
    }
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) run_case(&t, be, &ref, &CASES[i], NULL);
    st_close(&ref);
    if (check_true(&t, st_open(&ref, REF_XL, &err) == 0, "open %s: %s\n---> run python3 tools/make_dbxl_fixture.py",
                   REF_XL, err.msg)) {
        for (size_t i = 0; i < sizeof CASES_XL / sizeof CASES_XL[0]; i++) run_case(&t, be, &ref, &CASES_XL[i], NULL);
        st_close(&ref);
    }
    if (check_true(&t, st_open(&ref, REF_T2I, &err) == 0, "open %s: %s\n---> run python3 tools/make_t2i_fixture.py",
                   REF_T2I, err.msg)) {
        for (size_t i = 0; i < sizeof CASES_T2I / sizeof CASES_T2I[0]; i++) run_case(&t, be, &ref, &CASES_T2I[i].c, &CASES_T2I[i]);
        st_close(&ref);
    }
    backend_destroy(be);
    return test_summary(&t);
}
