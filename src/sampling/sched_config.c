// sched_config.c: scheduler_config.json -> SchedConfig (see sched_config.h).
//
// Reads top to bottom: the built-in SD config, the table of fields sdc does
// not implement (which classes read them, what value is harmless), the
// parser, the writer.
#include "sampling/sched_config.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"

#define SCHED_JSON_MAX_BYTES (4u << 20)

static const char *const SPACING_NAMES[3] = {"leading", "trailing", "linspace"};
static const char *const BETA_NAMES[3] = {"linear", "scaled_linear", "squaredcos_cap_v2"};

int sched_spacing_parse(const char *s) {
    for (int i = 0; s && i < 3; i++)
        if (!strcmp(s, SPACING_NAMES[i])) return i;
    return -1;
}

const char *sched_spacing_name(TimestepSpacing s) { return (unsigned)s < 3 ? SPACING_NAMES[s] : "?"; }

void sched_config_sd(SchedConfig *c, PredictionType prediction) {
    memset(c, 0, sizeof *c);
    snprintf(c->class_name, sizeof c->class_name, "PNDMScheduler");
    c->have = SCHED_HAS_TRAIN_STEPS | SCHED_HAS_BETA_START | SCHED_HAS_BETA_END | SCHED_HAS_BETA_SCHEDULE |
              SCHED_HAS_PREDICTION | SCHED_HAS_STEPS_OFFSET | SCHED_HAS_CLIP_SAMPLE |
              SCHED_HAS_ALPHA_TO_ONE;
    c->num_train_timesteps = 1000;
    c->beta_start = 0.00085;
    c->beta_end = 0.012;
    c->beta_schedule = BETAS_SCALED_LINEAR;
    c->prediction = prediction;
    c->spacing = SPACING_LEADING; // not given: each class its own
    c->steps_offset = 1;
    c->clip_sample = 0;
    c->clip_sample_range = 1.0;
    c->set_alpha_to_one = 0;
}

void sched_config_sdxl(SchedConfig *c, PredictionType prediction) {
    sched_config_sd(c, prediction);
    snprintf(c->class_name, sizeof c->class_name, "EulerDiscreteScheduler");
    c->have |= SCHED_HAS_SPACING | SCHED_HAS_KARRAS;
    c->spacing = SPACING_LEADING;
    c->use_karras_sigmas = 0;
}

// ----------------------------------------------------------------------------
// fields sdc does not implement

typedef enum {
    OK_FALSE,      // false or null is harmless
    OK_TRUE,       // true (the default) or null
    OK_NULL,       // only null
    OK_EMPTY,      // [] or null
    OK_STRING,     // one of the strings in ok (separated by '|'), or null
    OK_NEG_INF,    // -Infinity or null
} OkKind;

