// test_train_ckpt.c: training checkpoints (data/train_ckpt.h): a trainer's
// tensors, AdamW moments and loop state saved and loaded back into zeroed
// buffers bit for bit (and the next AdamW step equal to the uninterrupted
// run's); another job, a wrong shape, a missing or extra tensor, a corrupt
// tensor, a model-only file refused with a hint; the output folder: latest
// picks the highest step (10 over 9), rotation keeps the newest, a killed
// writer's .tmp leaves the previous checkpoint in charge; with a base model
// the checkpoint is a complete model that `sdc convert` turns into a
// diffusers folder.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data/checkpoint.h"
#include "data/convert.h"
#include "data/h5util.h"
#include "data/train_ckpt.h"
#include "io/weights.h"
#include "testutil.h"
#include "core/backend.h"

// The CPU backend the optimizer runs its element ops on (one per test process).
static const Backend *cpu_be(void) {
    static Backend *be;
    SdcError err = {0};
    if (!be) SDC_CHECK(backend_cpu_create(&be, 1, &err) == 0);
    return be;
}

// ----------------------------------------------------------------------------
// a small fake trainer: a full "unet" (ParamTable) and LoRA tensors of two
// components; AdamW group 0 = unet then unet_lora, group 1 = text_encoder_lora

#define N_UNET 3
#define N_TL 2
#define N_UL 2

typedef struct Trainer {
    ParamTable unet;
    TrainCkptTensor tl[N_TL], ul[N_UL];
    float *grads[N_UNET + N_TL + N_UL];
    TrainCkptComponent comps[3];
    AdamW opt;
    uint64_t rng[5];
    int64_t order[6];
    TrainCkptState st;
    TrainCkptKey job[3];
    TrainCkptSpec spec;
} Trainer;

static const int64_t UNET_SHAPES[N_UNET][4] = {{8, 4, 3, 3}, {8, 0, 0, 0}, {16, 8, 0, 0}};
static const int UNET_NDIM[N_UNET] = {4, 1, 2};

static float *falloc(int64_t n) {
    float *p = calloc((size_t)n, sizeof(float));
    SDC_CHECK(p);
    return p;
}

static int64_t numel(int ndim, const int64_t *s) {
    int64_t n = 1;
    for (int k = 0; k < ndim; k++) n *= s[k];
    return n;
}

static void trainer_init(Trainer *tr, const char *lora_rank) {
    memset(tr, 0, sizeof *tr);
    tr->unet.e = calloc(N_UNET, sizeof(ParamEntry));
    SDC_CHECK(tr->unet.e);
    tr->unet.n = tr->unet.cap = N_UNET;
    static const char *const un[N_UNET] = {"conv_in.weight", "conv_in.bias", "time_embedding.linear_1.weight"};
    static const char *const tn[N_TL] = {"text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight",
                                         "text_model.encoder.layers.0.self_attn.q_proj.lora.up.weight"};
    static const char *const ln[N_UL] = {"mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight",
                                         "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight"};
    OptimTensor g0[N_UNET + N_UL], g1[N_TL];
    int gi = 0;
    for (int i = 0; i < N_UNET; i++) {
        ParamEntry *e = &tr->unet.e[i];
        snprintf(e->name, sizeof e->name, "%s", un[i]);
        int64_t n = numel(UNET_NDIM[i], UNET_SHAPES[i]);
        e->t = tensor_f32(falloc(n), UNET_NDIM[i], UNET_SHAPES[i]);
        fill_uniform(e->t.data, (size_t)n, 100 + i, -1, 1);
        tr->grads[gi] = falloc(n);
        g0[i] = (OptimTensor){e->t.data, tr->grads[gi++], (size_t)n};
    }
    for (int i = 0; i < N_TL + N_UL; i++) {
        TrainCkptTensor *t = i < N_TL ? &tr->tl[i] : &tr->ul[i - N_TL];
        int down = (i % 2) == 0;
        t->name = i < N_TL ? tn[i] : ln[i - N_TL];
        t->ndim = 2;
        t->shape[0] = down ? 4 : 32, t->shape[1] = down ? 32 : 4; // rank 4, width 32
        int64_t n = numel(2, t->shape);
        t->data = falloc(n);
        fill_uniform(t->data, (size_t)n, 200 + i, -0.1f, 0.1f);
        tr->grads[gi] = falloc(n);
        OptimTensor o = {t->data, tr->grads[gi++], (size_t)n};
        if (i < N_TL) g1[i] = o;
        else g0[N_UNET + i - N_TL] = o;
    }
    AdamWGroupDesc gd[2] = {{.tensors = g0, .n_tensors = N_UNET + N_UL, .lr_scale = 1.0},
                            {.tensors = g1, .n_tensors = N_TL, .lr_scale = 0.5}};
    AdamWConfig cfg = adamw_config_default();
    SdcError err = {0};
    SDC_CHECK(adamw_init(&tr->opt, cpu_be(), &cfg, gd, 2, &err) == 0);
    tr->comps[0] = (TrainCkptComponent){.group = "unet", .table = &tr->unet, .opt_group = 0};
    tr->comps[1] = (TrainCkptComponent){.group = "text_encoder_lora", .tensors = tr->tl, .n_tensors = N_TL,
                                        .opt_group = 1};
    tr->comps[2] = (TrainCkptComponent){.group = "unet_lora", .tensors = tr->ul, .n_tensors = N_UL, .opt_group = 0};
    tr->job[0] = (TrainCkptKey){"model", "tests/fixtures/tiny-sd1", NULL};
    tr->job[1] = (TrainCkptKey){"lora_rank", lora_rank, NULL};
    tr->job[2] = (TrainCkptKey){"train_text_encoder", "true", NULL};
    tr->spec = (TrainCkptSpec){.comps = tr->comps, .n_comps = 3, .opt = &tr->opt, .job = tr->job, .n_job = 3,
                               .manifest = "task: TASK_DREAMBOOTH\nmodel { path: \"tests/fixtures/tiny-sd1\" }\n"};
    tr->st = (TrainCkptState){.rng = tr->rng, .n_rng = 5, .data_order = tr->order, .n_order = 6};
}

