// params.c: see params.h.
#include "models/params.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static Tensor param_vget(ParamLoader *pl, int optional, int ndim, const int64_t *shape,
                         const char *fmt, va_list ap) {
    char name[512];
    vsnprintf(name, sizeof name, fmt, ap);
    Tensor none = tensor_make(pl->be->param_dtype, pl->be->device, NULL, ndim, shape);
    if (pl->failed) return none;
    if (optional && !model_files_has(pl->mf, pl->comp, name)) return none;

    Tensor src;
    if (model_files_get(pl->mf, pl->comp, name, ndim, shape, &src, pl->err)) {
        pl->failed = 1;
        return none;
    }
    pl->count++;
    pl->numel += (size_t)tensor_numel(&src);

    // In place: the CPU backend computing in the file's dtype.
    if (pl->be->device == DEV_CPU && src.dtype == pl->be->param_dtype) return src;

    Tensor dst = arena_tensor(pl->arena, pl->be->param_dtype, ndim, shape);
    if (pl->arena->measure) return dst;
    size_t n = (size_t)tensor_numel(&src);
    if (pl->be->device == DEV_CPU) {
        if (dst.dtype == DT_F32) {
            convert_to_f32(dst.data, src.data, src.dtype, n);
        } else {
            float *tmp = malloc(n * sizeof(float)); // once per parameter at load
            SDC_CHECK(tmp);
            convert_to_f32(tmp, src.data, src.dtype, n);
            convert_from_f32(dst.data, dst.dtype, tmp, n);
            free(tmp);
        }
    } else {
        float *tmp = malloc(n * sizeof(float));
        SDC_CHECK(tmp);
        convert_to_f32(tmp, src.data, src.dtype, n);
        backend_upload_f32(pl->be, &dst, tmp, n);
        free(tmp);
    }
    return dst;
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
