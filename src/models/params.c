// params.c: see params.h.
#include "models/params.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/lora.h"

void param_table_free(ParamTable *t) {
    free(t->e);
    memset(t, 0, sizeof *t);
}

int param_table_find(const ParamTable *t, const char *name) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->e[i].name, name)) return i;
    return -1;
}

static int table_add(ParamLoader *pl, const char *name, const Tensor *t) {
    ParamTable *tb = pl->table;
    if (tb->n == tb->cap) {
        int cap = tb->cap ? 2 * tb->cap : 256;
        ParamEntry *e = realloc(tb->e, (size_t)cap * sizeof *e);
        if (!e) return sdc_err(pl->err, SDC_ERR_OOM, "%s: out of memory for the parameter table", name);
        tb->e = e;
        tb->cap = cap;
    }
    ParamEntry *e = &tb->e[tb->n++];
    snprintf(e->name, sizeof e->name, "%.127s", name);
    e->t = *t;
    return 0;
}

static Tensor param_vget(ParamLoader *pl, int optional, int ndim, const int64_t *shape,
                         const char *fmt, va_list ap) {
    char name[512];
    vsnprintf(name, sizeof name, fmt, ap);
    Tensor none = tensor_make(pl->be->param_dtype, pl->be->device, NULL, ndim, shape);
    if (pl->failed) return none;
    if (!pl->mf) { // a fresh model (vae_create, ModelLoadOpts.init): every parameter new and zero (the
                   // arena is zeroed), named in the table for the caller to set (models/init.h)
        if (pl->check_only) return none;
        pl->count++;
        pl->numel += (size_t)tensor_numel(&none);
        Tensor dst = arena_tensor(pl->arena, pl->be->param_dtype, ndim, shape);
        if (!pl->arena->measure && pl->table && table_add(pl, name, &dst)) pl->failed = 1;
        return pl->failed ? none : dst;
    }
    if (optional && !model_files_has(pl->mf, pl->comp, name)) return none;

    Tensor src;
    if (model_files_get(pl->mf, pl->comp, name, ndim, shape, &src, pl->err)) {
        pl->failed = 1;
        return none;
    }
    if (pl->check_only) return none;
    pl->count++;
    pl->numel += (size_t)tensor_numel(&src);
    const int lora = pl->lora && lora_set_targets(pl->lora, pl->comp, name);
    if (lora && lora_merge(pl->lora, pl->comp, name, src.ndim, src.shape, NULL, pl->err)) { // shapes only
        pl->failed = 1;
        return none;
    }

    const int transposed = model_files_transposed(pl->mf, pl->comp, name); // (rows, cols) stored (cols, rows)
    // In place: the CPU backend computing in the file's dtype.
    if (!pl->own && !lora && !transposed && pl->be->device == DEV_CPU && src.dtype == pl->be->param_dtype) return src;

    Tensor dst = arena_tensor(pl->arena, pl->be->param_dtype, ndim, shape);
    if (pl->arena->measure) return dst;
    if (pl->table && table_add(pl, name, &dst)) {
        pl->failed = 1;
        return none;
    }
    size_t n = (size_t)tensor_numel(&src);
    // f32 first (straight into dst on a CPU F32 backend), then the LoRA updates, then dst's dtype
    const int direct = pl->be->device == DEV_CPU && dst.dtype == DT_F32;
    float *f32 = direct ? dst.data : malloc(n * sizeof(float)); // once per parameter at load
    if (!f32) {
        sdc_err(pl->err, SDC_ERR_OOM, "%s: out of memory converting it (%.1f MiB) ---> free memory on this "
                "machine", name, (double)n * sizeof(float) / (1 << 20));
        pl->failed = 1;
        return none;
    }
    convert_to_f32(f32, src.data, src.dtype, n);
    if (pl->mf) model_files_drop_pages(pl->mf, src.data, n * dtype_size(src.dtype)); // copied: the file's pages go
    if (transposed) {
        const int64_t R = src.shape[0], C = src.shape[1];
        float *t = malloc(n * sizeof(float));
        if (!t) {
            sdc_err(pl->err, SDC_ERR_OOM, "%s: out of memory transposing it (%.1f MiB)", name,
                    (double)n * sizeof(float) / (1 << 20));
            if (!direct) free(f32);
            pl->failed = 1;
            return none;
        }
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < C; j++) t[i * C + j] = f32[j * R + i];
        memcpy(f32, t, n * sizeof(float));
        free(t);
    }
    if (lora && lora_merge(pl->lora, pl->comp, name, src.ndim, src.shape, f32, pl->err)) pl->failed = 1;
    if (!direct) {
        if (pl->be->device == DEV_CPU) convert_from_f32(dst.data, dst.dtype, f32, n);
        else backend_upload_f32(pl->be, &dst, f32, n);
        free(f32);
        if (!pl->failed && backend_status(pl->be, pl->err)) pl->failed = 1; // the upload
    }
    return pl->failed ? none : dst;
}

Tensor param_get(ParamLoader *pl, int ndim, const int64_t *shape, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    Tensor t = param_vget(pl, 0, ndim, shape, fmt, ap);
    va_end(ap);
    return t;
}

Tensor param_get_opt(ParamLoader *pl, int ndim, const int64_t *shape, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    Tensor t = param_vget(pl, 1, ndim, shape, fmt, ap);
    va_end(ap);
    return t;
}