static const struct {
    const char *field;
    OkKind kind;
    const char *ok;    // OK_STRING: the accepted values
    unsigned classes;  // who reads it
    int karras_only;
} UNSUPPORTED[] = {
    {"thresholding", OK_FALSE, NULL,
     SCHED_CLASS_DDIM | SCHED_CLASS_DDPM | SCHED_CLASS_DPM | SCHED_CLASS_UNIPC, 0},
    {"timestep_type", OK_STRING, "discrete", SCHED_CLASS_EULER, 0},
    {"interpolation_type", OK_STRING, "linear", SCHED_CLASS_EULER, 0},
    {"use_exponential_sigmas", OK_FALSE, NULL,
     SCHED_CLASS_EULER | SCHED_CLASS_HEUN | SCHED_CLASS_LMS | SCHED_CLASS_DPM | SCHED_CLASS_UNIPC, 0},
    {"use_beta_sigmas", OK_FALSE, NULL,
     SCHED_CLASS_EULER | SCHED_CLASS_HEUN | SCHED_CLASS_LMS | SCHED_CLASS_DPM | SCHED_CLASS_UNIPC, 0},
    {"use_lu_lambdas", OK_FALSE, NULL, SCHED_CLASS_DPM, 0},
    {"use_flow_sigmas", OK_FALSE, NULL, SCHED_CLASS_DPM | SCHED_CLASS_UNIPC, 0},
    {"use_dynamic_shifting", OK_FALSE, NULL, SCHED_CLASS_DPM | SCHED_CLASS_UNIPC, 0},
    {"final_sigmas_type", OK_STRING, "zero", SCHED_CLASS_EULER | SCHED_CLASS_DPM | SCHED_CLASS_UNIPC, 0},
    // the Karras conversion of every class takes these from the config when set
    {"sigma_min", OK_NULL, NULL,
     SCHED_CLASS_EULER | SCHED_CLASS_HEUN | SCHED_CLASS_LMS | SCHED_CLASS_DPM | SCHED_CLASS_UNIPC, 1},
    {"sigma_max", OK_NULL, NULL,
     SCHED_CLASS_EULER | SCHED_CLASS_HEUN | SCHED_CLASS_LMS | SCHED_CLASS_DPM | SCHED_CLASS_UNIPC, 1},
    {"variance_type", OK_STRING, "fixed_small", SCHED_CLASS_DDPM, 0},
    {"variance_type", OK_NULL, NULL, SCHED_CLASS_DPM, 0},
    {"lambda_min_clipped", OK_NEG_INF, NULL, SCHED_CLASS_DPM, 0},
    // DPM-Solver maps UniPC's names onto its midpoint solver
    {"solver_type", OK_STRING, "midpoint|logrho|bh1|bh2", SCHED_CLASS_DPM, 0},
    {"lower_order_final", OK_TRUE, NULL, SCHED_CLASS_UNIPC, 0},
    {"disable_corrector", OK_EMPTY, NULL, SCHED_CLASS_UNIPC, 0},
    {"solver_p", OK_NULL, NULL, SCHED_CLASS_UNIPC, 0},
};

static int ok_string(const char *list, const char *s) {
    size_t n = strlen(s);
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, '|');
        size_t k = e ? (size_t)(e - p) : strlen(p);
        if (k == n && !memcmp(p, s, n)) return 1;
        p = e ? e + 1 : NULL;
    }
    return 0;
}

static int harmless(const JsonDoc *d, const JsonNode *v, OkKind kind, const char *ok) {
    if (v->type == JSON_NULL) return 1;
    switch (kind) {
    case OK_FALSE: return v->type == JSON_BOOL && !v->boolean;
    case OK_TRUE: return v->type == JSON_BOOL && v->boolean;
    case OK_NULL: return 0;
    case OK_EMPTY: return v->type == JSON_ARRAY && v->n == 0;
    case OK_STRING: return v->type == JSON_STRING && ok_string(ok, json_str(d, v));
    case OK_NEG_INF: return v->type == JSON_NUMBER && isinf(v->num) && v->num < 0;
    }
    return 0;
}

// The value as the file wrote it, shortened, for messages.
static void value_text(const JsonDoc *d, const JsonNode *v, char *out, size_t cap) {
    switch (v->type) {
    case JSON_NULL: snprintf(out, cap, "null"); break;
    case JSON_BOOL: snprintf(out, cap, "%s", v->boolean ? "true" : "false"); break;
    case JSON_NUMBER: snprintf(out, cap, "%.10g", v->num); break;
    case JSON_STRING: snprintf(out, cap, "\"%.*s\"", (int)cap - 3, json_str(d, v)); break;
    case JSON_ARRAY: snprintf(out, cap, "a list of %d", v->n); break;
    case JSON_OBJECT: snprintf(out, cap, "an object"); break;
    }
}

// ----------------------------------------------------------------------------
// the parser

typedef struct P {
    const JsonDoc *d;
    const JsonNode *root;
    const char *what;
    SdcError *err;
} P;

// The member, or NULL if absent. Present-but-null counts as present (diffusers
// passes None on), except where a caller says otherwise.
static const JsonNode *member(const P *p, const char *key) { return json_get(p->d, p->root, key); }

static int type_err(const P *p, const char *key, const JsonNode *v, const char *want) {
    char got[64];
    value_text(p->d, v, got, sizeof got);
    return sdc_err(p->err, SDC_ERR_FORMAT, "%s: \"%s\" is %s, expected %s\n---> fix scheduler_config.json (as "
                   "diffusers' save_config writes it)", p->what, key, got, want);
}

// A boolean; null is None (false), as Python reads it.
static int get_bool(const P *p, const char *key, unsigned bit, int *out, unsigned *have) {
    const JsonNode *v = member(p, key);
    if (!v) return 0;
    if (v->type != JSON_BOOL && v->type != JSON_NULL) return type_err(p, key, v, "true or false");
    *out = v->type == JSON_BOOL && v->boolean;
    *have |= bit;
    return 0;
}

