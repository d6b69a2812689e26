// safetensors.c: the validating safetensors reader and the writer (see
// safetensors.h). Everything in the header is checked before any tensor is
// handed out, so a view returned by st_tensor always lies inside the file.
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/json.h"

#define ST_MAX_HEADER (100u * 1000u * 1000u) // as the reference implementation: 100 MB

// ----------------------------------------------------------------------------
// dtypes: every dtype of the safetensors spec; sdc loads the first six.

typedef struct StDtype {
    const char *name;
    size_t size;
    int dt; // a DType, or -1 for validated-but-not-loaded
} StDtype;

static const StDtype ST_DTYPES[] = {
    {"F32", 4, DT_F32},  {"F16", 2, DT_F16},  {"BF16", 2, DT_BF16}, {"U8", 1, DT_U8},
    {"I32", 4, DT_I32},  {"I64", 8, DT_I64},  {"F64", 8, -1},       {"I8", 1, -1},
    {"I16", 2, -1},      {"U16", 2, -1},      {"U32", 4, -1},       {"U64", 8, -1},
    {"BOOL", 1, -1},     {"F8_E4M3", 1, -1},  {"F8_E5M2", 1, -1},   {"F8_E8M0", 1, -1},
};

static const StDtype *st_dtype_find(const char *name) {
    for (size_t i = 0; i < sizeof ST_DTYPES / sizeof ST_DTYPES[0]; i++)
        if (!strcmp(ST_DTYPES[i].name, name)) return &ST_DTYPES[i];
    return NULL;
}

// ----------------------------------------------------------------------------
// reader

static int cmp_entry_name(const void *a, const void *b) {
    return strcmp(((const StEntry *)a)->name, ((const StEntry *)b)->name);
}

