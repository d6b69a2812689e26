// manifest_text.c: a protobuf text-format reader driven by the protobuf-c
// descriptors (libprotobuf-c has none). It accepts what protoc --decode
// prints and what people write by hand; every error names the source,
// line:column and the field. Untrusted input: bounded nesting, every length
// checked, fuzzed with the other parsers.
#include "jobs/manifest.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 32

typedef enum { TK_EOF, TK_IDENT, TK_NUMBER, TK_STRING, TK_PUNCT, TK_ERROR } TokKind;

typedef struct Lexer {
    const char *src, *path;
    size_t len, pos;
    int line, col;
    // current token
    TokKind kind;
    size_t start, end; // token bytes [start, end)
    int tline, tcol;
    char punct;
    SdcError *err;
} Lexer;

static int lex_fail(Lexer *lx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int lex_fail(Lexer *lx, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return sdc_err(lx->err, SDC_ERR_FORMAT, "%s:%d:%d: %s", lx->path, lx->tline, lx->tcol, msg);
}

static void lex_advance_char(Lexer *lx) {
    if (lx->src[lx->pos] == '\n') {
        lx->line++;
        lx->col = 1;
    } else {
        lx->col++;
    }
    lx->pos++;
}

// Reads the next token into lx; returns 0 or an error.
static int lex_next(Lexer *lx) {
    for (;;) { // whitespace and # comments
        while (lx->pos < lx->len && isspace((unsigned char)lx->src[lx->pos])) lex_advance_char(lx);
        if (lx->pos < lx->len && lx->src[lx->pos] == '#') {
            while (lx->pos < lx->len && lx->src[lx->pos] != '\n') lex_advance_char(lx);
            continue;
        }
        break;
    }
    lx->tline = lx->line;
    lx->tcol = lx->col;
    lx->start = lx->pos;
    if (lx->pos >= lx->len) {
        lx->kind = TK_EOF;
        lx->end = lx->pos;
        return 0;
    }
    unsigned char c = (unsigned char)lx->src[lx->pos];
    if (isalpha(c) || c == '_') {
        while (lx->pos < lx->len &&
               (isalnum((unsigned char)lx->src[lx->pos]) || lx->src[lx->pos] == '_' || lx->src[lx->pos] == '.'))
            lex_advance_char(lx);
        lx->kind = TK_IDENT;
    } else if (isdigit(c) || c == '-' || c == '+' || c == '.') {
        lex_advance_char(lx);
        while (lx->pos < lx->len && (isalnum((unsigned char)lx->src[lx->pos]) || lx->src[lx->pos] == '.' ||
                                     ((lx->src[lx->pos] == '-' || lx->src[lx->pos] == '+') &&
                                      (lx->src[lx->pos - 1] == 'e' || lx->src[lx->pos - 1] == 'E'))))
            lex_advance_char(lx);
        lx->kind = TK_NUMBER;
    } else if (c == '"' || c == '\'') {
        lex_advance_char(lx);
        while (lx->pos < lx->len && lx->src[lx->pos] != (char)c) {
            if (lx->src[lx->pos] == '\n') return lex_fail(lx, "string not closed before the end of the line");
            if (lx->src[lx->pos] == '\\' && lx->pos + 1 < lx->len) lex_advance_char(lx);
            lex_advance_char(lx);
        }
        if (lx->pos >= lx->len) return lex_fail(lx, "string not closed before the end of the file");
        lex_advance_char(lx);
        lx->kind = TK_STRING;
    } else if (strchr(":{}<>[],;", c)) {
        lex_advance_char(lx);
        lx->kind = TK_PUNCT;
        lx->punct = (char)c;
    } else {
        return lex_fail(lx, "unexpected character '%c' (0x%02x)", isprint(c) ? c : '?', c);
    }
    lx->end = lx->pos;
    return 0;
}

static int tok_is(const Lexer *lx, char p) { return lx->kind == TK_PUNCT && lx->punct == p; }

static int tok_eq(const Lexer *lx, const char *s) {
    size_t n = strlen(s);
    return lx->end - lx->start == n && !memcmp(lx->src + lx->start, s, n);
}

static void tok_copy(const Lexer *lx, char *buf, size_t cap) {
    size_t n = lx->end - lx->start;
    if (n >= cap) n = cap - 1;
    memcpy(buf, lx->src + lx->start, n);
    buf[n] = 0;
}

// ----------------------------------------------------------------------------
// strings: C escapes, adjacent literals concatenated

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Appends the decoded bytes of the current string token to *buf.
static int decode_string(Lexer *lx, char **buf, size_t *n, size_t *cap) {
    const char *s = lx->src + lx->start + 1, *e = lx->src + lx->end - 1;
    while (s < e) {
        if (*n + 4 >= *cap) {
            *cap = *cap * 2 + 64;
            char *nb = realloc(*buf, *cap);
            if (!nb) return sdc_err(lx->err, SDC_ERR_OOM, "%s: out of memory", lx->path);
            *buf = nb;
        }
        char ch = *s++;
        if (ch != '\\') {
            (*buf)[(*n)++] = ch;
            continue;
        }
        ch = *s++;
        switch (ch) {
        case 'n': (*buf)[(*n)++] = '\n'; break;
        case 't': (*buf)[(*n)++] = '\t'; break;
        case 'r': (*buf)[(*n)++] = '\r'; break;
        case 'a': (*buf)[(*n)++] = '\a'; break;
        case 'b': (*buf)[(*n)++] = '\b'; break;
        case 'f': (*buf)[(*n)++] = '\f'; break;
        case 'v': (*buf)[(*n)++] = '\v'; break;
        case '\\': case '\'': case '"': case '?': (*buf)[(*n)++] = ch; break;
        case 'x': {
            int v = 0, k = 0;
            while (k < 2 && s < e && hexval((unsigned char)*s) >= 0) v = v * 16 + hexval((unsigned char)*s++), k++;
            if (!k) return lex_fail(lx, "\\x needs hex digits");
            (*buf)[(*n)++] = (char)v;
            break;
        }
        default:
            if (ch >= '0' && ch <= '7') {
                int v = ch - '0', k = 1;
                while (k < 3 && s < e && *s >= '0' && *s <= '7') v = v * 8 + (*s++ - '0'), k++;
                if (v > 255) return lex_fail(lx, "octal escape out of range");
                (*buf)[(*n)++] = (char)v;
            } else {
                return lex_fail(lx, "unknown escape '\\%c' in a string", ch);
            }
        }
    }
    return 0;
}

static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        int k = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
        if (k < 0 || i + (size_t)k >= n) return 0; // bad lead byte or cut sequence
        for (int j = 1; j <= k; j++)
            if ((s[i + j] & 0xc0) != 0x80) return 0;
        i += (size_t)k + 1;
    }
    return 1;
}