// A number; null means absent (no class takes None for these).
static int get_num(const P *p, const char *key, unsigned bit, double *out, unsigned *have) {
    const JsonNode *v = member(p, key);
    if (!v || v->type == JSON_NULL) return 0;
    if (v->type != JSON_NUMBER || !isfinite(v->num)) return type_err(p, key, v, "a number");
    *out = v->num;
    *have |= bit;
    return 0;
}

static int get_int(const P *p, const char *key, unsigned bit, int lo, int hi, int *out, unsigned *have) {
    const JsonNode *v = member(p, key);
    if (!v || v->type == JSON_NULL) return 0;
    if (v->type != JSON_NUMBER || !v->is_int) return type_err(p, key, v, "an integer");
    if (v->i < lo || v->i > hi)
        return sdc_err(p->err, SDC_ERR_UNSUPPORTED, "%s: \"%s\" is %lld: sdc supports %d to %d\n---> is this "
                       "the scheduler of an SD 1.x/2.x model?", p->what, key, (long long)v->i, lo, hi);
    *out = (int)v->i;
    *have |= bit;
    return 0;
}

int sched_config_parse(SchedConfig *c, const char *json, size_t len, const char *what, SdcError *err) {
    memset(c, 0, sizeof *c);
    snprintf(c->path, sizeof c->path, "%s", what ? what : "scheduler_config.json");
    c->num_train_timesteps = 1000;
    c->clip_sample_range = 1.0;
    JsonDoc d;
    SDC_TRY(json_parse_config(&d, json, len, c->path, err));
    P p = {&d, json_root(&d), c->path, err};
    int rc = 0;
    if (p.root->type != JSON_OBJECT) {
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: expected a JSON object at the top ---> is this a diffusers "
                     "scheduler_config.json?", c->path);
        goto done;
    }
    const char *cls = json_str(&d, member(&p, "_class_name"));
    if (cls) snprintf(c->class_name, sizeof c->class_name, "%s", cls);
    double range = 1.0;
    if ((rc = get_int(&p, "num_train_timesteps", SCHED_HAS_TRAIN_STEPS, 2, SCHED_MAX_TRAIN_STEPS,
                      &c->num_train_timesteps, &c->have)) ||
        (rc = get_num(&p, "beta_start", SCHED_HAS_BETA_START, &c->beta_start, &c->have)) ||
        (rc = get_num(&p, "beta_end", SCHED_HAS_BETA_END, &c->beta_end, &c->have)) ||
        (rc = get_int(&p, "steps_offset", SCHED_HAS_STEPS_OFFSET, 0, SCHED_MAX_TRAIN_STEPS, &c->steps_offset,
                      &c->have)) ||
        (rc = get_bool(&p, "clip_sample", SCHED_HAS_CLIP_SAMPLE, &c->clip_sample, &c->have)) ||
        (rc = get_num(&p, "clip_sample_range", SCHED_HAS_CLIP_RANGE, &range, &c->have)) ||
        (rc = get_bool(&p, "set_alpha_to_one", SCHED_HAS_ALPHA_TO_ONE, &c->set_alpha_to_one, &c->have)) ||
        (rc = get_bool(&p, "use_karras_sigmas", SCHED_HAS_KARRAS, &c->use_karras_sigmas, &c->have)) ||
        (rc = get_bool(&p, "rescale_betas_zero_snr", SCHED_HAS_ZERO_SNR, &c->rescale_betas_zero_snr, &c->have)))
        goto done;
    c->clip_sample_range = range;

    const JsonNode *v = member(&p, "beta_schedule");
    if (v && v->type != JSON_NULL) {
        const char *s = json_str(&d, v);
        int k = -1;
        for (int i = 0; s && i < 3; i++)
            if (!strcmp(s, BETA_NAMES[i])) k = i;
        if (!s) {
            rc = type_err(&p, "beta_schedule", v, "a string");
            goto done;
        }
        if (k < 0) {
            rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"beta_schedule\" is \"%s\": sdc implements \"linear\", "
                         "\"scaled_linear\" and \"squaredcos_cap_v2\"\n---> is this the scheduler of an SD 1.x/2.x "
                         "model? (theirs is scaled_linear)", c->path, s);
            goto done;
        }
        c->beta_schedule = (BetaSchedule)k;
        c->have |= SCHED_HAS_BETA_SCHEDULE;
    }
    v = member(&p, "timestep_spacing");
    if (v && v->type != JSON_NULL) {
        int k = sched_spacing_parse(json_str(&d, v));
        if (k < 0) {
            rc = type_err(&p, "timestep_spacing", v, "\"leading\", \"trailing\" or \"linspace\"");
            goto done;
        }
        c->spacing = (TimestepSpacing)k;
        c->have |= SCHED_HAS_SPACING;
    }
    v = member(&p, "prediction_type");
    if (v && v->type != JSON_NULL) {
        const char *s = json_str(&d, v);
        if (s && !strcmp(s, "epsilon")) c->prediction = PRED_EPSILON;
        else if (s && !strcmp(s, "v_prediction")) c->prediction = PRED_V;
        else {
            char got[64];
            value_text(&d, v, got, sizeof got);
            rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"prediction_type\" is %s: sdc's SD models predict "
                         "\"epsilon\" or \"v_prediction\"\n---> if the UNet is an SD 1.x/2.x UNet, pass "
                         "--prediction-type epsilon or v_prediction", c->path, got);
            goto done;
        }
        c->have |= SCHED_HAS_PREDICTION;
    }
    v = member(&p, "trained_betas");
    if (v && v->type != JSON_NULL) {
        if (v->type != JSON_ARRAY) {
            rc = type_err(&p, "trained_betas", v, "a list of numbers or null");
            goto done;
        }
        if (v->n != c->num_train_timesteps) {
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: \"trained_betas\" has %d values but \"num_train_timesteps\" "
                         "is %d\n---> give one beta per training step", c->path, v->n, c->num_train_timesteps);
            goto done;
        }
        int i = 0;
        for (const JsonNode *e = json_first(&d, v); e; e = json_next(&d, e), i++) {
            if (e->type != JSON_NUMBER || !isfinite(e->num) || e->num < 0 || e->num >= 1) {
                rc = sdc_err(err, SDC_ERR_FORMAT, "%s: \"trained_betas\"[%d] is not a number in [0, 1)\n---> "
                             "betas are probabilities", c->path, i);
                goto done;
            }
            c->trained_betas[i] = (float)e->num; // torch.tensor(list, dtype=float32)
        }
        c->n_trained = v->n;
        c->have |= SCHED_HAS_TRAINED_BETAS;
    }

    for (size_t k = 0; k < sizeof UNSUPPORTED / sizeof UNSUPPORTED[0]; k++) {
        v = member(&p, UNSUPPORTED[k].field);
        if (!v || harmless(&d, v, UNSUPPORTED[k].kind, UNSUPPORTED[k].ok)) continue;
        if (c->n_unsupported == SCHED_MAX_UNSUPPORTED) break; // the first ones are enough to refuse
        SchedUnsupported *u = &c->unsupported[c->n_unsupported++];
        snprintf(u->field, sizeof u->field, "%s", UNSUPPORTED[k].field);
        value_text(&d, v, u->value, sizeof u->value);
        u->classes = UNSUPPORTED[k].classes;
        u->karras_only = UNSUPPORTED[k].karras_only;
    }
