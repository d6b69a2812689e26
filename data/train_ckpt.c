// train_ckpt.c: training checkpoints and the output folder's checkpoint-<step>.h5
// files (see train_ckpt.h for the layout and the rules).
#include "data/train_ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/checkpoint.h"
#include "data/h5util.h"

// groups that carry a diffusers `config` attribute (what sdc convert reads)
// (SDXL's text_encoder_2 as well, where the base has it)
static const char *const MODEL_GROUPS[] = {"text_encoder", "unet", "vae", "text_encoder_2"};
// groups ckpt_open lists by itself
static const char *const OPEN_GROUPS[] = {"text_encoder", "unet", "vae", "extra", "text_encoder_2"};
// names a trained component cannot take
static const char *const RESERVED[] = {"optimizer", "state", "job", "extra"};

#define OPT_PREFIX_MAX 32 // "optimizer/exp_avg_sq/" and a margin

static int in_list(const char *s, const char *const *list, int n) {
    for (int i = 0; i < n; i++)
        if (list[i] && !strcmp(s, list[i])) return 1;
    return 0;
}

// ----------------------------------------------------------------------------
// the trainer's tensors, whichever way a component gives them

typedef struct Item {
    const char *name;
    float *data;           // (shape) f32
    int ndim;
    const int64_t *shape;
} Item;

static int comp_n(const TrainCkptComponent *c) { return c->table ? c->table->n : c->n_tensors; }

static Item comp_item(const TrainCkptComponent *c, int i) {
    if (c->table) {
        const ParamEntry *e = &c->table->e[i];
        return (Item){e->name, (float *)e->t.data, e->t.ndim, e->t.shape};
    }
    const TrainCkptTensor *t = &c->tensors[i];
    return (Item){t->name, t->data, t->ndim, t->shape};
}

static int64_t item_numel(const Item *it) {
    int64_t n = 1;
    for (int k = 0; k < it->ndim; k++) n *= it->shape[k];
    return n;
}

static char *shape_str(int ndim, const int64_t *shape, char *buf, size_t cap) {
    Tensor t = {.ndim = ndim};
    for (int k = 0; k < ndim && k < TENSOR_MAX_DIMS; k++) t.shape[k] = shape[k];
    return tensor_shape_str(&t, buf, cap);
}