static int cmp_entry_offset(const void *a, const void *b) {
    const StEntry *x = *(const StEntry *const *)a, *y = *(const StEntry *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

// A non-negative JSON integer; 0 if node is anything else.
static int json_uint(const JsonNode *v, uint64_t *out) {
    if (!v || v->type != JSON_NUMBER || !v->is_int || v->i < 0) return 0;
    *out = (uint64_t)v->i;
    return 1;
}

#define HINT_BROKEN "---> the file is damaged or not a safetensors file; re-download or re-convert it"

static int parse_entry(StFile *f, const JsonDoc *doc, const JsonNode *m, StEntry *e, size_t data_size,
                       SdcError *err) {
    const char *name = json_key(doc, m);
    if ((size_t)m->key_len != strlen(name) || m->key_len == 0)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: header has a tensor name that is empty or contains a NUL byte\n%s",
                       f->path, HINT_BROKEN);
    if (m->type != JSON_OBJECT)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: header entry \"%s\" is %s, expected an object with "
                       "dtype, shape and data_offsets\n%s", f->path, name, json_type_name(m->type), HINT_BROKEN);
    const JsonNode *jd = json_get(doc, m, "dtype"), *js = json_get(doc, m, "shape"),
                   *jo = json_get(doc, m, "data_offsets");
    if (!jd || !js || !jo)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: tensor \"%s\": header entry lacks \"%s\"\n%s", f->path, name,
                       !jd ? "dtype" : !js ? "shape" : "data_offsets", HINT_BROKEN);
    const char *ds = json_str(doc, jd);
    const StDtype *sd = ds ? st_dtype_find(ds) : NULL;
    if (!sd)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: tensor \"%s\": unknown dtype %s%s%s (known: F32 F16 BF16 "
                       "U8 I32 I64 F64 I8 I16 U16 U32 U64 BOOL F8_E4M3 F8_E5M2 F8_E8M0)\n%s", f->path, name,
                       ds ? "\"" : "", ds ? ds : json_type_name(jd->type), ds ? "\"" : "", HINT_BROKEN);
    e->name = strdup(name);
    if (!e->name) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", f->path);
    snprintf(e->dtype_str, sizeof e->dtype_str, "%s", sd->name);
    e->dtype = sd->dt >= 0 ? (DType)sd->dt : DT_U8;
    e->supported = sd->dt >= 0;

    if (js->type != JSON_ARRAY)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: tensor \"%s\": shape is %s, expected an array of sizes\n%s",
                       f->path, name, json_type_name(js->type), HINT_BROKEN);
    // numel with overflow checks: the product must fit the data region anyway.
    uint64_t numel = 1;
    int k = 0;
    for (const JsonNode *d = json_first(doc, js); d; d = json_next(doc, d), k++) {
        uint64_t v;
        if (!json_uint(d, &v))
            return sdc_err(err, SDC_ERR_FORMAT, "%s: tensor \"%s\": shape[%d] is not a non-negative integer\n%s",
                           f->path, name, k, HINT_BROKEN);
        if (k < TENSOR_MAX_DIMS) e->shape[k] = (int64_t)v;
        if (v && numel > UINT64_MAX / v)
            return sdc_err(err, SDC_ERR_FORMAT, "%s: tensor \"%s\": shape overflows 64 bits\n%s", f->path, name,
                           HINT_BROKEN);
        numel *= v;
    }
    e->ndim = k;
    if (k > TENSOR_MAX_DIMS) e->supported = 0;

    uint64_t b, en;
    if (jo->type != JSON_ARRAY || jo->n != 2 || !json_uint(json_at(doc, jo, 0), &b) ||
        !json_uint(json_at(doc, jo, 1), &en))
        return sdc_err(err, SDC_ERR_FORMAT, "%s: tensor \"%s\": data_offsets must be [begin, end], two "
                       "non-negative integers\n%s", f->path, name, HINT_BROKEN);
    if (b > en || en > data_size)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: tensor \"%s\": data_offsets [%llu, %llu] lie outside the "
                       "data region of %zu bytes\n%s", f->path, name, (unsigned long long)b,
                       (unsigned long long)en, data_size, en > data_size ? "---> the file is truncated "
                       "(incomplete download or copy?)" : HINT_BROKEN);
    if (numel > UINT64_MAX / sd->size || numel * sd->size != en - b)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: tensor \"%s\": %s with %llu elements needs %llu bytes but "
                       "data_offsets [%llu, %llu] hold %llu\n%s", f->path, name, sd->name,
                       (unsigned long long)numel, (unsigned long long)(numel * sd->size), (unsigned long long)b,
                       (unsigned long long)en, (unsigned long long)(en - b), HINT_BROKEN);
    e->offset = (size_t)b;
    e->nbytes = (size_t)(en - b);
    return 0;
}

static int parse_metadata(StFile *f, const JsonDoc *doc, const JsonNode *m, SdcError *err) {
    if (m->type != JSON_OBJECT)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: __metadata__ is %s, expected an object of strings\n%s", f->path,
                       json_type_name(m->type), HINT_BROKEN);
    f->meta_keys = calloc((size_t)m->n + 1, sizeof(char *));
    f->meta_vals = calloc((size_t)m->n + 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_vals) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", f->path);
    for (const JsonNode *c = json_first(doc, m); c; c = json_next(doc, c)) {
        if (c->type != JSON_STRING)
            return sdc_err(err, SDC_ERR_FORMAT, "%s: __metadata__[\"%s\"] is %s, expected a string\n%s", f->path,
                           json_key(doc, c), json_type_name(c->type), HINT_BROKEN);
        f->meta_keys[f->n_meta] = strdup(json_key(doc, c));
        f->meta_vals[f->n_meta] = strdup(json_str(doc, c));
        if (!f->meta_keys[f->n_meta] || !f->meta_vals[f->n_meta])
            return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", f->path);
        f->n_meta++;
    }
    return 0;
}