// ----------------------------------------------------------------------------
// values

static size_t elem_size(const ProtobufCFieldDescriptor *fd) {
    switch (fd->type) {
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64: case PROTOBUF_C_TYPE_DOUBLE: return 8;
    case PROTOBUF_C_TYPE_STRING: case PROTOBUF_C_TYPE_MESSAGE: return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    default: return 4;
    }
}

static int parse_integer(Lexer *lx, const ProtobufCFieldDescriptor *fd, int is_signed, long long lo,
                         unsigned long long hi, void *dst, size_t size) {
    char tok[128];
    tok_copy(lx, tok, sizeof tok);
    if (lx->kind != TK_NUMBER) return lex_fail(lx, "field '%s': expected an integer, got '%s'", fd->name, tok);
    char *end;
    errno = 0;
    if (is_signed) {
        long long v = strtoll(tok, &end, 0);
        if (errno || *end || v < lo || (v > 0 && (unsigned long long)v > hi))
            return lex_fail(lx, "field '%s': '%s' is not an integer in [%lld, %llu]", fd->name, tok, lo, hi);
        if (size == 4) *(int32_t *)dst = (int32_t)v;
        else *(int64_t *)dst = v;
    } else {
        if (tok[0] == '-') return lex_fail(lx, "field '%s': '%s' must not be negative", fd->name, tok);
        unsigned long long v = strtoull(tok, &end, 0);
        if (errno || *end || v > hi)
            return lex_fail(lx, "field '%s': '%s' is not an integer in [0, %llu]", fd->name, tok, hi);
        if (size == 4) *(uint32_t *)dst = (uint32_t)v;
        else *(uint64_t *)dst = v;
    }
    return 0;
}

