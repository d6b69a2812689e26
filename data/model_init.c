// model_init.c: `sdc init-model` (src/models/init.h): a diffusers folder of
// a config's UNet and text encoder(s), initialised from scratch, with the
// VAE of a trained model, written as OUT.tmp and renamed when complete.
#include "data/model_init.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/backend.h"
#include "data/convert.h"
#include "data/fsutil.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/init.h"
#include "models/unet.h"
#include "models/vae.h"
#include "text/tokenizer.h"

static int is_file(const char *p) {
    struct stat st;
    return !stat(p, &st) && S_ISREG(st.st_mode);
}

// config_dir/sub/name -> out/sub/name; an error naming it when it is missing
static int copy_part(const char *config_dir, const char *out, const char *sub, const char *name, SdcError *err) {
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/%s%s%s", config_dir, sub, sub[0] ? "/" : "", name);
    if (!is_file(a)) return sdc_err(err, SDC_ERR_IO, "%s: missing ---> the config folder needs it", a);
    snprintf(b, sizeof b, "%s/%s", out, sub);
    if (sub[0]) SDC_TRY(fs_mkdir_p(b, err));
    snprintf(b, sizeof b, "%s/%s%s%s", out, sub, sub[0] ? "/" : "", name);
    return fs_copy_file(a, b, err);
}

static int write_table(const ParamTable *t, const char *path, SdcError *err) {
    const char **names = malloc((size_t)t->n * sizeof *names);
    Tensor *ts = malloc((size_t)t->n * sizeof *ts);
    int rc = names && ts ? 0 : sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
    for (int i = 0; !rc && i < t->n; i++) names[i] = t->e[i].name, ts[i] = t->e[i].t;
    static const char *const mk[1] = {"format"}, *const mv[1] = {"pt"};
    if (!rc) rc = st_write(path, names, ts, t->n, mk, mv, 1, err);
    free(names);
    free(ts);
    return rc;
}

// the VAE's tensors as the model at path holds them (diffusers names)
static int write_vae(ModelFiles *mf, const char *path, SdcError *err) {
    const int n = model_files_count(mf, COMP_VAE);
    const char **names = malloc((size_t)(n ? n : 1) * sizeof *names);
    Tensor *ts = malloc((size_t)(n ? n : 1) * sizeof *ts);
    int rc = names && ts ? 0 : sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
    for (int i = 0; !rc && i < n; i++) rc = model_files_at(mf, COMP_VAE, i, &names[i], &ts[i], err);
    static const char *const mk[1] = {"format"}, *const mv[1] = {"pt"};
    if (!rc) rc = st_write(path, names, ts, n, mk, mv, 1, err);
    free(names);
    free(ts);
    return rc;
}

static int init_text_encoder(ModelFiles *mf, Backend *be, int second, const char *out, uint64_t seed,
                             SdcError *err) {
    const ModelInfo *info = model_files_info(mf);
    ClipModel *c = NULL;
    ModelLoadOpts lo = {.trainable = 1, .init = 1, .second_text_encoder = second};
    SDC_TRY(clip_load_opts(&c, mf, be, &lo, err));
    const char *sub = second ? "text_encoder_2" : "text_encoder";
    char p[4096];
    int rc = params_init(clip_param_table(c), INIT_CLIP, second ? &info->clip2 : &info->clip,
                         seed ^ (second ? 0x7E2 : 0x7E1), err);
    snprintf(p, sizeof p, "%s/%s/model.safetensors", out, sub);
    if (!rc) rc = write_table(clip_param_table(c), p, err);
    clip_free(c);
    return rc;
}