// The entries must cover [0, data_size) exactly: no gap, no overlap.
static int check_tiling(StFile *f, size_t data_size, SdcError *err) {
    StEntry **by_off = malloc((size_t)(f->n ? f->n : 1) * sizeof *by_off);
    if (!by_off) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", f->path);
    for (int i = 0; i < f->n; i++) by_off[i] = &f->entries[i];
    qsort(by_off, (size_t)f->n, sizeof *by_off, cmp_entry_offset);
    size_t pos = 0;
    int rc = 0;
    for (int i = 0; i < f->n && !rc; i++) {
        const StEntry *e = by_off[i];
        if (e->offset > pos)
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: bytes [%zu, %zu) of the data region belong to no tensor "
                         "(gap before \"%s\")\n%s", f->path, pos, e->offset, e->name, HINT_BROKEN);
        else if (e->offset < pos)
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: tensor \"%s\" at [%zu, %zu) overlaps the tensor before it, "
                         "which ends at %zu\n%s", f->path, e->name, e->offset, e->offset + e->nbytes, pos,
                         HINT_BROKEN);
        else pos = e->offset + e->nbytes;
    }
    if (!rc && pos != data_size)
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: the tensors end at byte %zu of the data region but it has %zu bytes "
                     "(trailing bytes belong to no tensor)\n%s", f->path, pos, data_size, HINT_BROKEN);
    free(by_off);
    return rc;
}

static int st_parse_impl(StFile *f, const uint8_t *buf, size_t size, SdcError *err) {
    if (size == 0)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: empty file, expected a safetensors file\n"
                       "---> the download or copy probably failed", f->path);
    if (size < 8)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: file of %zu bytes is too short for a safetensors header "
                       "(8-byte length, then JSON)\n%s", f->path, size, HINT_BROKEN);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | buf[i];
    if (hlen > ST_MAX_HEADER)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: header length %llu is over the %u-byte limit\n"
                       "---> is this a safetensors file? (a .ckpt/.pt pickle must be converted first)",
                       f->path, (unsigned long long)hlen, ST_MAX_HEADER);
    if (hlen > size - 8)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: header length %llu is larger than the %zu bytes after it\n"
                       "---> the file is truncated or not a safetensors file", f->path,
                       (unsigned long long)hlen, size - 8);
    if (hlen < 2 || buf[8] != '{')
        return sdc_err(err, SDC_ERR_FORMAT, "%s: header does not start with '{'\n"
                       "---> is this a safetensors file? (a .ckpt/.pt pickle must be converted first)", f->path);
    size_t data_size = size - 8 - (size_t)hlen;
    f->data = buf + 8 + hlen;

    char what[1100];
    snprintf(what, sizeof what, "%s: safetensors header", f->path);
    JsonDoc doc;
    SDC_TRY(json_parse(&doc, (const char *)buf + 8, (size_t)hlen, what, err));
    const JsonNode *root = json_root(&doc);
    int rc = 0;
    if (root->type != JSON_OBJECT) {
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: header is %s, expected a JSON object\n%s", f->path,
                     json_type_name(root->type), HINT_BROKEN);
        goto done;
    }
    f->entries = calloc((size_t)root->n + 1, sizeof *f->entries);
    if (!f->entries) {
        rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory for %d entries", f->path, root->n);
        goto done;
    }
    int seen_meta = 0;
    for (const JsonNode *m = json_first(&doc, root); m && !rc; m = json_next(&doc, m)) {
        if (!strcmp(json_key(&doc, m), "__metadata__") && (size_t)m->key_len == strlen("__metadata__")) {
            if (seen_meta++)
                rc = sdc_err(err, SDC_ERR_FORMAT, "%s: header has __metadata__ twice\n%s", f->path, HINT_BROKEN);
            else rc = parse_metadata(f, &doc, m, err);
            continue;
        }
        rc = parse_entry(f, &doc, m, &f->entries[f->n], data_size, err);
        if (f->entries[f->n].name) f->n++; // owned by f now, freed by st_close
    }
    if (rc) goto done;
    qsort(f->entries, (size_t)f->n, sizeof *f->entries, cmp_entry_name);
    for (int i = 1; i < f->n; i++)
        if (!strcmp(f->entries[i - 1].name, f->entries[i].name)) {
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: tensor \"%s\" appears twice in the header\n%s", f->path,
                         f->entries[i].name, HINT_BROKEN);
            goto done;
        }
    rc = check_tiling(f, data_size, err);
done:
    json_free(&doc);
    return rc;
}