// Everything a save or a load relies on, checked before the file is touched.
static int check_spec(const char *path, const TrainCkptSpec *s, int saving, SdcError *err) {
    const AdamW *opt = s->opt;
    if (s->n_comps < 0 || (s->n_comps && !s->comps))
        return sdc_err(err, SDC_ERR_ARG, "%s: %d components but no array", path, s->n_comps);
    for (int i = 0; i < s->n_comps; i++) {
        const TrainCkptComponent *c = &s->comps[i];
        if (!c->group || !c->group[0] || c->group[0] == '/' ||
            strlen(c->group) + OPT_PREFIX_MAX >= CKPT_GROUP_MAX || in_list(c->group, RESERVED, 4))
            return sdc_err(err, SDC_ERR_ARG, "%s: component %d: group \"%s\" is empty, too long or reserved "
                           "(optimizer, state, job, extra)", path, i, c->group ? c->group : "(null)");
        for (int j = 0; j < i; j++)
            if (!strcmp(s->comps[j].group, c->group))
                return sdc_err(err, SDC_ERR_ARG, "%s: component %s is given twice", path, c->group);
        if (!c->table == !c->tensors || (c->tensors && c->n_tensors <= 0))
            return sdc_err(err, SDC_ERR_ARG, "%s: component %s: give either a ParamTable or a tensor array",
                           path, c->group);
        if (c->opt_group < -1 || (c->opt_group >= 0 && (!opt || c->opt_group >= opt->n_groups)))
            return sdc_err(err, SDC_ERR_ARG, "%s: component %s: optimizer group %d, but the optimizer has %d",
                           path, c->group, c->opt_group, opt ? opt->n_groups : 0);
        const int n = comp_n(c);
        for (int k = 0; k < n; k++) {
            const Item it = comp_item(c, k);
            if (c->table) {
                const Tensor *t = &c->table->e[k].t;
                if (t->dtype != DT_F32 || t->device != DEV_CPU)
                    return sdc_err(err, SDC_ERR_ARG, "%s: %s/%s is %s on %s; expected an f32 CPU tensor ---> "
                                   "load the component with ModelLoadOpts.trainable", path, c->group, it.name,
                                   dtype_name(t->dtype), t->device == DEV_CPU ? "the CPU" : "a device");
            }
            if (!it.name || !it.name[0] || strlen(it.name) >= CKPT_NAME_MAX || strchr(it.name, '/') || !it.data ||
                it.ndim < 0 || it.ndim > TENSOR_MAX_DIMS)
                return sdc_err(err, SDC_ERR_ARG, "%s: %s tensor %d (%s): bad name, no data or bad ndim %d", path,
                               c->group, k, it.name ? it.name : "(null)", it.ndim);
            for (int d = 0; d < it.ndim; d++)
                if (it.shape[d] < 0)
                    return sdc_err(err, SDC_ERR_ARG, "%s: %s/%s: negative dimension", path, c->group, it.name);
            for (int j = 0; j < k; j++)
                if (!strcmp(comp_item(c, j).name, it.name))
                    return sdc_err(err, SDC_ERR_ARG, "%s: %s/%s is given twice", path, c->group, it.name);
        }
    }
    // every AdamW group is exactly the concatenation of the components naming it
    for (int g = 0; opt && g < opt->n_groups; g++) {
        int64_t numel = 0;
        int claimed = 0;
        for (int i = 0; i < s->n_comps; i++) {
            if (s->comps[i].opt_group != g) continue;
            claimed = 1;
            for (int k = 0; k < comp_n(&s->comps[i]); k++) {
                const Item it = comp_item(&s->comps[i], k);
                numel += item_numel(&it);
            }
        }
        if (!claimed || numel != (int64_t)opt->groups[g].numel || !opt->groups[g].m || !opt->groups[g].v)
            return sdc_err(err, SDC_ERR_ARG, "%s: AdamW group %d holds %zu values, its components %lld%s\n---> "
                           "set TrainCkptComponent.opt_group to the group built from that component's tensors",
                           path, g, opt->groups[g].numel, (long long)numel, claimed ? "" : " (no component names it)");
    }
    for (int i = 0; i < s->n_job; i++)
        if (!s->job[i].key || !s->job[i].key[0] || !s->job[i].value)
            return sdc_err(err, SDC_ERR_ARG, "%s: job key %d is empty", path, i);
    if (saving) {
        if (s->n_frozen > 0 && !s->base)
            return sdc_err(err, SDC_ERR_ARG, "%s: frozen groups asked for but no base checkpoint to copy them from",
                           path);
        for (int i = 0; i < s->n_frozen; i++) {
            if (!s->frozen[i] || !s->frozen[i][0] || strlen(s->frozen[i]) >= CKPT_GROUP_MAX ||
                in_list(s->frozen[i], RESERVED, 3))
                return sdc_err(err, SDC_ERR_ARG, "%s: frozen group %d (%s) is empty, too long or reserved", path, i,
                               s->frozen[i] ? s->frozen[i] : "(null)");
            for (int j = 0; j < s->n_comps; j++)
                if (!strcmp(s->frozen[i], s->comps[j].group))
                    return sdc_err(err, SDC_ERR_ARG, "%s: group %s is both trained and frozen", path,
                                   s->comps[j].group);
        }
    }
    return 0;
}

// ----------------------------------------------------------------------------
// saving