static int parse_floating(Lexer *lx, const ProtobufCFieldDescriptor *fd, double *out) {
    char tok[128];
    tok_copy(lx, tok, sizeof tok);
    if (lx->kind == TK_IDENT || lx->kind == TK_NUMBER) {
        const char *t = tok;
        int neg = 0;
        if (*t == '-') neg = 1, t++;
        if (!strcasecmp(t, "inf") || !strcasecmp(t, "infinity")) {
            *out = neg ? -INFINITY : INFINITY;
            return 0;
        }
        if (!strcasecmp(t, "nan")) {
            *out = NAN;
            return 0;
        }
    }
    if (lx->kind != TK_NUMBER) return lex_fail(lx, "field '%s': expected a number, got '%s'", fd->name, tok);
    size_t n = strlen(tok);
    if (n && (tok[n - 1] == 'f' || tok[n - 1] == 'F') && !strchr(tok, 'x')) tok[n - 1] = 0;
    char *end;
    errno = 0;
    double v = strtod(tok, &end);
    if (*end || errno == EINVAL) return lex_fail(lx, "field '%s': '%s' is not a number", fd->name, tok);
    *out = v;
    return 0;
}

// Parses one scalar value of field fd (the current token) into dst.
static int parse_scalar(Lexer *lx, const ProtobufCFieldDescriptor *fd, void *dst) {
    char tok[256];
    switch (fd->type) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
        return parse_integer(lx, fd, 1, INT32_MIN, INT32_MAX, dst, 4);
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
        return parse_integer(lx, fd, 1, INT64_MIN, INT64_MAX, dst, 8);
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
        return parse_integer(lx, fd, 0, 0, UINT32_MAX, dst, 4);
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
        return parse_integer(lx, fd, 0, 0, UINT64_MAX, dst, 8);
    case PROTOBUF_C_TYPE_FLOAT: {
        double v;
        SDC_TRY(parse_floating(lx, fd, &v));
        *(float *)dst = (float)v;
        return 0;
    }
    case PROTOBUF_C_TYPE_DOUBLE: return parse_floating(lx, fd, (double *)dst);
    case PROTOBUF_C_TYPE_BOOL:
        if (tok_eq(lx, "true") || tok_eq(lx, "True") || tok_eq(lx, "t") || tok_eq(lx, "1")) {
            *(protobuf_c_boolean *)dst = 1;
        } else if (tok_eq(lx, "false") || tok_eq(lx, "False") || tok_eq(lx, "f") || tok_eq(lx, "0")) {
            *(protobuf_c_boolean *)dst = 0;
        } else {
            tok_copy(lx, tok, sizeof tok);
            return lex_fail(lx, "field '%s': expected true or false, got '%s'", fd->name, tok);
        }
        return 0;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = fd->descriptor;
        tok_copy(lx, tok, sizeof tok);
        const ProtobufCEnumValue *ev = NULL;
        if (lx->kind == TK_IDENT) {
            ev = protobuf_c_enum_descriptor_get_value_by_name(ed, tok);
        } else if (lx->kind == TK_NUMBER) {
            char *end;
            long v = strtol(tok, &end, 0);
            if (!*end && v >= INT_MIN && v <= INT_MAX) ev = protobuf_c_enum_descriptor_get_value(ed, (int)v);
        }
        if (!ev) {
            char names[512] = "";
            for (unsigned i = 0; i < ed->n_values && strlen(names) < 400; i++) {
                strcat(names, i ? ", " : "");
                strcat(names, ed->values[i].name);
            }
            return lex_fail(lx, "field '%s': '%s' is not a %s (one of: %s)", fd->name, tok, ed->name, names);
        }
        *(int *)dst = ev->value;
        return 0;
    }
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES: {
        if (lx->kind != TK_STRING) {
            tok_copy(lx, tok, sizeof tok);
            return lex_fail(lx, "field '%s': expected a quoted string, got '%s'", fd->name, tok);
        }
        char *buf = NULL;
        size_t n = 0, cap = 0;
        int rc = 0;
        for (;;) { // "a" "b" is "ab"
            if ((rc = decode_string(lx, &buf, &n, &cap))) break;
            size_t save_pos = lx->pos;
            int sl = lx->line, sc = lx->col;
            if ((rc = lex_next(lx))) break;
            if (lx->kind != TK_STRING) { // put the token back
                lx->pos = save_pos, lx->line = sl, lx->col = sc;
                lx->kind = TK_STRING; // the caller reads no token value after this
                break;
            }
        }
        if (!rc && !buf) buf = calloc(1, 1);
        if (!rc && !buf) rc = sdc_err(lx->err, SDC_ERR_OOM, "%s: out of memory", lx->path);
        if (rc) {
            free(buf);
            return rc;
        }
        buf[n] = 0;
        if (fd->type == PROTOBUF_C_TYPE_STRING) {
            if (memchr(buf, 0, n) || !utf8_valid((unsigned char *)buf, n)) {
                free(buf);
                return lex_fail(lx, "field '%s': string is not valid UTF-8 (or holds a NUL byte)", fd->name);
            }
            *(char **)dst = buf;
        } else {
            ProtobufCBinaryData *b = dst;
            b->data = (uint8_t *)buf;
            b->len = n;
        }
        return 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE: break;
    }
    return lex_fail(lx, "field '%s': unsupported type", fd->name);
}

