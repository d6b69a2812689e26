// json.c: the strict JSON parser of json.h. A recursive-descent parser over
// a bounded cursor: every read checks `p < end` first, so input that is not
// NUL-terminated, truncated or hostile cannot make it read past the buffer.
#include "io/json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct Parser {
    const char *buf, *p, *end;
    const char *what;
    JsonDoc *doc;
    SdcError *err;
    int py_consts; // also NaN, Infinity, -Infinity (json_parse_config)
} Parser;

static int parse_fail(Parser *ps, const char *expected) {
    size_t off = (size_t)(ps->p - ps->buf);
    char near[24] = "end of input";
    if (ps->p < ps->end) {
        size_t k = 0;
        for (const char *q = ps->p; q < ps->end && k < 16; q++)
            near[k++] = (*q >= 0x20 && *q < 0x7f) ? *q : '?';
        near[k] = 0;
    }
    return sdc_err(ps->err, SDC_ERR_FORMAT, "%s: invalid JSON at byte %zu: expected %s, found \"%s\"",
                   ps->what, off, expected, near);
}

static int new_node(Parser *ps, JsonType type) {
    JsonDoc *d = ps->doc;
    if (d->n == d->cap) {
        int cap = d->cap ? d->cap * 2 : 64;
        JsonNode *nn = realloc(d->nodes, (size_t)cap * sizeof *nn);
        if (!nn) return -1;
        d->nodes = nn;
        d->cap = cap;
    }
    JsonNode *nd = &d->nodes[d->n];
    memset(nd, 0, sizeof *nd);
    nd->type = type;
    nd->first = nd->next = nd->key = -1;
    nd->str = -1;
    return d->n++;
}

static int str_reserve(Parser *ps, size_t more) {
    JsonDoc *d = ps->doc;
    if (d->slen + more <= d->scap) return 0;
    size_t cap = d->scap ? d->scap : 256;
    while (cap < d->slen + more) cap *= 2;
    if (cap > (size_t)INT32_MAX) return -1; // offsets are int
    char *s = realloc(d->strs, cap);
    if (!s) return -1;
    d->strs = s;
    d->scap = cap;
    return 0;
}