// The frozen groups' tensors, the configs, model_index and scheduler_config
// from the base checkpoint.
static int copy_base(CkptWriter *w, const TrainCkptSpec *s, SdcError *err) {
    Ckpt c;
    if (ckpt_open(&c, s->base, err)) return sdc_err_wrap(err, "base model of %s", w->path);
    int rc = 0;
    for (int i = 0; i < s->n_frozen && !rc; i++)
        if (!in_list(s->frozen[i], OPEN_GROUPS, 5)) rc = ckpt_list_group(&c, s->frozen[i], err);
    void *buf = NULL;
    size_t cap = 0;
    int *copied = calloc((size_t)(s->n_frozen > 0 ? s->n_frozen : 1), sizeof(int));
    if (!copied && !rc) rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", s->base);
    for (int i = 0; i < c.n && !rc; i++) {
        const CkptTensor *ct = &c.t[i];
        int f = 0;
        while (f < s->n_frozen && strcmp(s->frozen[f], ct->group)) f++;
        if (f == s->n_frozen) continue;
        if (ct->nbytes > cap) {
            free(buf);
            cap = ct->nbytes;
            buf = malloc(cap);
            if (!buf) {
                rc = sdc_err(err, SDC_ERR_OOM, "%s: %zu bytes for %s/%s", s->base, cap, ct->group, ct->name);
                break;
            }
        }
        rc = ckpt_read(&c, i, buf, 1, err);
        Tensor t = tensor_make(ct->dtype, DEV_CPU, buf, ct->ndim, ct->shape);
        if (!rc) rc = ckpt_put(w, ct->group, ct->name, &t, err);
        copied[f]++;
    }
    for (int f = 0; f < s->n_frozen && !rc; f++)
        if (copied && !copied[f])
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: no tensors in /%s to copy into %s\n---> is it the model being "
                         "trained? (make it with sdc convert MODEL -o base.h5)", s->base, s->frozen[f], w->path);
    free(copied);
    free(buf);
    int has_te2 = 0;
    for (int i = 0; i < c.n; i++) has_te2 |= !strcmp(c.t[i].group, "text_encoder_2");
    for (int k = 0; k < 3 + has_te2 && !rc; k++) {
        char *v = NULL;
        rc = ckpt_get_attr(&c, MODEL_GROUPS[k], "config", &v, err);
        if (!rc) rc = ckpt_set_attr(w, MODEL_GROUPS[k], "config", v, err);
        free(v);
    }
    static const char *const ROOT[] = {"model_index", "scheduler_config"};
    for (int k = 0; k < 2 && !rc; k++) {
        char *v = NULL;
        rc = ckpt_get_attr(&c, "", ROOT[k], &v, err);
        if (!rc) rc = ckpt_set_attr(w, "", ROOT[k], v, err);
        free(v);
    }
    if (!rc) rc = ckpt_set_attr(w, "", "source", s->base, err);
    static const char *const TOK[] = {"tokenizer", "tokenizer_2"}; // the base's own tokenizer files, when it has them
    for (int k = 0; k < 2 && !rc; k++)
        if (h5_has_link(c.file, TOK[k]) && H5Ocopy(c.file, TOK[k], w->file, TOK[k], H5P_DEFAULT, H5P_DEFAULT) < 0)
            rc = sdc_err(err, SDC_ERR_IO, "%s: cannot copy /%s of %s", w->tmp, TOK[k], s->base);
    ckpt_close(&c);
    if (rc) sdc_err_wrap(err, "copying the base model into %s", w->path);
    return rc;
}