static ProtobufCMessage *message_new(const ProtobufCMessageDescriptor *d) {
    ProtobufCMessage *m = calloc(1, d->sizeof_message);
    if (m) d->message_init(m);
    return m;
}

// Frees what a singular field currently holds (a string or a message) so it
// can be replaced.
static void field_clear(const ProtobufCFieldDescriptor *fd, void *slot) {
    if (fd->type == PROTOBUF_C_TYPE_STRING) {
        char *s = *(char **)slot;
        if (s && s != (char *)fd->default_value && s != (char *)protobuf_c_empty_string) free(s);
    } else if (fd->type == PROTOBUF_C_TYPE_BYTES) {
        ProtobufCBinaryData *b = slot;
        free(b->data);
        b->data = NULL;
        b->len = 0;
    } else if (fd->type == PROTOBUF_C_TYPE_MESSAGE) {
        ProtobufCMessage *m = *(ProtobufCMessage **)slot;
        if (m) protobuf_c_message_free_unpacked(m, NULL);
        *(ProtobufCMessage **)slot = NULL;
    }
}

static int parse_body(Lexer *lx, ProtobufCMessage *msg, char close, int depth);

// Parses one value of fd (scalar token or message body) and stores it in
// msg: appended for repeated fields, replacing for singular ones.
static int parse_field_value(Lexer *lx, ProtobufCMessage *msg, const ProtobufCFieldDescriptor *fd, int depth,
                             unsigned char *seen) {
    char *base = (char *)msg;
    void *slot;
    if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
        size_t *count = (size_t *)(base + fd->quantifier_offset);
        void **arr = (void **)(base + fd->offset);
        size_t es = elem_size(fd);
        void *na = realloc(*arr, (*count + 1) * es);
        if (!na) return sdc_err(lx->err, SDC_ERR_OOM, "%s: out of memory", lx->path);
        *arr = na;
        slot = (char *)na + *count * es;
        memset(slot, 0, es);
        (*count)++; // counted now so a failed parse is still freed with the message
    } else {
        if (*seen)
            return lex_fail(lx, "field '%s' is given twice (it is not repeated)", fd->name);
        slot = base + fd->offset;
        field_clear(fd, slot);
        if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
            *(uint32_t *)(base + fd->quantifier_offset) = fd->id;
        else if (fd->label == PROTOBUF_C_LABEL_OPTIONAL && fd->quantifier_offset &&
                 fd->type != PROTOBUF_C_TYPE_MESSAGE && fd->type != PROTOBUF_C_TYPE_STRING)
            *(protobuf_c_boolean *)(base + fd->quantifier_offset) = 1;
    }
    *seen = 1;
    if (fd->type == PROTOBUF_C_TYPE_MESSAGE) {
        char close = tok_is(lx, '{') ? '}' : tok_is(lx, '<') ? '>' : 0;
        if (!close) return lex_fail(lx, "field '%s': expected '{' to open the message", fd->name);
        ProtobufCMessage *sub = message_new(fd->descriptor);
        if (!sub) return sdc_err(lx->err, SDC_ERR_OOM, "%s: out of memory", lx->path);
        *(ProtobufCMessage **)slot = sub;
        return parse_body(lx, sub, close, depth + 1);
    }
    if (fd->type == PROTOBUF_C_TYPE_STRING) *(char **)slot = NULL;
    return parse_scalar(lx, fd, slot);
}

