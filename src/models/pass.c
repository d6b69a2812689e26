// pass.c: see pass.h.
#include "models/pass.h"

#include "core/error.h"

Tensor *pass_grad(Pass *p, const Tensor *w, Tensor *tmp) {
    if (p->sink) {
        *tmp = arena_tensor(p->sink, w->dtype, w->ndim, w->shape);
        return tmp;
    }
    if (!p->grads || !w->data) return NULL;
    *tmp = *w;
    if (p->grads->measure) return tmp;
    const size_t off = (size_t)((const char *)w->data - p->params->base);
    SDC_CHECK((const char *)w->data >= p->params->base && off + tensor_bytes(w) <= p->params->cap);
    tmp->data = p->grads->base + off;
    return tmp;
}

Tensor pass_lora_grad(Pass *p, const Tensor *t) {
    Tensor g = *t;
    if (p->lora_g->measure) return g;
    const size_t off = (size_t)((const char *)t->data - p->lora_p->base);
    SDC_CHECK((const char *)t->data >= p->lora_p->base && off + tensor_bytes(t) <= p->lora_p->cap);
    g.data = p->lora_g->base + off;
    return g;
}

static Tensor rows(const Tensor *t, int64_t M) {
    return tensor_reshape(*t, 2, (int64_t[]){M, t->shape[t->ndim - 1]});
}

void pass_linear(Pass *p, Tensor *y, const Tensor *x, const Tensor *w, const Tensor *b, const LoraPair *lo,
                 Tensor *hidden) {
    const Backend *be = p->be;
    be->linear(be, y, x, w, b);
    if (!lo) return;
    const int64_t M = tensor_numel(x) / x->shape[x->ndim - 1];
    *hidden = SAVE(p, M, lo->down.shape[0]); // (M, r) down(x)
    Tensor x2 = rows(x, M), y2 = rows(y, M);
    be->linear(be, hidden, &x2, &lo->down, NULL);
    size_t mark = arena_mark(p->work);
    Tensor u = TMP(p, M, lo->up.shape[0]); // (M, out) scale * up(down(x)), as peft: lora_B(lora_A(x)) * scaling
    be->linear(be, &u, hidden, &lo->up, NULL);
    be->scale(be, &u, &u, p->lora_scale);
    be->add(be, &y2, &y2, &u);
    arena_reset(p->work, mark);
}

void pass_linear_backward(Pass *p, Tensor *dx, const Tensor *dy, const Tensor *x, const Tensor *w, const Tensor *b,
                          const LoraPair *lo, const Tensor *hidden) {
    const Backend *be = p->be;
    const int64_t K = x->shape[x->ndim - 1], N = dy->shape[dy->ndim - 1], M = tensor_numel(x) / K;
    Tensor x2 = rows(x, M), dy2 = rows(dy, M), dx2, *pdx = NULL, gw, gb;
    if (dx) {
        dx2 = rows(dx, M);
        pdx = &dx2;
    }
    Tensor *pgw = pass_grad(p, w, &gw), *pgb = b ? pass_grad(p, b, &gb) : NULL;
    if (pdx || pgw || pgb) be->linear_backward(be, pdx, pgw, pgb, &dy2, &x2, w);
    if (!lo) return;
    size_t mark = arena_mark(p->work);
    const int64_t r = lo->down.shape[0];
    Tensor du = TMP(p, M, N); // (M, out) scale * dy
    be->scale(be, &du, &dy2, p->lora_scale);
    Tensor dh = TMP(p, M, r); // (M, r)
    Tensor gup = pass_lora_grad(p, &lo->up), gdown = pass_lora_grad(p, &lo->down);
    be->linear_backward(be, &dh, &gup, NULL, &du, hidden, &lo->up);
    if (pdx) {
        Tensor dxl = TMP(p, M, K);
        be->linear_backward(be, &dxl, &gdown, NULL, &dh, &x2, &lo->down);
        be->add(be, pdx, pdx, &dxl);
    } else {
        be->linear_backward(be, NULL, &gdown, NULL, &dh, &x2, &lo->down);
    }
    arena_reset(p->work, mark);
}