// The group at path g of the writer's file, created if absent.
static hid_t open_or_create(hid_t f, const char *g) {
    if (h5_has_link(f, g)) return H5Gopen2(f, g, H5P_DEFAULT);
    return H5Gcreate2(f, g, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
}

static int put_f32(CkptWriter *w, const char *group, const Item *it, float *data, SdcError *err) {
    Tensor t = tensor_f32(data, it->ndim, it->shape);
    return ckpt_put(w, group, it->name, &t, err);
}

static int write_optimizer(CkptWriter *w, const TrainCkptSpec *s, int attrs, SdcError *err) {
    const AdamW *opt = s->opt;
    size_t *off = calloc((size_t)opt->n_groups + 1, sizeof(size_t)); // running offset in each group's m / v
    if (!off) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", w->path);
    int rc = 0;
    char gm[CKPT_GROUP_MAX], gv[CKPT_GROUP_MAX];
    for (int i = 0; i < s->n_comps && !rc; i++) {
        const TrainCkptComponent *c = &s->comps[i];
        if (c->opt_group < 0) continue;
        const AdamWGroup *g = &opt->groups[c->opt_group];
        snprintf(gm, sizeof gm, "optimizer/exp_avg/%s", c->group);
        snprintf(gv, sizeof gv, "optimizer/exp_avg_sq/%s", c->group);
        for (int k = 0; k < comp_n(c) && !rc; k++) {
            const Item it = comp_item(c, k);
            size_t o = off[c->opt_group];
            rc = put_f32(w, gm, &it, g->m + o, err);
            if (!rc) rc = put_f32(w, gv, &it, g->v + o, err);
            off[c->opt_group] += (size_t)item_numel(&it);
        }
    }
    free(off);
    if (rc || !attrs) return rc;
    hid_t og = -1;
    H5_TRY(og = open_or_create(w->file, "optimizer"), "%s: /optimizer", w->tmp);
    rc = h5_attr_i64(og, "step", opt->step, w->tmp, err);
    if (!rc) rc = h5_attr_f64(og, "beta1", opt->cfg.beta1, w->tmp, err);
    if (!rc) rc = h5_attr_f64(og, "beta2", opt->cfg.beta2, w->tmp, err);
    if (!rc) rc = h5_attr_f64(og, "eps", opt->cfg.eps, w->tmp, err);
    if (!rc) rc = h5_attr_f64(og, "weight_decay", opt->cfg.weight_decay, w->tmp, err);
    H5Gclose(og);
    return rc;
fail:
    return err->code;
}

int train_ckpt_save(const char *path, const TrainCkptSpec *s, const TrainCkptState *st, SdcError *err) {
    SDC_TRY(check_spec(path, s, 1, err));
    if (st->n_rng < 0 || (st->n_rng && !st->rng) || st->n_order < 0 || (st->n_order && !st->data_order) ||
        st->step < 0)
        return sdc_err(err, SDC_ERR_ARG, "%s: bad trainer state (step %lld, %d rng words, %lld order entries)",
                       path, (long long)st->step, st->n_rng, (long long)st->n_order);
    CkptWriter w;
    const int first = s->part == TRAIN_CKPT_WHOLE || s->part == TRAIN_CKPT_FIRST;
    const int last = s->part == TRAIN_CKPT_WHOLE || s->part == TRAIN_CKPT_LAST;
    SDC_TRY(first ? ckpt_begin(&w, path, err) : ckpt_resume(&w, path, err));
    int rc = 0;
    if (s->base && first) rc = copy_base(&w, s, err);
    for (int i = 0; i < s->n_comps && !rc; i++)
        for (int k = 0; k < comp_n(&s->comps[i]) && !rc; k++) {
            const Item it = comp_item(&s->comps[i], k);
            rc = put_f32(&w, s->comps[i].group, &it, it.data, err);
        }
    if (!rc && s->opt) rc = write_optimizer(&w, s, first, err);
    for (int i = 0; i < s->n_job && !rc && first; i++)
        rc = ckpt_set_attr(&w, "job", s->job[i].key, s->job[i].value, err);
    if (!rc && s->manifest && first) rc = ckpt_set_attr(&w, "", "manifest", s->manifest, err);
    if (!rc && !first && !last) return ckpt_pause(&w, err);
    if (!rc && first) { // the trainer's part of /state; ckpt_commit adds rng_state, data_order and step (last)
        hid_t g = open_or_create(w.file, "state");
        if (g < 0) {
            rc = sdc_err(err, SDC_ERR_IO, "%s: cannot create /state", w.tmp);
        } else {
            rc = h5_attr_i64(g, "epoch", st->epoch, w.tmp, err);
            if (!rc) rc = h5_attr_i64(g, "micro_step", st->micro_step, w.tmp, err);
            if (!rc) rc = h5_attr_f64(g, "loss", st->loss, w.tmp, err);
            if (!rc && st->n_rng) rc = h5_attr_u64s(g, "rng_words", st->rng, st->n_rng, w.tmp, err);
            H5Gclose(g);
        }
    }
    if (rc) {
        ckpt_abort(&w);
        return rc;
    }
    if (!last) return ckpt_pause(&w, err);
    CkptState cs = {.step = st->step, .data_order = st->data_order, .n_order = st->n_order};
    for (int k = 0; k < 4 && k < st->n_rng; k++) cs.rng[k] = st->rng[k];
    return ckpt_commit(&w, &cs, err);
}

// ----------------------------------------------------------------------------
// loading

static const char *const OTHER_JOB_HINT =
    "\n---> resume with the job that wrote it, or give this job another output folder (or start it "
    "without --resume-from-checkpoint)";

static int check_job(const Ckpt *c, const TrainCkptSpec *s, SdcError *err) {
    hid_t g = -1;
    if (!h5_has_link(c->file, "state") || (g = H5Gopen2(c->file, "state", H5P_DEFAULT)) < 0)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: no /state", c->path);
    const int train = h5_has_attr(g, "micro_step") && h5_has_attr(g, "epoch");
    H5Gclose(g);
    if (!train)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: a model checkpoint, not a training checkpoint (no trainer state "
                       "in /state)\n---> pass it as the model to train from (-m), not to --resume-from-checkpoint",
                       c->path);
    for (int i = 0; i < s->n_job; i++) {
        const TrainCkptKey *k = &s->job[i];
        char *v = NULL;
        hid_t jg = h5_has_link(c->file, "job") ? H5Gopen2(c->file, "job", H5P_DEFAULT) : -1;
        int has = jg >= 0 && h5_has_attr(jg, k->key);
        if (jg >= 0) H5Gclose(jg);
        if (!has && !k->absent)
            return sdc_err(err, SDC_ERR_ARG, "%s: written by another job: it does not record %s (this job: "
                           "\"%s\")%s", c->path, k->key, k->value, OTHER_JOB_HINT);
        if (has) SDC_TRY(ckpt_get_attr(c, "job", k->key, &v, err));
        const char *got = has ? v : k->absent;
        int same = !strcmp(got, k->value);
        if (!same)
            sdc_err(err, SDC_ERR_ARG, "%s: written by another job: %s is \"%s\" there, \"%s\" in this job%s",
                    c->path, k->key, got, k->value, OTHER_JOB_HINT);
        free(v);
        if (!same) return SDC_ERR_ARG;
    }
    return 0;
}

// Index of group/name in c after checking dtype and shape against it, or -1
// with err set.
static int find_checked(const Ckpt *c, const char *group, const Item *it, SdcError *err) {
    int k = ckpt_find(c, group, it->name);
    char a[96], b[96];
    if (k < 0) {
        sdc_err(err, SDC_ERR_SHAPE, "%s: /%s/%s is missing\n---> was it written by another job (other LoRA "
                "targets, other model)? the trainer has this tensor", c->path, group, it->name);
        return -1;
    }
    const CkptTensor *ct = &c->t[k];
    Tensor want = {.ndim = it->ndim};
    for (int d = 0; d < it->ndim; d++) want.shape[d] = it->shape[d];
    Tensor got = {.ndim = ct->ndim};
    memcpy(got.shape, ct->shape, sizeof got.shape);
    if (ct->dtype != DT_F32 || !tensor_same_shape(&want, &got)) {
        sdc_err(err, SDC_ERR_SHAPE, "%s: /%s/%s is %s %s, the trainer's is f32 %s\n---> was it written by another "
                "job (other LoRA rank, other model)?", c->path, group, it->name, h5_dtype_tag(ct->dtype),
                shape_str(ct->ndim, ct->shape, a, sizeof a), shape_str(it->ndim, it->shape, b, sizeof b));
        return -1;
    }
    return k;
}

// The file has no tensor in group that the component does not have.
static int check_no_extra(const Ckpt *c, const char *group, const TrainCkptComponent *comp, SdcError *err) {
    int in_file = 0;
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->t[i].group, group)) in_file++;
    if (in_file == comp_n(comp)) return 0; // every trainer tensor was found, names are unique: the same set
    for (int i = 0; i < c->n; i++) {
        if (strcmp(c->t[i].group, group)) continue;
        int found = 0;
        for (int k = 0; k < comp_n(comp) && !found; k++) found = !strcmp(comp_item(comp, k).name, c->t[i].name);
        if (!found)
            return sdc_err(err, SDC_ERR_SHAPE, "%s: /%s/%s is not a tensor of this trainer (%d in the file, %d "
                           "here)\n---> was it written by another job (other LoRA targets)?", c->path, group,
                           c->t[i].name, in_file, comp_n(comp));
    }
    return 0;
}