static void skip_ws(Parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

// Length of the valid UTF-8 sequence starting at p (< end), or 0 if invalid
// (overlong forms, surrogates and code points above U+10FFFF are invalid).
static size_t utf8_len(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    size_t n;
    unsigned cp, min;
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0) { n = 2; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { n = 3; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { n = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if ((size_t)(end - p) < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

// Parses a string at ps->p (which is at '"'); stores it in doc->strs.
static int parse_string(Parser *ps, int *off, int *len) {
    ps->p++; // opening quote
    // The decoded string is never longer than the raw one: reserve that much.
    const char *q = ps->p;
    while (q < ps->end && *q != '"') q += (*q == '\\' && q + 1 < ps->end) ? 2 : 1;
    if (q >= ps->end) return parse_fail(ps, "a closing '\"' (unterminated string)");
    if (str_reserve(ps, (size_t)(q - ps->p) + 1))
        return sdc_err(ps->err, SDC_ERR_OOM, "%s: out of memory for JSON strings", ps->what);
    JsonDoc *d = ps->doc;
    size_t start = d->slen;
    char *o = d->strs + d->slen;
    while (ps->p < ps->end) {
        unsigned char c = (unsigned char)*ps->p;
        if (c == '"') break;
        if (c < 0x20) return parse_fail(ps, "no control character in a string (escape it)");
        if (c == '\\') {
            if (ps->end - ps->p < 2) return parse_fail(ps, "an escape sequence");
            char e = ps->p[1];
            const char *map = "\"\\/bfnrt", *rep = "\"\\/\b\f\n\r\t";
            const char *hit = e ? strchr(map, e) : NULL;
            if (hit) {
                *o++ = rep[hit - map];
                ps->p += 2;
                continue;
            }
            if (e != 'u') return parse_fail(ps, "one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX");
            unsigned cp, lo;
            if (ps->end - ps->p < 6 || hex4(ps->p + 2, &cp)) return parse_fail(ps, "4 hex digits after \\u");
            ps->p += 6;
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
                ps->p -= 6;
                return parse_fail(ps, "a high surrogate before a low one");
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || hex4(ps->p + 2, &lo) ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return parse_fail(ps, "a \\uDC00-\\uDFFF low surrogate after a high surrogate");
                ps->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            o += put_utf8(o, cp); // <= 4 bytes from >= 6 raw bytes (or 12 for a pair)
            continue;
        }
        size_t n = utf8_len((const unsigned char *)ps->p, (const unsigned char *)ps->end);
        if (!n) return parse_fail(ps, "valid UTF-8");
        memcpy(o, ps->p, n);
        o += n;
        ps->p += n;
    }
    ps->p++; // closing quote (found by the scan above)
    *o = 0;
    size_t n = (size_t)(o - (d->strs + start));
    d->slen = start + n + 1;
    *off = (int)start;
    *len = (int)n;
    return 0;
}

static int parse_number(Parser *ps, JsonNode *nd) {
    const char *s = ps->p, *q = ps->p;
    int is_int = 1;
    if (q < ps->end && *q == '-') q++;
    if (q >= ps->end || *q < '0' || *q > '9') { ps->p = q; return parse_fail(ps, "a digit"); }
    if (*q == '0') {
        q++;
        if (q < ps->end && *q >= '0' && *q <= '9') { ps->p = q; return parse_fail(ps, "no leading zero"); }
    } else {
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < ps->end && *q == '.') {
        is_int = 0;
        q++;
        if (q >= ps->end || *q < '0' || *q > '9') { ps->p = q; return parse_fail(ps, "a digit after '.'"); }
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        is_int = 0;
        q++;
        if (q < ps->end && (*q == '+' || *q == '-')) q++;
        if (q >= ps->end || *q < '0' || *q > '9') { ps->p = q; return parse_fail(ps, "a digit in the exponent"); }
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    size_t n = (size_t)(q - s);
    char small[64], *tmp = n < sizeof small ? small : malloc(n + 1);
    if (!tmp) return sdc_err(ps->err, SDC_ERR_OOM, "%s: out of memory", ps->what);
    memcpy(tmp, s, n);
    tmp[n] = 0;
    nd->num = strtod(tmp, NULL);
    if (is_int) {
        errno = 0;
        long long v = strtoll(tmp, NULL, 10);
        if (errno == 0) {
            nd->is_int = 1;
            nd->i = v;
        }
    }
    if (tmp != small) free(tmp);
    ps->p = q;
    return 0;
}

static int parse_value(Parser *ps, int depth, int *out);

// Parses the members/elements of a container whose opening bracket is at ps->p.
static int parse_container(Parser *ps, int depth, int idx, int is_obj) {
    char close = is_obj ? '}' : ']';
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return 0;
    }
    int prev = -1, count = 0;
    for (;;) {
        int key = -1, key_len = 0, child;
        if (is_obj) {
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != '"') return parse_fail(ps, "a '\"' starting an object key");
            SDC_TRY(parse_string(ps, &key, &key_len));
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') return parse_fail(ps, "':' after an object key");
            ps->p++;
        }
        SDC_TRY(parse_value(ps, depth + 1, &child));
        JsonNode *c = &ps->doc->nodes[child];
        c->key = key;
        c->key_len = key_len;
        if (prev < 0) ps->doc->nodes[idx].first = child;
        else ps->doc->nodes[prev].next = child;
        prev = child;
        if (count == INT32_MAX) return parse_fail(ps, "fewer elements");
        ps->doc->nodes[idx].n = ++count;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return 0;
        }
        return parse_fail(ps, is_obj ? "',' or '}'" : "',' or ']'");
    }
}

static int parse_value(Parser *ps, int depth, int *out) {
    skip_ws(ps);
    if (ps->p >= ps->end) return parse_fail(ps, "a value");
    if (depth > JSON_MAX_DEPTH)
        return sdc_err(ps->err, SDC_ERR_FORMAT, "%s: JSON nested deeper than %d levels at byte %zu",
                       ps->what, JSON_MAX_DEPTH, (size_t)(ps->p - ps->buf));
    char c = *ps->p;
    JsonType t = c == '{' ? JSON_OBJECT : c == '[' ? JSON_ARRAY : c == '"' ? JSON_STRING
               : (c == 't' || c == 'f') ? JSON_BOOL : c == 'n' ? JSON_NULL : JSON_NUMBER;
    int idx = new_node(ps, t);
    if (idx < 0) return sdc_err(ps->err, SDC_ERR_OOM, "%s: out of memory for JSON nodes", ps->what);
    *out = idx;
    switch (t) {
    case JSON_OBJECT: return parse_container(ps, depth, idx, 1);
    case JSON_ARRAY: return parse_container(ps, depth, idx, 0);
    case JSON_STRING: {
        int off, len;
        SDC_TRY(parse_string(ps, &off, &len));
        ps->doc->nodes[idx].str = off;
        ps->doc->nodes[idx].str_len = len;
        return 0;
    }
    case JSON_BOOL:
    case JSON_NULL: {
        const char *word = c == 't' ? "true" : c == 'f' ? "false" : "null";
        size_t n = strlen(word);
        if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n)) return parse_fail(ps, word);
        ps->doc->nodes[idx].boolean = c == 't';
        ps->p += n;
        return 0;
    }
    case JSON_NUMBER:
        if (ps->py_consts) { // Python's json.dumps writes these for nan / inf / -inf
            static const struct { const char *word; double v; } K[3] = {
                {"NaN", NAN}, {"Infinity", INFINITY}, {"-Infinity", -INFINITY}};
            for (int k = 0; k < 3; k++) {
                size_t n = strlen(K[k].word);
                if ((size_t)(ps->end - ps->p) >= n && !memcmp(ps->p, K[k].word, n)) {
                    ps->doc->nodes[idx].num = K[k].v;
                    ps->p += n;
                    return 0;
                }
            }
        }
        if (c != '-' && (c < '0' || c > '9')) return parse_fail(ps, "a value");
        return parse_number(ps, &ps->doc->nodes[idx]);
    }
    return parse_fail(ps, "a value");
}

static int parse_doc(JsonDoc *doc, const char *buf, size_t len, const char *what, int py_consts, SdcError *err) {
    memset(doc, 0, sizeof *doc);
    Parser ps = {.buf = buf, .p = buf, .end = buf + len, .what = what ? what : "JSON", .doc = doc, .err = err,
                 .py_consts = py_consts};
    if (len > (size_t)INT32_MAX / 2) {
        return sdc_err(err, SDC_ERR_FORMAT, "%s: JSON text of %zu bytes is too large (max %d)", ps.what, len,
                       INT32_MAX / 2);
    }
    if (len >= 3 && (unsigned char)buf[0] == 0xEF && (unsigned char)buf[1] == 0xBB && (unsigned char)buf[2] == 0xBF)
        ps.p += 3; // a UTF-8 byte order mark, as some editors write config.json
    int root, rc = parse_value(&ps, 1, &root);
    if (!rc) {
        skip_ws(&ps);
        if (ps.p != ps.end) rc = parse_fail(&ps, "end of input after the top-level value");
    }
    if (rc) json_free(doc);
    return rc;
}

int json_parse(JsonDoc *doc, const char *buf, size_t len, const char *what, SdcError *err) {
    return parse_doc(doc, buf, len, what, 0, err);
}

int json_parse_config(JsonDoc *doc, const char *buf, size_t len, const char *what, SdcError *err) {
    return parse_doc(doc, buf, len, what, 1, err);
}

int json_parse_file(JsonDoc *doc, const char *path, size_t max_bytes, SdcError *err) {
    memset(doc, 0, sizeof *doc);
    FILE *fp = fopen(path, "rb");
    if (!fp) return sdc_err(err, SDC_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 4096;
            char *nb = realloc(buf, cap);
            if (!nb) { rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path); break; }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, fp);
        len += got;
        if (len > max_bytes) {
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: larger than %zu bytes; is this really a JSON file?", path,
                         max_bytes);
            break;
        }
        if (got == 0) {
            if (ferror(fp)) rc = sdc_err(err, SDC_ERR_IO, "%s: read error", path);
            break;
        }
    }
    fclose(fp);
    if (!rc) rc = json_parse_config(doc, buf, len, path, err);
    free(buf);
    return rc;
}