done:
    json_free(&d);
    return rc;
}

int sched_config_read(SchedConfig *c, const char *path, char **text, SdcError *err) {
    if (text) *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return sdc_err(err, SDC_ERR_IO, "%s: cannot open", path);
    char *buf = malloc(SCHED_JSON_MAX_BYTES + 1);
    if (!buf) {
        fclose(f);
        return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, SCHED_JSON_MAX_BYTES + 1, f);
    int bad = ferror(f);
    fclose(f);
    int rc = bad ? sdc_err(err, SDC_ERR_IO, "%s: read error", path)
             : n > SCHED_JSON_MAX_BYTES
                 ? sdc_err(err, SDC_ERR_FORMAT, "%s: larger than %u bytes ---> is this a scheduler_config.json?",
                           path, SCHED_JSON_MAX_BYTES)
                 : sched_config_parse(c, buf, n, path, err);
    if (!rc && text) {
        buf[n] = 0;
        char *t = realloc(buf, n + 1);
        *text = t ? t : buf;
        return 0;
    }
    free(buf);
    return rc;
}

// ----------------------------------------------------------------------------
// the writer

typedef struct Out {
    char *s;
    size_t n, cap;
    int oom;
} Out;

__attribute__((format(printf, 2, 3))) static void put(Out *o, const char *fmt, ...) {
    if (o->oom) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(o->s ? o->s + o->n : NULL, o->s ? o->cap - o->n : 0, fmt, ap);
    va_end(ap);
    if (k < 0) {
        o->oom = 1;
        return;
    }
    if (!o->s || o->n + (size_t)k >= o->cap) {
        size_t cap = (o->cap + (size_t)k + 256) * 2;
        char *s = realloc(o->s, cap);
        if (!s) {
            o->oom = 1;
            return;
        }
        o->s = s;
        o->cap = cap;
        va_start(ap, fmt);
        vsnprintf(o->s + o->n, o->cap - o->n, fmt, ap);
        va_end(ap);
    }
    o->n += (size_t)k;
}