// Every tensor of every component (and its moments) located and checked.
// idx: (3 * total items): tensor, exp_avg, exp_avg_sq index in c (-1: none).
static int locate_all(Ckpt *c, const TrainCkptSpec *s, int *idx, SdcError *err) {
    char gm[CKPT_GROUP_MAX], gv[CKPT_GROUP_MAX];
    int j = 0;
    for (int i = 0; i < s->n_comps; i++) {
        const TrainCkptComponent *cp = &s->comps[i];
        const int opt = s->opt && cp->opt_group >= 0;
        snprintf(gm, sizeof gm, "optimizer/exp_avg/%s", cp->group);
        snprintf(gv, sizeof gv, "optimizer/exp_avg_sq/%s", cp->group);
        if (!in_list(cp->group, OPEN_GROUPS, 5)) SDC_TRY(ckpt_list_group(c, cp->group, err));
        if (opt) {
            SDC_TRY(ckpt_list_group(c, gm, err));
            SDC_TRY(ckpt_list_group(c, gv, err));
        }
        for (int k = 0; k < comp_n(cp); k++, j++) {
            const Item it = comp_item(cp, k);
            idx[3 * j] = find_checked(c, cp->group, &it, err);
            idx[3 * j + 1] = idx[3 * j + 2] = -1;
            if (idx[3 * j] < 0) return err->code;
            if (!opt) continue;
            if ((idx[3 * j + 1] = find_checked(c, gm, &it, err)) < 0 ||
                (idx[3 * j + 2] = find_checked(c, gv, &it, err)) < 0)
                return sdc_err_wrap(err, "optimizer state");
        }
        if (s->partial) continue; // other stages' tensors are in the file too
        SDC_TRY(check_no_extra(c, cp->group, cp, err));
        if (opt) {
            SDC_TRY(check_no_extra(c, gm, cp, err));
            SDC_TRY(check_no_extra(c, gv, cp, err));
        }
    }
    return 0;
}