static int parse_body(Lexer *lx, ProtobufCMessage *msg, char close, int depth) {
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    if (depth > MAX_DEPTH) return lex_fail(lx, "messages nested deeper than %d", MAX_DEPTH);
    unsigned char seen[256] = {0};
    for (;;) {
        SDC_TRY(lex_next(lx));
        if (tok_is(lx, ',') || tok_is(lx, ';')) continue;
        if (close ? tok_is(lx, close) : lx->kind == TK_EOF) return 0;
        if (lx->kind == TK_EOF) return lex_fail(lx, "missing '%c' at the end of %s", close, d->name);
        char name[128];
        tok_copy(lx, name, sizeof name);
        if (lx->kind != TK_IDENT) return lex_fail(lx, "expected a field name of %s, got '%s'", d->name, name);
        const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field_by_name(d, name);
        if (!fd) {
            char names[700] = "";
            for (unsigned i = 0; i < d->n_fields && strlen(names) < 600; i++) {
                strcat(names, i ? ", " : "");
                strcat(names, d->fields[i].name);
            }
            return lex_fail(lx, "%s has no field '%s' ---> its fields: %s", d->name, name, names);
        }
        unsigned idx = (unsigned)(fd - d->fields);
        SDC_TRY(lex_next(lx));
        int has_colon = tok_is(lx, ':');
        if (has_colon) SDC_TRY(lex_next(lx));
        else if (fd->type != PROTOBUF_C_TYPE_MESSAGE)
            return lex_fail(lx, "expected ':' after '%s'", name);
        if (tok_is(lx, '[')) { // list syntax
            if (fd->label != PROTOBUF_C_LABEL_REPEATED)
                return lex_fail(lx, "field '%s' is not repeated: it takes one value, not a list", name);
            SDC_TRY(lex_next(lx));
            while (!tok_is(lx, ']')) {
                if (lx->kind == TK_EOF) return lex_fail(lx, "list of '%s' not closed with ']'", name);
                SDC_TRY(parse_field_value(lx, msg, fd, depth, &seen[idx < 256 ? idx : 255]));
                SDC_TRY(lex_next(lx));
                if (tok_is(lx, ',')) SDC_TRY(lex_next(lx));
                else if (!tok_is(lx, ']')) return lex_fail(lx, "expected ',' or ']' in the list of '%s'", name);
            }
            continue;
        }
        SDC_TRY(parse_field_value(lx, msg, fd, depth, &seen[idx < 256 ? idx : 255]));
    }
}