void json_free(JsonDoc *doc) {
    free(doc->nodes);
    free(doc->strs);
    memset(doc, 0, sizeof *doc);
}

const JsonNode *json_root(const JsonDoc *doc) { return doc->n ? &doc->nodes[0] : NULL; }

const JsonNode *json_first(const JsonDoc *doc, const JsonNode *node) {
    if (!node || (node->type != JSON_ARRAY && node->type != JSON_OBJECT) || node->first < 0) return NULL;
    return &doc->nodes[node->first];
}

const JsonNode *json_next(const JsonDoc *doc, const JsonNode *node) {
    return node && node->next >= 0 ? &doc->nodes[node->next] : NULL;
}

const JsonNode *json_get(const JsonDoc *doc, const JsonNode *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    size_t kl = strlen(key);
    const JsonNode *hit = NULL;
    for (const JsonNode *c = json_first(doc, obj); c; c = json_next(doc, c))
        if ((size_t)c->key_len == kl && !memcmp(doc->strs + c->key, key, kl)) hit = c;
    return hit;
}

const JsonNode *json_at(const JsonDoc *doc, const JsonNode *arr, int i) {
    if (!arr || arr->type != JSON_ARRAY || i < 0 || i >= arr->n) return NULL;
    const JsonNode *c = json_first(doc, arr);
    while (i-- > 0 && c) c = json_next(doc, c);
    return c;
}

const char *json_key(const JsonDoc *doc, const JsonNode *member) {
    return member && member->key >= 0 ? doc->strs + member->key : "";
}

const char *json_str(const JsonDoc *doc, const JsonNode *node) {
    return node && node->type == JSON_STRING ? doc->strs + node->str : NULL;
}

const char *json_type_name(JsonType t) {
    switch (t) {
    case JSON_NULL: return "null";
    case JSON_BOOL: return "a boolean";
    case JSON_NUMBER: return "a number";
    case JSON_STRING: return "a string";
    case JSON_ARRAY: return "an array";
    case JSON_OBJECT: return "an object";
    }
    return "?";
}