static int read_state(const Ckpt *c, TrainCkptState *st, SdcError *err) {
    hid_t g = -1, a = -1, sp = -1;
    int rc = 0;
    char where[1100];
    snprintf(where, sizeof where, "%s: /state", c->path);
    H5_TRY(g = H5Gopen2(c->file, "state", H5P_DEFAULT), "%s", where);
    rc = h5_attr_get_i64(g, "epoch", &st->epoch, where, err);
    if (!rc) rc = h5_attr_get_i64(g, "micro_step", &st->micro_step, where, err);
    if (!rc) rc = h5_attr_get_f64(g, "loss", &st->loss, where, err);
    if (!rc) {
        hssize_t n = 0;
        if (h5_has_attr(g, "rng_words")) {
            H5_TRY(a = H5Aopen(g, "rng_words", H5P_DEFAULT), "%s: rng_words", where);
            H5_TRY(sp = H5Aget_space(a), "%s: rng_words", where);
            n = H5Sget_simple_extent_npoints(sp);
        }
        if (n != st->n_rng)
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: rng_words holds %lld words, the trainer's generator %d\n---> "
                         "was it written by another version of the trainer?", where, (long long)n, st->n_rng);
        else if (n)
            rc = h5_attr_get_u64s(g, "rng_words", st->rng, st->n_rng, where, err);
    }
    if (!rc && c->n_order != st->n_order)
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: data_order has %lld entries, this job's dataset %lld\n---> was it "
                     "written for another dataset?", where, (long long)c->n_order, (long long)st->n_order);
    if (!rc && st->n_order) memcpy(st->data_order, c->data_order, (size_t)st->n_order * sizeof(int64_t));
    if (!rc) st->step = c->step;
    if (sp >= 0) H5Sclose(sp);
    if (a >= 0) H5Aclose(a);
    H5Gclose(g);
    return rc;
fail:
    if (sp >= 0) H5Sclose(sp);
    if (a >= 0) H5Aclose(a);
    if (g >= 0) H5Gclose(g);
    return err->code;
}

int train_ckpt_load(const char *path, const TrainCkptSpec *s, TrainCkptState *st, SdcError *err) {
    SDC_TRY(check_spec(path, s, 0, err));
    if (st->n_rng < 0 || (st->n_rng && !st->rng) || st->n_order < 0 || (st->n_order && !st->data_order))
        return sdc_err(err, SDC_ERR_ARG, "%s: bad trainer state buffers", path);
    Ckpt c;
    SDC_TRY(ckpt_open(&c, path, err));
    int total = 0;
    for (int i = 0; i < s->n_comps; i++) total += comp_n(&s->comps[i]);
    int *idx = malloc((size_t)(3 * total + 1) * sizeof(int));
    int rc = idx ? check_job(&c, s, err) : sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
    if (!rc) rc = locate_all(&c, s, idx, err);
    int64_t opt_step = 0;
    if (!rc && s->opt) { // the optimizer's step, before any buffer is touched
        hid_t og = h5_has_link(c.file, "optimizer") ? H5Gopen2(c.file, "optimizer", H5P_DEFAULT) : -1;
        if (og < 0 || !h5_has_attr(og, "step"))
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: no optimizer state (/optimizer has no step)\n---> it was saved "
                         "without the optimizer; resume needs it", path);
        else
            rc = h5_attr_get_i64(og, "step", &opt_step, path, err);
        if (og >= 0) H5Gclose(og);
    }
    if (!rc) rc = read_state(&c, st, err);
    // everything is checked: read (and CRC-check) into the trainer's buffers
    size_t *off = s->opt ? calloc((size_t)s->opt->n_groups + 1, sizeof(size_t)) : NULL;
    if (!rc && s->opt && !off) rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
    int j = 0;
    for (int i = 0; i < s->n_comps && !rc; i++) {
        const TrainCkptComponent *cp = &s->comps[i];
        const AdamWGroup *g = s->opt && cp->opt_group >= 0 ? &s->opt->groups[cp->opt_group] : NULL;
        for (int k = 0; k < comp_n(cp) && !rc; k++, j++) {
            const Item it = comp_item(cp, k);
            rc = ckpt_read(&c, idx[3 * j], it.data, 1, err);
            if (!rc && g) {
                size_t o = off[cp->opt_group];
                rc = ckpt_read(&c, idx[3 * j + 1], g->m + o, 1, err);
                if (!rc) rc = ckpt_read(&c, idx[3 * j + 2], g->v + o, 1, err);
                off[cp->opt_group] += (size_t)item_numel(&it);
            }
        }
    }
    if (!rc && s->opt) s->opt->step = opt_step;
    free(off);
    free(idx);
    ckpt_close(&c);
    return rc;
}

// ----------------------------------------------------------------------------
// the output folder