// k optimizer steps with pseudo-random gradients (seeded by the step)
static void trainer_steps(Trainer *tr, int k) {
    for (int s = 0; s < k; s++) {
        for (int g = 0; g < tr->opt.n_groups; g++)
            for (int i = 0; i < tr->opt.groups[g].n_tensors; i++) {
                const OptimTensor *t = &tr->opt.groups[g].tensors[i];
                fill_uniform(t->g, t->n, 1000 * (uint64_t)tr->opt.step + 10 * g + i, -1, 1);
            }
        adamw_step(&tr->opt, 1e-3);
    }
    tr->st.step = tr->opt.step;
    tr->st.epoch = tr->opt.step / 3;
    tr->st.micro_step = tr->opt.step % 3;
    tr->st.loss = 0.125 + (double)tr->opt.step;
    for (int i = 0; i < 5; i++) tr->rng[i] = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1) + (uint64_t)tr->opt.step;
    for (int i = 0; i < 6; i++) tr->order[i] = (5 * i + tr->opt.step) % 6;
}

// Every buffer the checkpoint covers, in one fixed order, as (ptr, bytes).
typedef struct Span {
    void *p;
    size_t n;
} Span;

static int trainer_spans(Trainer *tr, Span *sp) {
    int k = 0;
    for (int i = 0; i < N_UNET; i++) sp[k++] = (Span){tr->unet.e[i].t.data, tensor_bytes(&tr->unet.e[i].t)};
    for (int i = 0; i < N_TL; i++) sp[k++] = (Span){tr->tl[i].data, (size_t)numel(2, tr->tl[i].shape) * 4};
    for (int i = 0; i < N_UL; i++) sp[k++] = (Span){tr->ul[i].data, (size_t)numel(2, tr->ul[i].shape) * 4};
    for (int g = 0; g < tr->opt.n_groups; g++) {
        sp[k++] = (Span){tr->opt.groups[g].m, tr->opt.groups[g].numel * 4};
        sp[k++] = (Span){tr->opt.groups[g].v, tr->opt.groups[g].numel * 4};
    }
    sp[k++] = (Span){&tr->opt.step, sizeof tr->opt.step};
    sp[k++] = (Span){tr->rng, sizeof tr->rng};
    sp[k++] = (Span){tr->order, sizeof tr->order};
    sp[k++] = (Span){&tr->st.step, sizeof(int64_t) * 3 + sizeof(double)}; // step, epoch, micro_step, loss
    return k;
}