int manifest_parse_text(const ProtobufCMessageDescriptor *desc, const char *text, size_t len, const char *path,
                        ProtobufCMessage **out, SdcError *err) {
    *out = NULL;
    Lexer lx = {.src = text, .path = path, .len = len, .line = 1, .col = 1, .err = err};
    if (memchr(text, 0, len)) return sdc_err(err, SDC_ERR_FORMAT, "%s: a text manifest holds a NUL byte", path);
    ProtobufCMessage *msg = message_new(desc);
    if (!msg) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
    int rc = parse_body(&lx, msg, 0, 0);
    if (rc) {
        protobuf_c_message_free_unpacked(msg, NULL);
        return rc;
    }
    *out = msg;
    return 0;
}

// A message from the wire format holds what the text format can: strings
// in UTF-8 without NUL, enums among their names. protobuf-c checks neither
// for proto2, and a job's strings and enums go into messages, file names and
// the manifest attribute of checkpoints (which must parse back).
// field: the path so far ("generate").
static int wire_check(const ProtobufCMessage *msg, const char *path, const char *field, SdcError *err) {
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *fd = &d->fields[i];
        const char *base = (const char *)msg;
        if (fd->type == PROTOBUF_C_TYPE_ENUM) {
            int rep = fd->label == PROTOBUF_C_LABEL_REPEATED;
            size_t n = rep ? *(const size_t *)(base + fd->quantifier_offset) : 1;
            const int *v = rep ? *(const int *const *)(base + fd->offset) : (const int *)(base + fd->offset);
            const ProtobufCEnumDescriptor *ed = fd->descriptor;
            for (size_t k = 0; k < n; k++)
                if (!protobuf_c_enum_descriptor_get_value(ed, v[k]))
                    return sdc_err(err, SDC_ERR_FORMAT, "%s: field %s%s%s is %d: not a %s\n---> a damaged binary "
                                   "manifest, or one for a newer sdc? write it as text", path, field,
                                   field[0] ? "." : "", fd->name, v[k], ed->name);
            continue;
        }
        if (fd->type != PROTOBUF_C_TYPE_STRING && fd->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        int rep = fd->label == PROTOBUF_C_LABEL_REPEATED;
        size_t n = rep ? *(const size_t *)(base + fd->quantifier_offset) : 1;
        void *const *v = rep ? *(void *const *const *)(base + fd->offset) : (void *const *)(base + fd->offset);
        char sub[256];
        snprintf(sub, sizeof sub, "%s%s%s", field, field[0] ? "." : "", fd->name);
        for (size_t k = 0; k < n; k++) {
            if (!v[k]) continue;
            if (fd->type == PROTOBUF_C_TYPE_MESSAGE) {
                SDC_TRY(wire_check(v[k], path, sub, err));
            } else if (!utf8_valid(v[k], strlen(v[k]))) {
                return sdc_err(err, SDC_ERR_FORMAT, "%s: field %s%s is not valid UTF-8\n---> a damaged binary "
                               "manifest? write it as text", path, sub, rep ? "[]" : "");
            }
        }
    }
    return 0;
}