// "checkpoint-<digits>.h5" (*tmp = 0) or "checkpoint-<digits>.h5.tmp" (*tmp = 1).
static int parse_name(const char *name, int64_t *step, int *tmp) {
    if (strncmp(name, "checkpoint-", 11)) return 0;
    const char *p = name + 11, *q = p;
    int64_t v = 0;
    while (*q >= '0' && *q <= '9') {
        if (q - p >= 18) return 0; // beyond any step count
        v = v * 10 + (*q++ - '0');
    }
    if (q == p) return 0;
    if (!strcmp(q, ".h5")) *tmp = 0;
    else if (!strcmp(q, ".h5.tmp")) *tmp = 1;
    else return 0;
    *step = v;
    return 1;
}

int train_ckpt_path(const char *output_dir, int64_t step, char *path, size_t cap, SdcError *err) {
    int k = snprintf(path, cap, "%s/checkpoint-%lld.h5", output_dir, (long long)step);
    if (k < 0 || (size_t)k >= cap) return sdc_err(err, SDC_ERR_ARG, "%s: output folder path too long", output_dir);
    return 0;
}

// The steps of the complete checkpoints in dir, sorted ascending (*steps
// malloc'd); the stale .tmp names in *tmps when tmps is not NULL.
static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int scan_dir(const char *dir, int64_t **steps, int *n, char ***tmps, int *n_tmp, SdcError *err) {
    *steps = NULL, *n = 0;
    if (tmps) *tmps = NULL, *n_tmp = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return 0;
        return sdc_err(err, SDC_ERR_IO, "%s: cannot list the output folder: %s", dir, strerror(errno));
    }
    int cap = 0, cap_t = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t s;
        int tmp;
        if (!parse_name(e->d_name, &s, &tmp)) continue;
        int oom = 0;
        if (!tmp) {
            if (*n == cap) {
                int64_t *ns = realloc(*steps, (size_t)(cap ? 2 * cap : 16) * sizeof **steps);
                if (ns) *steps = ns, cap = cap ? 2 * cap : 16;
                oom = !ns;
            }
            if (!oom) (*steps)[(*n)++] = s;
        } else if (tmps) {
            if (*n_tmp == cap_t) {
                char **nt = realloc(*tmps, (size_t)(cap_t ? 2 * cap_t : 4) * sizeof **tmps);
                if (nt) *tmps = nt, cap_t = cap_t ? 2 * cap_t : 4;
                oom = !nt;
            }
            if (!oom && !((*tmps)[*n_tmp] = strdup(e->d_name))) oom = 1;
            if (!oom) (*n_tmp)++;
        }
        if (oom) {
            closedir(d);
            free(*steps), *steps = NULL, *n = 0;
            if (tmps) {
                for (int i = 0; i < *n_tmp; i++) free((*tmps)[i]);
                free(*tmps), *tmps = NULL, *n_tmp = 0;
            }
            return sdc_err(err, SDC_ERR_OOM, "%s: out of memory listing the checkpoints", dir);
        }
    }
    closedir(d);
    if (*n) qsort(*steps, (size_t)*n, sizeof **steps, cmp_i64);
    return 0;
}

int train_ckpt_latest(const char *output_dir, char *path, size_t cap, int64_t *step, SdcError *err) {
    int64_t *steps;
    int n;
    if (cap) path[0] = '\0';
    if (step) *step = -1;
    SDC_TRY(scan_dir(output_dir, &steps, &n, NULL, NULL, err));
    int rc = 0;
    if (n) {
        rc = train_ckpt_path(output_dir, steps[n - 1], path, cap, err);
        if (!rc && step) *step = steps[n - 1];
    }
    free(steps);
    return rc;
}

int train_ckpt_rotate(const char *output_dir, int total_limit, int *removed, SdcError *err) {
    int64_t *steps;
    char **tmps;
    int n, n_tmp, rc = 0, gone = 0;
    char p[4096];
    if (removed) *removed = 0;
    SDC_TRY(scan_dir(output_dir, &steps, &n, &tmps, &n_tmp, err));
    for (int i = 0; i < n_tmp; i++) {
        snprintf(p, sizeof p, "%s/%s", output_dir, tmps[i]);
        if (!rc && unlink(p) && errno != ENOENT)
            rc = sdc_err(err, SDC_ERR_IO, "%s: cannot delete the stale file: %s", p, strerror(errno));
        else if (!rc)
            gone++;
        free(tmps[i]);
    }
    free(tmps);
    const int keep = total_limit - 1 > 1 ? total_limit - 1 : 1; // the newest always stays
    for (int i = 0; total_limit > 0 && i < n - keep && !rc; i++) {
        if ((rc = train_ckpt_path(output_dir, steps[i], p, sizeof p, err))) break;
        if (unlink(p) && errno != ENOENT)
            rc = sdc_err(err, SDC_ERR_IO, "%s: cannot delete (checkpoints_total_limit %d): %s", p, total_limit,
                         strerror(errno));
        else
            gone++;
    }
    free(steps);
    if (removed) *removed = gone;
    return rc;
}