int st_parse(StFile *f, const uint8_t *buf, size_t size, const char *path, SdcError *err) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    f->path = strdup(path ? path : "(buffer)");
    if (!f->path) return sdc_err(err, SDC_ERR_OOM, "out of memory");
    f->map = buf;
    f->size = size;
    int rc = st_parse_impl(f, buf, size, err);
    if (rc) {
        f->map = NULL; // the caller owns buf
        st_close(f);
    }
    return rc;
}

int st_open(StFile *f, const char *path, SdcError *err) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sdc_err(err, SDC_ERR_IO, "%s: cannot open: %s%s", path, strerror(errno),
                       errno == ENOENT ? "\n---> check the path (a diffusers folder or a .safetensors file)" : "");
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return sdc_err(err, SDC_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    const uint8_t *map = NULL;
    if (size > 0) {
        void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            close(fd);
            return sdc_err(err, SDC_ERR_IO, "%s: mmap of %zu bytes failed: %s", path, size, strerror(errno));
        }
        map = p;
    }
    int rc = st_parse(f, map, size, path, err);
    if (rc) {
        if (map) munmap((void *)map, size);
        close(fd);
        return rc;
    }
    f->fd = fd;
    return 0;
}

void st_close(StFile *f) {
    if (!f) return;
    if (f->fd >= 0) {
        if (f->map) munmap((void *)f->map, f->size);
        close(f->fd);
    }
    for (int i = 0; i < f->n; i++) free(f->entries[i].name);
    free(f->entries);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->path);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

const StEntry *st_find(const StFile *f, const char *name) {
    if (!f->n) return NULL;
    StEntry key = {.name = (char *)name};
    return bsearch(&key, f->entries, (size_t)f->n, sizeof *f->entries, cmp_entry_name);
}

Tensor st_tensor(const StFile *f, const StEntry *e) {
    Tensor t = {.dtype = e->dtype, .device = DEV_CPU, .ndim = 0, .data = NULL};
    if (!e->supported) return t;
    t.ndim = e->ndim;
    for (int i = 0; i < e->ndim; i++) t.shape[i] = e->shape[i];
    t.data = (void *)(f->data + e->offset);
    return t;
}

int st_get(const StFile *f, const char *name, Tensor *out, SdcError *err) {
    const StEntry *e = st_find(f, name);
    if (!e) return sdc_err(err, SDC_ERR_SHAPE, "%s: no tensor \"%s\" (the file has %d tensors)", f->path, name, f->n);
    if (!e->supported)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: tensor \"%s\" is %s with %d dims; sdc loads F32, F16, BF16, "
                       "U8, I32 and I64 tensors of at most %d dims\n---> convert the file to fp16/fp32 "
                       "(e.g. with diffusers) before loading it", f->path, name, e->dtype_str, e->ndim,
                       TENSOR_MAX_DIMS);
    *out = st_tensor(f, e);
    return 0;
}

const char *st_meta(const StFile *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], key)) return f->meta_vals[i];
    return NULL;
}

// ----------------------------------------------------------------------------
// writer

typedef struct StrBuf {
    char *s;
    size_t len, cap;
    int oom;
} StrBuf;

static void sb_put(StrBuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1) cap *= 2;
        char *ns = realloc(b->s, cap);
        if (!ns) { b->oom = 1; return; }
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

static void sb_puts(StrBuf *b, const char *s) { sb_put(b, s, strlen(s)); }

// A JSON string literal (names and metadata are UTF-8; control bytes escaped).
static void sb_json_str(StrBuf *b, const char *s) {
    sb_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') { esc[0] = '\\'; esc[1] = (char)*p; sb_put(b, esc, 2); }
        else if (*p < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", *p); sb_puts(b, esc); }
        else sb_put(b, (const char *)p, 1);
    }
    sb_puts(b, "\"");
}

typedef struct NamedIdx {
    const char *name;
    int idx;
} NamedIdx;

static int cmp_named_idx(const void *a, const void *b) {
    return strcmp(((const NamedIdx *)a)->name, ((const NamedIdx *)b)->name);
}