int manifest_read_file(const char *path, Sdc__Job **out, SdcError *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return sdc_err(err, SDC_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            if (cap > (64u << 20)) {
                fclose(f);
                free(buf);
                return sdc_err(err, SDC_ERR_FORMAT, "%s: larger than 64 MiB: not a job manifest", path);
            }
            cap = cap ? cap * 2 : 4096;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                fclose(f);
                free(buf);
                return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int ioerr = ferror(f);
    fclose(f);
    if (ioerr) {
        free(buf);
        return sdc_err(err, SDC_ERR_IO, "%s: read error", path);
    }
    buf[n] = 0;
    // Text is UTF-8 without control characters other than whitespace. The
    // wire format starts with a field key (0x08 for task), which is valid
    // UTF-8 too: a small binary job (`task: TASK_CONVERT` and a path) can be
    // all ASCII, so UTF-8 alone does not make a file text.
    int text = !memchr(buf, 0, n) && utf8_valid((unsigned char *)buf, n), ctrl = 0;
    for (size_t i = 0; text && i < n && !ctrl; i++)
        ctrl = (unsigned char)buf[i] < 0x20 && !isspace((unsigned char)buf[i]);
    int rc;
    if (text && !ctrl) {
        ProtobufCMessage *m = NULL;
        rc = manifest_parse_text(&sdc__job__descriptor, buf, n, path, &m, err);
        *out = (Sdc__Job *)m;
    } else {
        *out = sdc__job__unpack(NULL, n, (const uint8_t *)buf);
        if (*out) {
            rc = wire_check(&(*out)->base, path, "", err);
            if (rc) sdc__job__free_unpacked(*out, NULL), *out = NULL;
        } else if (text) { // text with a control character: its error says where
            ProtobufCMessage *m = NULL;
            rc = manifest_parse_text(&sdc__job__descriptor, buf, n, path, &m, err);
            *out = (Sdc__Job *)m;
        } else {
            rc = sdc_err(err, SDC_ERR_FORMAT,
                         "%s: neither protobuf text format nor a binary sdc.Job ---> write it as text, e.g. "
                         "'task: TASK_GENERATE model { path: \"m.safetensors\" } ...'",
                         path);
        }
    }
    free(buf);
    return rc;
}

int manifest_set_string(ProtobufCMessage *msg, const char *field, const char *v) {
    const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, field);
    if (!fd || fd->type != PROTOBUF_C_TYPE_STRING || fd->label == PROTOBUF_C_LABEL_REPEATED)
        return SDC_ERR_INTERNAL;
    char *copy = strdup(v ? v : "");
    if (!copy) return SDC_ERR_OOM;
    void *slot = (char *)msg + fd->offset;
    field_clear(fd, slot);
    *(char **)slot = copy;
    return 0;
}

int manifest_set_field(ProtobufCMessage *msg, const char *field, const char *v, SdcError *err) {
    const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, field);
    if (!fd || fd->type == PROTOBUF_C_TYPE_MESSAGE)
        return sdc_err(err, SDC_ERR_INTERNAL, "%s has no scalar field '%s'", msg->descriptor->name, field);
    if (fd->type == PROTOBUF_C_TYPE_STRING && fd->label != PROTOBUF_C_LABEL_REPEATED)
        return manifest_set_string(msg, field, v) ? sdc_err(err, SDC_ERR_OOM, "%s: out of memory", field) : 0;
    // One token of the text format: strings quoted by the lexer's rules.
    char *text = NULL;
    if (fd->type == PROTOBUF_C_TYPE_STRING) {
        size_t n = strlen(v);
        text = malloc(4 * n + 3);
        if (!text) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", field);
        char *o = text;
        *o++ = '"';
        for (const char *p = v; *p; p++) {
            if (*p == '"' || *p == '\\') *o++ = '\\';
            *o++ = *p;
        }
        *o++ = '"';
        *o = 0;
    } else {
        text = strdup(v);
        if (!text) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", field);
    }
    char where[160];
    snprintf(where, sizeof where, "value of %s", field);
    Lexer lx = {.src = text, .path = where, .len = strlen(text), .line = 1, .col = 1, .err = err};
    unsigned char seen = 0;
    int rc = lex_next(&lx);
    if (!rc) rc = parse_field_value(&lx, msg, fd, 0, &seen);
    if (!rc) {
        rc = lex_next(&lx);
        if (!rc && lx.kind != TK_EOF) rc = lex_fail(&lx, "one value expected for '%s', got '%s'", field, v);
    }
    free(text);
    return rc;
}