// ----------------------------------------------------------------------------
// a LoRA training checkpoint as a LoRA file

int train_ckpt_export_lora(const char *ckpt_path, const char *out_path, LoraFormat format, SdcError *err) {
    Ckpt c;
    SDC_TRY(ckpt_open(&c, ckpt_path, err));
    enum { NG = 3 };
    static const char *const groups[NG] = {"unet_lora", "text_encoder_lora", "text_encoder_2_lora"};
    static const Component comps[NG] = {COMP_UNET, COMP_TEXT_ENCODER, COMP_TEXT_ENCODER_2};
    int rc = 0;
    for (int g = 0; g < NG && !rc; g++) rc = ckpt_list_group(&c, groups[g], err);
    ParamTable tb[NG] = {{0}};
    float *data = NULL;
    size_t total = 0;
    for (int i = 0; !rc && i < c.n; i++)
        for (int g = 0; g < NG; g++) total += !strcmp(c.t[i].group, groups[g]) ? c.t[i].nbytes : 0;
    if (!rc && total == 0)
        rc = sdc_err(err, SDC_ERR_ARG, "%s: no LoRA tensors (/unet_lora, /text_encoder_lora)\n---> a checkpoint of a "
                     "--lora-rank run is needed here", ckpt_path);
    char *alpha_s = NULL;
    float alpha = 0;
    if (!rc) rc = ckpt_get_attr(&c, "job", "lora_alpha", &alpha_s, err);
    if (!rc && !(sscanf(alpha_s, "%f", &alpha) == 1 && alpha > 0))
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: /job lora_alpha \"%s\" is not a positive number", ckpt_path, alpha_s);
    free(alpha_s);
    if (!rc && !(data = malloc(total))) rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", ckpt_path);
    size_t off = 0;
    for (int i = 0; !rc && i < c.n; i++) {
        const CkptTensor *t = &c.t[i];
        int g = NG - 1;
        while (g >= 0 && strcmp(t->group, groups[g])) g--;
        if (g < 0) continue;
        if (t->dtype != DT_F32) {
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: /%s/%s is not f32", ckpt_path, t->group, t->name);
            break;
        }
        rc = ckpt_read(&c, i, (char *)data + off, 1, err);
        if (rc) break;
        ParamTable *p = &tb[g];
        if (p->n == p->cap) {
            p->cap = p->cap ? 2 * p->cap : 64;
            ParamEntry *e = realloc(p->e, (size_t)p->cap * sizeof *e);
            if (!e) {
                rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", ckpt_path);
                break;
            }
            p->e = e;
        }
        ParamEntry *e = &p->e[p->n++];
        snprintf(e->name, sizeof e->name, "%.127s", t->name);
        e->t = tensor_make(DT_F32, DEV_CPU, (char *)data + off, t->ndim, t->shape);
        off += t->nbytes;
    }
    LoraTensor *lt[NG] = {NULL}, *all = NULL;
    int n[NG] = {0}, sum = 0;
    for (int g = 0; g < NG && !rc; g++)
        if (tb[g].n) rc = lora_tensors_from_table(&tb[g], comps[g], alpha, &lt[g], &n[g], err);
    for (int g = 0; g < NG; g++) sum += n[g];
    if (!rc && !(all = malloc((size_t)(sum + 1) * sizeof *all))) rc = sdc_err(err, SDC_ERR_OOM, "out of memory");
    if (!rc) {
        for (int g = 0, k = 0; g < NG; k += n[g], g++)
            if (n[g]) memcpy(all + k, lt[g], (size_t)n[g] * sizeof *all);
        rc = lora_save(out_path, format, all, sum, err);
    }
    free(all);
    for (int g = 0; g < NG; g++) free(lt[g]), param_table_free(&tb[g]);
    free(data);
    ckpt_close(&c);
    return rc;
}

int train_ckpt_group_count(const char *path, const char *group, int *n, SdcError *err) {
    Ckpt c;
    SDC_TRY(ckpt_open(&c, path, err));
    int rc = in_list(group, OPEN_GROUPS, 5) ? 0 : ckpt_list_group(&c, group, err);
    *n = 0;
    for (int i = 0; !rc && i < c.n; i++) *n += !strcmp(c.t[i].group, group);
    ckpt_close(&c);
    return rc;
}