static void trainer_free(Trainer *tr) {
    for (int i = 0; i < N_UNET; i++) free(tr->unet.e[i].t.data);
    for (int i = 0; i < N_TL; i++) free(tr->tl[i].data);
    for (int i = 0; i < N_UL; i++) free(tr->ul[i].data);
    for (int i = 0; i < N_UNET + N_TL + N_UL; i++) free(tr->grads[i]);
    param_table_free(&tr->unet);
    adamw_free(&tr->opt);
}

static void snapshot(Trainer *tr, void **copies) {
    Span sp[32];
    int n = trainer_spans(tr, sp);
    for (int i = 0; i < n; i++) {
        copies[i] = malloc(sp[i].n);
        memcpy(copies[i], sp[i].p, sp[i].n);
    }
}

static int same_as(Trainer *tr, void **copies) {
    Span sp[32];
    int n = trainer_spans(tr, sp), bad = 0;
    for (int i = 0; i < n; i++) bad += memcmp(copies[i], sp[i].p, sp[i].n) != 0;
    return bad == 0;
}

static void zero_all(Trainer *tr) {
    Span sp[32];
    int n = trainer_spans(tr, sp);
    for (int i = 0; i < n; i++) memset(sp[i].p, 0, sp[i].n);
}

static int refused(TestCtx *t, int rc, const SdcError *err, const char *what, const char *needle) {
    return check_true(t, rc != 0 && strstr(err->msg, needle) && strstr(err->msg, "---> "), "%s refused: %s", what,
                      rc ? err->msg : "(accepted)");
}

// ----------------------------------------------------------------------------
// output-folder helpers

static void touch(const char *path) {
    FILE *f = fopen(path, "w");
    SDC_CHECK(f);
    fputs("x", f);
    fclose(f);
}