int st_write(const char *path, const char *const *names, const Tensor *tensors, int n,
             const char *const *meta_keys, const char *const *meta_vals, int n_meta, SdcError *err) {
    NamedIdx *sorted = malloc((size_t)(n > 0 ? n : 1) * sizeof *sorted);
    int *order = malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
    if (!sorted || !order) {
        free(sorted);
        free(order);
        return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
    }
    for (int i = 0; i < n; i++) sorted[i] = (NamedIdx){names[i], i};
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_named_idx);
    for (int i = 0; i < n; i++) order[i] = sorted[i].idx;
    free(sorted);
    for (int i = 1; i < n; i++)
        if (!strcmp(names[order[i - 1]], names[order[i]])) {
            const char *dup = names[order[i]];
            free(order);
            return sdc_err(err, SDC_ERR_ARG, "%s: tensor \"%s\" given twice to st_write", path, dup);
        }

    StrBuf h = {0};
    sb_puts(&h, "{");
    if (n_meta > 0) {
        sb_puts(&h, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) sb_puts(&h, ",");
            sb_json_str(&h, meta_keys[i]);
            sb_puts(&h, ":");
            sb_json_str(&h, meta_vals[i]);
        }
        sb_puts(&h, "}");
    }
    size_t off = 0;
    for (int k = 0; k < n; k++) {
        const Tensor *t = &tensors[order[k]];
        if (t->device != DEV_CPU) {
            int rc = sdc_err(err, SDC_ERR_ARG, "%s: tensor \"%s\" is not on the CPU", path, names[order[k]]);
            free(order);
            free(h.s);
            return rc;
        }
        char tmp[160];
        if (k || n_meta > 0) sb_puts(&h, ",");
        sb_json_str(&h, names[order[k]]);
        snprintf(tmp, sizeof tmp, ":{\"dtype\":\"%s\",\"shape\":[", dtype_name(t->dtype));
        sb_puts(&h, tmp);
        for (int d = 0; d < t->ndim; d++) {
            snprintf(tmp, sizeof tmp, d ? ",%lld" : "%lld", (long long)t->shape[d]);
            sb_puts(&h, tmp);
        }
        size_t nb = tensor_bytes(t);
        snprintf(tmp, sizeof tmp, "],\"data_offsets\":[%zu,%zu]}", off, off + nb);
        sb_puts(&h, tmp);
        off += nb;
    }
    sb_puts(&h, "}");
    while (!h.oom && h.len % 8) sb_puts(&h, " "); // data region starts 8-byte aligned (no growth once out of memory)
    if (h.oom) {
        free(order);
        free(h.s);
        return sdc_err(err, SDC_ERR_OOM, "%s: out of memory for the header", path);
    }

    char tmp_path[4200];
    snprintf(tmp_path, sizeof tmp_path, "%s.tmp", path);
    FILE *fp = fopen(tmp_path, "wb");
    int rc = 0;
    if (!fp) {
        rc = sdc_err(err, SDC_ERR_IO, "%s: cannot create: %s", tmp_path, strerror(errno));
    } else {
        uint8_t len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
        int ok = fwrite(len8, 1, 8, fp) == 8 && fwrite(h.s, 1, h.len, fp) == h.len;
        for (int k = 0; k < n && ok; k++) {
            const Tensor *t = &tensors[order[k]];
            size_t nb = tensor_bytes(t);
            ok = nb == 0 || fwrite(t->data, 1, nb, fp) == nb;
        }
        ok = (fflush(fp) == 0) && ok && fsync(fileno(fp)) == 0;
        if (fclose(fp) != 0) ok = 0;
        if (!ok) rc = sdc_err(err, SDC_ERR_IO, "%s: write failed: %s (disk full?)", tmp_path, strerror(errno));
        else if (rename(tmp_path, path))
            rc = sdc_err(err, SDC_ERR_IO, "%s: cannot rename %s to it: %s", path, tmp_path, strerror(errno));
        if (rc) remove(tmp_path);
    }
    free(order);
    free(h.s);
    return rc;
}