int model_init_folder(const ModelInitOpts *o, SdcError *err) {
    if (!o->vae || !o->vae[0])
        return sdc_err(err, SDC_ERR_ARG, "init-model: no VAE ---> pass --vae MODEL: a trained VAE (a model, a "
                       "diffusers vae/ folder, or what sdc train vae writes)");
    struct stat st;
    if (!stat(o->output, &st))
        return sdc_err(err, SDC_ERR_ARG, "%s exists ---> sdc init-model writes a new folder; pick another -o",
                       o->output);
    ModelFiles *mf = NULL;
    Backend *be = NULL;
    Unet *u = NULL;
    char tmp[4096], p[8192];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", o->output) >= sizeof tmp)
        return sdc_err(err, SDC_ERR_ARG, "%s: path too long", o->output);
    SDC_TRY(model_files_open_configs(&mf, o->config_dir, err));
    const ModelInfo *info = model_files_info(mf);
    int rc = model_files_set_vae(mf, o->vae, err);
    if (!rc) rc = backend_cpu_create(&be, 0, err);
    fs_rm_tree(tmp);
    if (!rc) rc = fs_mkdir_p(tmp, err);
    // the configs as given; tokenizer, scheduler, model index when present
    static const char *const parts[][2] = {{"unet", "config.json"}, {"vae", "config.json"},
                                           {"text_encoder", "config.json"}};
    for (int i = 0; !rc && i < 3; i++) rc = copy_part(o->config_dir, tmp, parts[i][0], parts[i][1], err);
    if (!rc && info->has_clip2) rc = copy_part(o->config_dir, tmp, "text_encoder_2", "config.json", err);
    if (!rc && info->tokenizer_dir[0]) rc = convert_copy_tokenizer(o->config_dir, "tokenizer", tmp, err);
    if (!rc && info->tokenizer2_dir[0]) rc = convert_copy_tokenizer(o->config_dir, "tokenizer_2", tmp, err);
    if (!rc && !info->tokenizer_dir[0]) { // none given: the shipped CLIP vocab, if the encoder takes it
        if (info->clip.vocab_size != CLIP_TOK_VOCAB)
            rc = sdc_err(err, SDC_ERR_ARG, "%s: no tokenizer/ and the text encoder's vocab_size is %d, not CLIP's "
                         "%d ---> add the tokenizer folder", o->config_dir, info->clip.vocab_size, CLIP_TOK_VOCAB);
        snprintf(p, sizeof p, "%s/tokenizer", tmp);
        if (!rc) rc = fs_mkdir_p(p, err);
        if (!rc) rc = clip_tok_write_hf(p, info->family == SD_FAMILY_2 ? CLIP_TOK_FOLDER_SD2 : CLIP_TOK_FOLDER_SD1,
                                        err);
    }
    if (!rc) rc = copy_part(o->config_dir, tmp, "scheduler", "scheduler_config.json", err);
    if (!rc) rc = copy_part(o->config_dir, tmp, "", "model_index.json", err);
    // the weights
    if (!rc) {
        ModelLoadOpts lo = {.trainable = 1, .init = 1};
        rc = unet_load_opts(&u, mf, be, &lo, err);
    }
    if (!rc) rc = params_init(unet_param_table(u), INIT_TORCH_DEFAULT, NULL, o->seed ^ 0x0E7, err);
    snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", tmp);
    if (!rc) rc = write_table(unet_param_table(u), p, err);
    unet_free(u);
    if (!rc) rc = init_text_encoder(mf, be, 0, tmp, o->seed, err);
    if (!rc && info->has_clip2) rc = init_text_encoder(mf, be, 1, tmp, o->seed, err);
    snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model.safetensors", tmp);
    if (!rc) rc = write_vae(mf, p, err);
    model_files_close(mf);
    mf = NULL;
    // it opens as a model (every name and shape checked by the loaders) before it is renamed
    Vae *v = NULL;
    if (!rc) rc = model_files_open(&mf, tmp, NULL, -1, err);
    if (!rc) rc = unet_load(&u, mf, be, err);
    if (!rc) rc = vae_load(&v, mf, be, err);
    if (rc && v == NULL && strstr(err->msg, "vae")) sdc_err_wrap(err, "the VAE of %s does not fit the config", o->vae);
    vae_free(v);
    unet_free(u);
    model_files_close(mf);
    if (!rc && rename(tmp, o->output))
        rc = sdc_err(err, SDC_ERR_IO, "%s: cannot rename to %s (%s)", tmp, o->output, strerror(errno));
    if (rc) {
        fs_rm_tree(tmp);
        sdc_err_wrap(err, "sdc init-model");
    }
    if (be) backend_destroy(be);
    if (!rc && !o->quiet)
        fprintf(stderr, "sdc: %s: a model initialised from scratch (seed %llu), VAE from %s\n", o->output,
                (unsigned long long)o->seed, o->vae);
    return rc;
}