static int exists(const char *path) { return access(path, F_OK) == 0; }

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    char tmpl[] = "/tmp/sdc-test-trainckpt-XXXXXX";
    SDC_CHECK(mkdtemp(tmpl));
    char dir[4200], p[4400], p2[4400];
    snprintf(dir, sizeof dir, "%s/out", tmpl);
    h5_quiet();

    // 1. save, load into zeroed buffers: bit-exact; the next step equals the uninterrupted run's
    Trainer tr, ref;
    trainer_init(&tr, "4");
    trainer_init(&ref, "4");
    trainer_steps(&tr, 3);
    trainer_steps(&ref, 3);
    SDC_CHECK(mkdir(dir, 0755) == 0);
    train_ckpt_path(dir, tr.st.step, p, sizeof p, &err);
    check_true(&t, train_ckpt_save(p, &tr.spec, &tr.st, &err) == 0, "save %s: %s", p, err.msg);
    check_true(&t, !exists(strcat(strcpy(p2, p), ".tmp")), "no .tmp left after the save");
    void *copies[32] = {0};
    snapshot(&tr, copies);
    zero_all(&tr);
    memset(&err, 0, sizeof err);
    check_true(&t, train_ckpt_load(p, &tr.spec, &tr.st, &err) == 0, "load %s: %s", p, err.msg);
    check_true(&t, same_as(&tr, copies), "params, m, v, optimizer step, rng words, data order, step/epoch/"
               "micro_step/loss: bit-exact after the load (step %lld, epoch %lld, micro %lld, loss %g)",
               (long long)tr.st.step, (long long)tr.st.epoch, (long long)tr.st.micro_step, tr.st.loss);
    for (int i = 0; i < 32 && copies[i]; i++) free(copies[i]), copies[i] = NULL;
    trainer_steps(&tr, 2);
    trainer_steps(&ref, 2);
    int same = 1;
    for (int g = 0; g < 2; g++)
        for (int i = 0; i < tr.opt.groups[g].n_tensors; i++)
            same &= !memcmp(tr.opt.groups[g].tensors[i].p, ref.opt.groups[g].tensors[i].p,
                            tr.opt.groups[g].tensors[i].n * 4);
    check_true(&t, same && tr.opt.step == ref.opt.step, "resumed run: 2 more AdamW steps bit-equal to the "
               "uninterrupted run's");

    // 2. refusals (each names the file and ends with a hint)
    {
        Trainer o;
        trainer_init(&o, "8"); // another job: LoRA rank 8
        memset(&err, 0, sizeof err);
        refused(&t, train_ckpt_load(p, &o.spec, &o.st, &err), &err, "another job (lora_rank 8 vs 4)",
                "lora_rank is \"4\" there, \"8\" in this job");
        o.job[1].value = "4";
        // a job key the file does not record: its `absent` value stands for it (a key added later), else refused
        TrainCkptKey k4[4] = {o.job[0], o.job[1], o.job[2], {"train_decoder_only", "0", "0"}};
        TrainCkptSpec s4 = o.spec;
        s4.job = k4, s4.n_job = 4;
        memset(&err, 0, sizeof err);
        check_true(&t, train_ckpt_load(p, &s4, &o.st, &err) == 0, "a key the file lacks, at its absent value, "
                   "loads: %s", err.msg);
        k4[3].value = "1";
        memset(&err, 0, sizeof err);
        refused(&t, train_ckpt_load(p, &s4, &o.st, &err), &err, "a key the file lacks, not at its absent value",
                "train_decoder_only is \"0\" there, \"1\" in this job");
        k4[3].absent = NULL;
        memset(&err, 0, sizeof err);
        refused(&t, train_ckpt_load(p, &s4, &o.st, &err), &err, "a key the file lacks, no absent value",
                "it does not record train_decoder_only");
        o.tl[1].shape[0] = 16, o.tl[1].shape[1] = 8; // same numel, other shape
        memset(&err, 0, sizeof err);
        refused(&t, train_ckpt_load(p, &o.spec, &o.st, &err), &err, "wrong shape",
                "/text_encoder_lora/text_model.encoder.layers.0.self_attn.q_proj.lora.up.weight is f32 (32, 4), "
                "the trainer's is f32 (16, 8)");
        o.tl[1].shape[0] = 32, o.tl[1].shape[1] = 4;
        o.ul[1].name = "mid_block.attentions.0.transformer_blocks.0.attn1.to_k.lora.up.weight";
        memset(&err, 0, sizeof err);
        refused(&t, train_ckpt_load(p, &o.spec, &o.st, &err), &err, "missing tensor", "to_k.lora.up.weight is missing");
        // a trainer with fewer tensors than the file (no optimizer: its sizes would differ)
        TrainCkptComponent c1 = {.group = "unet_lora", .tensors = o.ul, .n_tensors = 1, .opt_group = -1};
        o.ul[1].name = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight";
        TrainCkptSpec s1 = {.comps = &c1, .n_comps = 1, .job = o.job, .n_job = 3};
        memset(&err, 0, sizeof err);
        refused(&t, train_ckpt_load(p, &s1, &o.st, &err), &err, "extra tensor in the file",
                "to_q.lora.up.weight is not a tensor of this trainer");
        c1.n_tensors = 2;
        memset(&err, 0, sizeof err);
        check_true(&t, train_ckpt_load(p, &s1, &o.st, &err) == 0, "a subset of components without the optimizer "
                   "loads: %s", err.msg);
        // rng words of another length
        o.st.n_rng = 4;
        memset(&err, 0, sizeof err);
        refused(&t, train_ckpt_load(p, &o.spec, &o.st, &err), &err, "rng length", "rng_words holds 5 words");
        o.st.n_rng = 5;
        // an optimizer group whose components do not add up
        o.comps[2].opt_group = 1;
        memset(&err, 0, sizeof err);
        refused(&t, train_ckpt_load(p, &o.spec, &o.st, &err), &err, "optimizer groups not matching the components",
                "AdamW group 0 holds");
        o.comps[2].opt_group = 0;
        // a flipped byte inside a tensor: the CRC catches it
        snprintf(p2, sizeof p2, "%s/corrupt.h5", tmpl);
        char cmd[9000];
        snprintf(cmd, sizeof cmd, "cp %s %s", p, p2);
        SDC_CHECK(system(cmd) == 0);
        hid_t f = H5Fopen(p2, H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t d = H5Dopen2(f, "/unet_lora/mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight",
                           H5P_DEFAULT);
        haddr_t off = H5Dget_offset(d);
        H5Dclose(d);
        H5Fclose(f);
        FILE *fc = fopen(p2, "rb+");
        fseek(fc, (long)off + 17, SEEK_SET);
        int b = fgetc(fc);
        fseek(fc, (long)off + 17, SEEK_SET);
        fputc(b ^ 0x20, fc);
        fclose(fc);
        memset(&err, 0, sizeof err);
        refused(&t, train_ckpt_load(p2, &o.spec, &o.st, &err), &err, "corrupt tensor", "CRC32");
        trainer_free(&o);
    }

    // 3. the output folder: latest, a killed writer, rotation
    {
        char q[4400];
        int64_t step = 0;
        snprintf(q, sizeof q, "%s/none", tmpl);
        check_true(&t, train_ckpt_latest(q, p2, sizeof p2, &step, &err) == 0 && !p2[0] && step == -1,
                   "latest of a missing folder: no checkpoint, no error");
        for (int s = 9; s <= 10; s++) {
            tr.st.step = s;
            train_ckpt_path(dir, s, q, sizeof q, &err);
            SDC_CHECK(train_ckpt_save(q, &tr.spec, &tr.st, &err) == 0);
        }
        snprintf(q, sizeof q, "%s/checkpoint-99.h5.tmp", dir); // a stale half file
        touch(q);
        snprintf(q, sizeof q, "%s/checkpoint-x.h5", dir); // not ours
        touch(q);
        snprintf(q, sizeof q, "%s/checkpoint-100.h5.old", dir);
        touch(q);
        check_true(&t, train_ckpt_latest(dir, p2, sizeof p2, &step, &err) == 0 && step == 10 &&
                   strstr(p2, "/checkpoint-10.h5"), "latest: checkpoint-10 over checkpoint-9 (and not the .tmp of "
                   "99): %s", p2);
        // a writer killed between its first tensor and the rename
        pid_t pid = fork();
        if (pid == 0) {
            CkptWriter w;
            SdcError e2 = {0};
            train_ckpt_path(dir, 20, q, sizeof q, &e2);
            if (ckpt_begin(&w, q, &e2) == 0) ckpt_put(&w, "unet", "conv_in.weight", &tr.unet.e[0].t, &e2);
            raise(SIGKILL);
            _exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        snprintf(q, sizeof q, "%s/checkpoint-20.h5.tmp", dir);
        check_true(&t, WIFSIGNALED(status) && exists(q), "writer of checkpoint-20 killed: its .tmp is left");
        check_true(&t, train_ckpt_latest(dir, p2, sizeof p2, &step, &err) == 0 && step == 10,
                   "latest after the kill: still checkpoint-10");
        Trainer o;
        trainer_init(&o, "4");
        memset(&err, 0, sizeof err);
        check_true(&t, train_ckpt_load(p2, &o.spec, &o.st, &err) == 0 && o.st.step == 10,
                   "checkpoint-10 loads after the kill: %s", err.msg);
        trainer_free(&o);
        // steps 3 (section 1), 9, 10 here; add 11, 30: five in all
        for (int s = 11; s <= 30; s += 19) {
            tr.st.step = s;
            train_ckpt_path(dir, s, q, sizeof q, &err);
            SDC_CHECK(train_ckpt_save(q, &tr.spec, &tr.st, &err) == 0);
        }
        int removed = -1;
        snprintf(q, sizeof q, "%s/checkpoint-20.h5.tmp", dir);
        int rc = train_ckpt_rotate(dir, 0, &removed, &err);
        check_true(&t, rc == 0 && removed == 2 && !exists(q),
                   "rotate with no limit: only the 2 stale .tmp files go (%d removed)", removed);
        rc = train_ckpt_rotate(dir, 3, &removed, &err);
        check_true(&t, rc == 0 && removed == 3, "limit 3 before a save: 3 oldest removed, 2 stay (%d removed)",
                   removed);
        int ok = 1;
        const int64_t left[] = {3, 9, 10, 11, 30};
        for (int i = 0; i < 5; i++) {
            train_ckpt_path(dir, left[i], q, sizeof q, &err);
            ok &= exists(q) == (left[i] >= 11);
        }
        check_true(&t, ok, "checkpoint-11 and checkpoint-30 remain");
        tr.st.step = 31;
        train_ckpt_path(dir, 31, q, sizeof q, &err);
        SDC_CHECK(train_ckpt_save(q, &tr.spec, &tr.st, &err) == 0);
        rc = train_ckpt_rotate(dir, 1, &removed, &err);
        check_true(&t, rc == 0 && removed == 2 && exists(q), "limit 1: the newest is never removed (%d removed)",
                   removed);
        check_true(&t, train_ckpt_latest(dir, p2, sizeof p2, &step, &err) == 0 && step == 31, "latest: 31");
    }

    // 4. a model-only checkpoint, and a complete model from a base
    {
        char base[4400], out[4400], ck[4400];
        snprintf(base, sizeof base, "%s/base.h5", tmpl);
        ConvertOpts co = {.model = "tests/fixtures/tiny-sd1", .output = base, .dtype = -1, .quiet = 1};
        memset(&err, 0, sizeof err);
        check_true(&t, convert_run(&co, &err) == 0, "sdc convert tiny-sd1 -> base.h5: %s", err.msg);
        memset(&err, 0, sizeof err);
        refused(&t, train_ckpt_load(base, &tr.spec, &tr.st, &err), &err, "a model-only checkpoint",
                "not a training checkpoint");
        // a full fine-tune of the base's UNet, perturbed; vae and text encoder frozen
        Ckpt c;
        SDC_CHECK(ckpt_open(&c, base, &err) == 0);
        int nu = 0;
        for (int i = 0; i < c.n; i++) nu += !strcmp(c.t[i].group, "unet");
        TrainCkptTensor *ut = calloc((size_t)nu, sizeof *ut);
        int k = 0, conv_in = -1;
        for (int i = 0; i < c.n; i++) {
            const CkptTensor *ct = &c.t[i];
            if (strcmp(ct->group, "unet")) continue;
            void *raw = malloc(ct->nbytes);
            SDC_CHECK(ckpt_read(&c, i, raw, 1, &err) == 0);
            int64_t n = numel(ct->ndim, ct->shape);
            ut[k].name = strdup(ct->name);
            ut[k].data = falloc(n);
            convert_to_f32(ut[k].data, raw, ct->dtype, (size_t)n);
            ut[k].ndim = ct->ndim;
            memcpy(ut[k].shape, ct->shape, sizeof ut[k].shape);
            if (!strcmp(ct->name, "conv_in.weight")) conv_in = k, ut[k].data[0] = 12.5f;
            free(raw);
            k++;
        }
        ckpt_close(&c);
        TrainCkptComponent uc = {.group = "unet", .tensors = ut, .n_tensors = nu, .opt_group = -1};
        const char *frozen[] = {"vae", "text_encoder"};
        TrainCkptSpec s = {.comps = &uc, .n_comps = 1, .job = tr.job, .n_job = 3, .manifest = "task: TASK_DREAMBOOTH",
                           .base = base, .frozen = frozen, .n_frozen = 2};
        snprintf(ck, sizeof ck, "%s/checkpoint-500.h5", tmpl);
        memset(&err, 0, sizeof err);
        check_true(&t, conv_in >= 0 && train_ckpt_save(ck, &s, &tr.st, &err) == 0, "save a complete model (%d "
                   "unet tensors trained, vae + text_encoder from the base): %s", nu, err.msg);
        snprintf(out, sizeof out, "%s/diffusers", tmpl);
        co = (ConvertOpts){.model = ck, .output = out, .dtype = -1, .quiet = 1};
        memset(&err, 0, sizeof err);
        check_true(&t, convert_run(&co, &err) == 0, "sdc convert checkpoint-500.h5 -> diffusers folder: %s", err.msg);
        ModelFiles *mf = NULL;
        memset(&err, 0, sizeof err);
        int rc = model_files_open(&mf, out, NULL, -1, &err);
        check_true(&t, rc == 0, "the diffusers folder opens as a model: %s", err.msg);
        if (!rc) {
            Tensor w;
            float v = 0;
            int64_t shp[4];
            memcpy(shp, ut[conv_in].shape, sizeof shp);
            if (!model_files_get(mf, COMP_UNET, "conv_in.weight", ut[conv_in].ndim, shp, &w, &err))
                convert_to_f32(&v, w.data, w.dtype, 1);
            check_true(&t, v == 12.5f, "its unet/conv_in.weight[0] is the trained value (%g)", v);
            check_true(&t, model_files_has(mf, COMP_VAE, "decoder.conv_out.weight") &&
                       model_files_has(mf, COMP_TEXT_ENCODER, "text_model.final_layer_norm.weight"),
                       "its vae and text encoder are there");
            model_files_close(mf);
        }
        // h5py sees a valid checkpoint (and checks every CRC itself); without
        // h5py (tools/setup.sh installs it) h5_interop.py exits 1: a failure
        {
            char cmd[9000];
            snprintf(cmd, sizeof cmd, "/usr/bin/python3 tools/h5_interop.py check %s checkpoint > %s/py.txt 2>&1",
                     ck, tmpl);
            check_true(&t, system(cmd) == 0, "tools/h5_interop.py check: the file is a valid checkpoint for h5py");
        }
        for (int i = 0; i < nu; i++) free((char *)ut[i].name), free(ut[i].data);
        free(ut);
    }

    trainer_free(&tr);
    trainer_free(&ref);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpl);
    if (system(cmd)) return 1;
    return test_summary(&t);
}