// The shortest %g text that reads back as v (Python's repr of a float).
static const char *num(char *buf, size_t cap, double v) {
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    return buf;
}

char *sched_config_to_json(const SchedConfig *c) {
    Out o = {0};
    char nb[40];
    const unsigned h = c->have;
    put(&o, "{\n  \"_class_name\": \"%s\"", c->class_name[0] ? c->class_name : "PNDMScheduler");
    // in the order diffusers' save_config writes (sorted keys)
    if (h & SCHED_HAS_BETA_END) put(&o, ",\n  \"beta_end\": %s", num(nb, sizeof nb, c->beta_end));
    if (h & SCHED_HAS_BETA_SCHEDULE) put(&o, ",\n  \"beta_schedule\": \"%s\"", BETA_NAMES[c->beta_schedule]);
    if (h & SCHED_HAS_BETA_START) put(&o, ",\n  \"beta_start\": %s", num(nb, sizeof nb, c->beta_start));
    if (h & SCHED_HAS_CLIP_SAMPLE) put(&o, ",\n  \"clip_sample\": %s", c->clip_sample ? "true" : "false");
    if (h & SCHED_HAS_CLIP_RANGE)
        put(&o, ",\n  \"clip_sample_range\": %s", num(nb, sizeof nb, c->clip_sample_range));
    if (h & SCHED_HAS_TRAIN_STEPS) put(&o, ",\n  \"num_train_timesteps\": %d", c->num_train_timesteps);
    if (h & SCHED_HAS_PREDICTION)
        put(&o, ",\n  \"prediction_type\": \"%s\"", c->prediction == PRED_V ? "v_prediction" : "epsilon");
    if (h & SCHED_HAS_ZERO_SNR)
        put(&o, ",\n  \"rescale_betas_zero_snr\": %s", c->rescale_betas_zero_snr ? "true" : "false");
    if (h & SCHED_HAS_ALPHA_TO_ONE) put(&o, ",\n  \"set_alpha_to_one\": %s", c->set_alpha_to_one ? "true" : "false");
    if (!strcmp(c->class_name[0] ? c->class_name : "PNDMScheduler", "PNDMScheduler"))
        put(&o, ",\n  \"skip_prk_steps\": true"); // sdc's PNDM is PLMS
    if (h & SCHED_HAS_STEPS_OFFSET) put(&o, ",\n  \"steps_offset\": %d", c->steps_offset);
    if (h & SCHED_HAS_SPACING) put(&o, ",\n  \"timestep_spacing\": \"%s\"", SPACING_NAMES[c->spacing]);
    if (h & SCHED_HAS_TRAINED_BETAS) {
        put(&o, ",\n  \"trained_betas\": [");
        for (int i = 0; i < c->n_trained; i++) put(&o, "%s%.9g", i ? ", " : "", (double)c->trained_betas[i]);
        put(&o, "]");
    } else {
        put(&o, ",\n  \"trained_betas\": null");
    }
    if (h & SCHED_HAS_KARRAS) put(&o, ",\n  \"use_karras_sigmas\": %s", c->use_karras_sigmas ? "true" : "false");
    put(&o, "\n}\n");
    if (o.oom) {
        free(o.s);
        return NULL;
    }
    return o.s;
}
