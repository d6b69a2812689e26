// tokenizer.c: the CLIP BPE tokenizer (see tokenizer.h for the two cleanup
// modes and what each reproduces).
//
// Pipeline: UTF-8 -> code points (U+FFFD for bad bytes) -> text cleanup of the
// mode -> CLIP's pre-tokenisation regex, hand-written as a scanner over
// Unicode class flags -> each piece as UTF-8 bytes, mapped to the 256 byte
// symbols (bytes_to_unicode) with "</w>" on the last -> BPE merges by rank.
// Symbols are vocab ids from the start, so a merge is one hash-table probe on
// the pair (a, b) -> (rank, merged id). Unicode data: unicode_tables.c.
#include "text/tokenizer.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "io/json.h"
#include "text/unicode_tables.h"

// Leaf helpers whose branches tell a fuzzer nothing it can use (a vector's
// growth, the path of a binary search through a Unicode table, the probes of
// a hash table, UTF-8 encoding) are left out of libFuzzer's edge coverage and
// comparison tracing in the fuzz build: the tracing callbacks were a third of
// fuzz_tokenizer's time (docs/fuzzing.md). Other builds: no effect.
#if defined(FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION) && defined(__clang__)
#define TOK_NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define TOK_NO_COVERAGE
#endif

// ----------------------------------------------------------------------------
// growable arrays (an out-of-memory push sets .oom; checked once per stage)

typedef struct U32Vec {
    uint32_t *v;
    size_t n, cap;
    int oom;
} U32Vec;

// Room for n more: 0, or -1 with .oom set (capacity doubles from 64).
TOK_NO_COVERAGE static int u32_reserve(U32Vec *a, size_t n) {
    if (a->cap - a->n >= n) return 0;
    size_t cap = a->cap ? a->cap : 64;
    while (cap - a->n < n) {
        if (cap > SIZE_MAX / 2 / sizeof *a->v) {
            a->oom = 1;
            return -1;
        }
        cap *= 2;
    }
    uint32_t *p = realloc(a->v, cap * sizeof *p);
    if (!p) {
        a->oom = 1;
        return -1;
    }
    a->v = p;
    a->cap = cap;
    return 0;
}

TOK_NO_COVERAGE static void u32_push(U32Vec *a, uint32_t x) {
    if (a->n == a->cap && u32_reserve(a, 1)) return;
    a->v[a->n++] = x;
}

TOK_NO_COVERAGE static void u32_push_n(U32Vec *a, const uint32_t *x, size_t n) {
    if (u32_reserve(a, n)) return;
    if (n) memcpy(a->v + a->n, x, n * sizeof *x);
    a->n += n;
}

static void u32_free(U32Vec *a) {
    free(a->v);
    memset(a, 0, sizeof *a);
}

static int u32_equal(const U32Vec *a, const U32Vec *b) {
    return a->n == b->n && (a->n == 0 || memcmp(a->v, b->v, a->n * sizeof *a->v) == 0);
}

// ----------------------------------------------------------------------------
// Unicode lookups

TOK_NO_COVERAGE static int runs_find(const UniRuns *r, uint32_t cp) {
    int lo = 0, hi = r->n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (r->start[mid] <= cp) lo = mid;
        else hi = mid - 1;
    }
    return r->val[lo];
}

// ASCII is most of every prompt: its flags come from a table filled once, so
// a character costs one load instead of a binary search over 2265 runs.
static unsigned ascii_flags[128];
static pthread_once_t ascii_flags_once = PTHREAD_ONCE_INIT;
static void ascii_flags_fill(void) {
    for (uint32_t c = 0; c < 128; c++) ascii_flags[c] = (unsigned)runs_find(&uni_flag_runs, c);
}

static unsigned uni_flags(uint32_t cp) {
    if (cp < 128) {
        pthread_once(&ascii_flags_once, ascii_flags_fill);
        return ascii_flags[cp];
    }
    return cp < 0x110000 ? (unsigned)runs_find(&uni_flag_runs, cp) : 0;
}

// Every code point below U+0300 has canonical combining class 0.
static int uni_ccc(uint32_t cp) { return cp >= 0x300 && cp < 0x110000 ? runs_find(&uni_ccc_runs, cp) : 0; }

// The replacement of cp in m, or NULL (then *len is untouched).
TOK_NO_COVERAGE static const uint32_t *map_find(const UniMap *m, uint32_t cp, int *len) {
    if (m->n == 0 || cp < m->rows[0].cp || cp > m->rows[m->n - 1].cp) return NULL; // ASCII, mostly
    int lo = 0, hi = m->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (m->rows[mid].cp == cp) {
            *len = m->rows[mid].len;
            return m->pool + m->rows[mid].off;
        }
        if (m->rows[mid].cp < cp) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

TOK_NO_COVERAGE static int u32_in_sorted(const uint32_t *a, int n, uint32_t x) {
    if (n == 0 || x < a[0] || x > a[n - 1]) return 0; // ASCII, mostly
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (a[mid] == x) return 1;
        if (a[mid] < x) lo = mid + 1;
        else hi = mid - 1;
    }
    return 0;
}

static const char *entity_find(const UniEntity *e, int n, const char *name) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(e[mid].name, name);
        if (c == 0) return e[mid].utf8;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

// ----------------------------------------------------------------------------
// UTF-8 in and out

// Decodes like Python's bytes.decode("utf-8", "replace"): each maximal invalid
// subpart becomes one U+FFFD; surrogates and overlongs are invalid.
static void utf8_decode(const char *s, size_t n, U32Vec *out) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) {
            u32_push(out, c);
            i++;
            continue;
        }
        int need;
        unsigned lo = 0x80, hi = 0xBF;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) need = 1, cp = c & 0x1F;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2, cp = c & 0x0F;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3, cp = c & 0x07;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            u32_push(out, 0xFFFD);
            i++;
            continue;
        }
        size_t j = i + 1;
        int ok = 1;
        for (int k = 0; k < need; k++, j++) {
            unsigned b = j < n ? p[j] : 0;
            unsigned blo = k == 0 ? lo : 0x80, bhi = k == 0 ? hi : 0xBF;
            if (j >= n || b < blo || b > bhi) {
                ok = 0;
                break;
            }
            cp = (cp << 6) | (b & 0x3F);
        }
        u32_push(out, ok ? cp : 0xFFFD);
        i = j; // on failure, resume at the byte that broke the sequence
    }
}

TOK_NO_COVERAGE static int utf8_put(uint32_t cp, unsigned char *b) {
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | (cp >> 6));
        b[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | (cp >> 12));
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    b[0] = (unsigned char)(0xF0 | (cp >> 18));
    b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    b[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

static void push_utf8_str(U32Vec *out, const char *s) { utf8_decode(s, strlen(s), out); }

// ----------------------------------------------------------------------------
// NFC (canonical decomposition, canonical ordering, canonical composition)

enum { HANGUL_S = 0xAC00, HANGUL_L = 0x1100, HANGUL_V = 0x1161, HANGUL_T = 0x11A7,
       HANGUL_LN = 19, HANGUL_VN = 21, HANGUL_TN = 28, HANGUL_SN = 11172 };

static uint32_t nfc_compose_pair(uint32_t a, uint32_t b) {
    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_LN && b >= HANGUL_V && b < HANGUL_V + HANGUL_VN)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_VN + (b - HANGUL_V)) * HANGUL_TN;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_SN && (a - HANGUL_S) % HANGUL_TN == 0 && b > HANGUL_T &&
        b < HANGUL_T + HANGUL_TN)
        return a + (b - HANGUL_T);
    int lo = 0, hi = uni_comp_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const UniComp *c = &uni_comp[mid];
        if (c->first == a && c->second == b) return c->composite;
        if (c->first < a || (c->first == a && c->second < b)) lo = mid + 1;
        else hi = mid - 1;
    }
    return 0;
}

static void nfc(const U32Vec *in, U32Vec *out) {
    // Below U+00C0 nothing decomposes, and nothing below U+0300 combines or
    // composes with what precedes it: such text is its own NFC.
    size_t k = 0;
    while (k < in->n && in->v[k] < 0xC0) k++;
    if (k == in->n) {
        out->n = 0;
        u32_push_n(out, in->v, in->n);
        return;
    }
    U32Vec d = {0};
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->v[i];
        int len;
        const uint32_t *m;
        if (c >= HANGUL_S && c < HANGUL_S + HANGUL_SN) {
            uint32_t s = c - HANGUL_S;
            u32_push(&d, HANGUL_L + s / (HANGUL_VN * HANGUL_TN));
            u32_push(&d, HANGUL_V + (s % (HANGUL_VN * HANGUL_TN)) / HANGUL_TN);
            if (s % HANGUL_TN) u32_push(&d, HANGUL_T + s % HANGUL_TN);
        } else if ((m = map_find(&uni_decomp, c, &len))) {
            u32_push_n(&d, m, (size_t)len);
        } else {
            u32_push(&d, c);
        }
    }
    // canonical ordering: stable sort of each run of non-starters by class
    for (size_t i = 1; i < d.n; i++) {
        int ci = uni_ccc(d.v[i]);
        if (!ci) continue;
        for (size_t j = i; j > 0; j--) {
            int cj = uni_ccc(d.v[j - 1]);
            if (cj <= ci) break;
            uint32_t t = d.v[j];
            d.v[j] = d.v[j - 1];
            d.v[j - 1] = t;
        }
    }
    out->n = 0;
    if (d.oom) d.n = 0; // incomplete: nothing composed (the caller sees out->oom)
    if (d.n) {
        size_t starter = 0;
        u32_push(out, d.v[0]);
        if (out->oom) d.n = 0; // no room for even the first: out->v may be NULL
        int last = uni_ccc(d.v[0]) ? 256 : 0;
        int have_starter = last == 0;
        for (size_t i = 1; i < d.n; i++) {
            uint32_t c = d.v[i];
            int cc = uni_ccc(c);
            uint32_t comp = have_starter && c >= 0x300 ? nfc_compose_pair(out->v[starter], c) : 0;
            if (comp && (last < cc || last == 0) && starter < out->n) {
                out->v[starter] = comp;
                continue;
            }
            if (cc == 0) {
                starter = out->n;
                have_starter = 1;
            }
            last = cc;
            u32_push(out, c);
        }
    }
    if (d.oom) out->oom = 1;
    u32_free(&d);
}

// ----------------------------------------------------------------------------
// lowercase

// Python str.lower(): full mappings plus the final-sigma rule on U+03A3.
static void lower_python(const U32Vec *in, U32Vec *out) {
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->v[i];
        if (c == 0x3A3) {
            size_t j = i;
            while (j > 0 && (uni_flags(in->v[j - 1]) & UNI_CASEIGN)) j--;
            int final = j > 0 && (uni_flags(in->v[j - 1]) & UNI_CASED);
            if (final) {
                j = i + 1;
                while (j < in->n && (uni_flags(in->v[j]) & UNI_CASEIGN)) j++;
                final = j == in->n || !(uni_flags(in->v[j]) & UNI_CASED);
            }
            u32_push(out, final ? 0x3C2 : 0x3C3);
            continue;
        }
        if (c < 128) {
            u32_push(out, c >= 'A' && c <= 'Z' ? c + 32 : c);
            continue;
        }
        int len;
        const uint32_t *m = map_find(&uni_lower, c, &len);
        if (m) u32_push_n(out, m, (size_t)len);
        else u32_push(out, c);
    }
}

// Rust char::to_lowercase per character (the tokenizers Lowercase normalizer):
// the same mappings, no final-sigma context.
static void lower_chars(const U32Vec *in, U32Vec *out) {
    for (size_t i = 0; i < in->n; i++) {
        if (in->v[i] < 128) {
            u32_push(out, in->v[i] >= 'A' && in->v[i] <= 'Z' ? in->v[i] + 32 : in->v[i]);
            continue;
        }
        int len;
        const uint32_t *m = map_find(&uni_lower, in->v[i], &len);
        if (m) u32_push_n(out, m, (size_t)len);
        else u32_push(out, in->v[i]);
    }
}

// ----------------------------------------------------------------------------
// HTML character references (Python html.unescape and ftfy's unescape_html)

static int is_ascii_digit(uint32_t c) { return c >= '0' && c <= '9'; }
static int is_ascii_hex(uint32_t c) {
    return is_ascii_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
static int is_ascii_alnum(uint32_t c) {
    return is_ascii_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// html.unescape's numeric reference (num saturated above 0x10FFFF).
static void html_charref(uint64_t num, U32Vec *out) {
    int len;
    const uint32_t *m = num < 0x110000 ? map_find(&uni_html_invalid_charrefs, (uint32_t)num, &len) : NULL;
    if (m) u32_push_n(out, m, (size_t)len);
    else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) u32_push(out, 0xFFFD);
    else if (u32_in_sorted(uni_html_invalid_codepoints, uni_html_invalid_codepoints_count, (uint32_t)num)) return;
    else u32_push(out, (uint32_t)num);
}

// Parses &#123 / &#x1F (s[i] == '&', s[i+1] == '#'): returns the end or 0.
static size_t html_parse_num(const U32Vec *s, size_t i, uint64_t *num) {
    size_t j = i + 2;
    int hex = 0;
    if (j < s->n && (s->v[j] == 'x' || s->v[j] == 'X') && j + 1 < s->n && is_ascii_hex(s->v[j + 1])) hex = 1, j++;
    size_t d0 = j;
    uint64_t v = 0;
    while (j < s->n && (hex ? is_ascii_hex(s->v[j]) : is_ascii_digit(s->v[j]))) {
        uint32_t c = s->v[j];
        unsigned dv = is_ascii_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10;
        v = v * (hex ? 16 : 10) + dv;
        if (v > 0x10FFFF) v = 0x110000;
        j++;
    }
    if (j == d0) return 0;
    *num = v;
    return j;
}

static void cps_to_utf8(const uint32_t *c, size_t n, char *buf, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < cap; i++) k += (size_t)utf8_put(c[i], (unsigned char *)buf + k);
    buf[k] = 0;
}

// Python's html.unescape over s.
static void html_unescape(const U32Vec *s, U32Vec *out) {
    size_t i = 0;
    while (i < s->n) {
        if (s->v[i] != '&' || i + 1 >= s->n) {
            u32_push(out, s->v[i++]);
            continue;
        }
        if (s->v[i + 1] == '#') {
            uint64_t num;
            size_t j = html_parse_num(s, i, &num);
            if (!j) {
                u32_push(out, s->v[i++]);
                continue;
            }
            if (j < s->n && s->v[j] == ';') j++;
            html_charref(num, out);
            i = j;
            continue;
        }
        // &name: up to 32 of [^\t\n\f <&#;], then an optional ';'
        size_t j = i + 1;
        while (j < s->n && j - (i + 1) < 32) {
            uint32_t c = s->v[j];
            if (c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' || c == ';') break;
            j++;
        }
        if (j == i + 1) {
            u32_push(out, s->v[i++]);
            continue;
        }
        if (j < s->n && s->v[j] == ';') j++;
        size_t n = j - (i + 1);
        char name[33 * 4 + 1];
        const char *rep = NULL;
        size_t x;
        // the whole name first, then its prefixes from n - 1 down to 2 chars
        for (x = n; x >= 2 || x == n; x--) {
            cps_to_utf8(s->v + i + 1, x, name, sizeof name);
            if ((rep = entity_find(uni_html5, uni_html5_count, name))) break;
            if (x < 2) break;
        }
        if (rep) {
            push_utf8_str(out, rep);
            u32_push_n(out, s->v + i + 1 + x, n - x);
        } else {
            u32_push_n(out, s->v + i, j - i);
        }
        i = j;
    }
}

// ftfy's unescape_html: &#?[0-9A-Za-z]{1,24}; -> its entity table, or a
// numeric reference through html.unescape unless that leaves a ';'.
static void ftfy_unescape_html(const U32Vec *s, U32Vec *out) {
    size_t i = 0;
    while (i < s->n) {
        if (s->v[i] != '&') {
            u32_push(out, s->v[i++]);
            continue;
        }
        size_t j = i + 1;
        int num = j < s->n && s->v[j] == '#';
        if (num) j++;
        size_t a0 = j;
        while (j < s->n && is_ascii_alnum(s->v[j])) j++;
        size_t na = j - a0;
        if (na < 1 || na > 24 || j >= s->n || s->v[j] != ';') {
            u32_push(out, s->v[i++]);
            continue;
        }
        j++; // the match is s[i, j)
        char name[32];
        cps_to_utf8(s->v + i, j - i, name, sizeof name);
        const char *rep = entity_find(uni_ftfy_entities, uni_ftfy_entities_count, name);
        if (rep) {
            push_utf8_str(out, rep);
        } else if (num) {
            U32Vec m = {.v = s->v + i, .n = j - i}, r = {0};
            html_unescape(&m, &r);
            int has_semi = 0;
            for (size_t k = 0; k < r.n; k++) has_semi |= r.v[k] == ';';
            if (has_semi) u32_push_n(out, s->v + i, j - i);
            else u32_push_n(out, r.v, r.n);
            if (r.oom) out->oom = 1;
            u32_free(&r);
        } else {
            u32_push_n(out, s->v + i, j - i);
        }
        i = j;
    }
}

// ----------------------------------------------------------------------------
// ftfy.fix_text (everything but the heuristic fix_encoding)

static void translate(const UniMap *m, const U32Vec *in, U32Vec *out) {
    uint32_t lo = m->n ? m->rows[0].cp : UINT32_MAX; // nothing below the first row maps
    size_t i = 0;
    while (i < in->n) {
        size_t j = i;
        while (j < in->n && in->v[j] < lo) j++;
        u32_push_n(out, in->v + i, j - i); // a stretch left as it is, in one copy
        if (j == in->n) break;
        int len;
        const uint32_t *r = map_find(m, in->v[j], &len);
        if (r) u32_push_n(out, r, (size_t)len);
        else u32_push(out, in->v[j]);
        i = j + 1;
    }
}

static void ftfy_fix_segment_once(const U32Vec *in, int unescape, U32Vec *out) {
    U32Vec a = {0}, b = {0};
    if (unescape) ftfy_unescape_html(in, &a);
    else u32_push_n(&a, in->v, in->n);
    translate(&uni_ftfy_c1, &a, &b); // fix_c1_controls
    a.n = 0;
    translate(&uni_ftfy_ligatures, &b, &a);
    b.n = 0;
    translate(&uni_ftfy_width, &a, &b);
    a.n = 0;
    for (size_t i = 0; i < b.n; i++) { // uncurl_quotes
        uint32_t c = b.v[i];
        if (u32_in_sorted(uni_ftfy_single_quotes, uni_ftfy_single_quotes_count, c)) c = '\'';
        else if (u32_in_sorted(uni_ftfy_double_quotes, uni_ftfy_double_quotes_count, c)) c = '"';
        u32_push(&a, c);
    }
    b.n = 0;
    for (size_t i = 0; i < a.n; i++) { // fix_line_breaks
        uint32_t c = a.v[i];
        if (c == '\r' && i + 1 < a.n && a.v[i + 1] == '\n') continue;
        if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
        u32_push(&b, c);
    }
    a.n = 0;
    for (size_t i = 0; i < b.n; i++) { // remove_terminal_escapes: \033\[(\d|;)*[a-zA-Z]
        if (b.v[i] == 0x1B && i + 1 < b.n && b.v[i + 1] == '[') {
            size_t j = i + 2;
            while (j < b.n && (b.v[j] == ';' || (uni_flags(b.v[j]) & UNI_DEC))) j++;
            uint32_t c = j < b.n ? b.v[j] : 0;
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
                i = j;
                continue;
            }
        }
        u32_push(&a, b.v[i]);
    }
    b.n = 0;
    translate(&uni_ftfy_control, &a, &b); // remove_control_chars
    nfc(&b, out);
    if (a.oom || b.oom) out->oom = 1;
    u32_free(&a);
    u32_free(&b);
}

static void ftfy_fix_text(const U32Vec *in, U32Vec *out) {
    int unescape = 1; // "auto": off from the first line holding a '<' on
    size_t pos = 0;
    while (pos < in->n) {
        size_t end = pos;
        while (end < in->n && in->v[end] != '\n') end++;
        if (end < in->n) end++; // a segment keeps its '\n'
        U32Vec seg = {0}, next = {0};
        u32_push_n(&seg, in->v + pos, end - pos);
        for (size_t k = pos; k < end; k++)
            if (in->v[k] == '<') unescape = 0;
        for (;;) { // fix_and_explain repeats until nothing changes
            next.n = 0;
            ftfy_fix_segment_once(&seg, unescape, &next);
            if (next.oom || seg.oom) break;
            int same = u32_equal(&seg, &next);
            U32Vec t = seg;
            seg = next;
            next = t;
            if (same) break;
        }
        u32_push_n(out, seg.v, seg.n);
        if (seg.oom || next.oom) out->oom = 1;
        u32_free(&seg);
        u32_free(&next);
        pos = end;
    }
}

// ----------------------------------------------------------------------------
// the tokenizer object

typedef struct MergeTable {
    uint64_t *key; // (a << 32 | b); MERGE_EMPTY when free
    int32_t *rank, *merged;
    size_t cap; // power of two
} MergeTable;

#define MERGE_EMPTY UINT64_MAX

// An added token (transformers' AddedToken): matched in the prompt before
// the BPE, on the raw text (normalized 0) or on each normalized piece (1).
typedef struct AddedTok {
    char *content; // as the file gives it (a second registration of it replaces this one)
    uint32_t *cp;  // (n) what is matched: the content, normalized for a normalized token
    int n;
    int32_t id;
    unsigned char normalized, lstrip, rstrip, single_word, special;
} AddedTok;

struct ClipTokenizer {
    ClipTokMode mode;
    int32_t byte_id[256];     // symbol id of each byte inside a word
    int32_t byte_eow_id[256]; // ... as the last symbol of a word ("x</w>")
    int32_t bos, eos;
    int32_t pad;              // the pad token's id (CLIP's EOS unless the folder names another)
    MergeTable merges;
    AddedTok *added;          // (n_added) in registration order
    int n_added, cap_added;
    int n_new;                // added tokens the vocab lacks (ids vocab size, +1, ...)
};

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

// Rank and merged id of the pair (a, b), or -1.
TOK_NO_COVERAGE static int32_t merge_lookup(const MergeTable *m, int32_t a, int32_t b, int32_t *merged) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = mix64(k) & (m->cap - 1);
    while (m->key[i] != MERGE_EMPTY) {
        if (m->key[i] == k) {
            *merged = m->merged[i];
            return m->rank[i];
        }
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

static void merge_insert(MergeTable *m, int32_t a, int32_t b, int32_t rank, int32_t merged) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = mix64(k) & (m->cap - 1);
    while (m->key[i] != MERGE_EMPTY) {
        if (m->key[i] == k) return; // a duplicate merge keeps its first (best) rank
        i = (i + 1) & (m->cap - 1);
    }
    m->key[i] = k;
    m->rank[i] = rank;
    m->merged[i] = merged;
}

void clip_tok_free(ClipTokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_added; i++) free(t->added[i].cp), free(t->added[i].content);
    free(t->added);
    free(t->merges.key);
    free(t->merges.rank);
    free(t->merges.merged);
    free(t);
}

void clip_tok_set_mode(ClipTokenizer *t, ClipTokMode mode) { t->mode = mode; }
ClipTokMode clip_tok_mode(const ClipTokenizer *t) { return t->mode; }
int32_t clip_tok_bos(const ClipTokenizer *t) { return t->bos; }
int32_t clip_tok_eos(const ClipTokenizer *t) { return t->eos; }
int32_t clip_tok_pad(const ClipTokenizer *t) { return t->pad; }

// ----------------------------------------------------------------------------
// string -> id map used while loading

typedef struct StrMap {
    char *pool; // NUL-terminated keys back to back
    size_t pool_n, pool_cap;
    size_t *slot; // pool offset + 1, 0 = empty
    int32_t *id;
    size_t cap, count;
} StrMap;

static uint64_t str_hash(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static int strmap_init(StrMap *m, size_t expect) {
    memset(m, 0, sizeof *m);
    m->cap = 1;
    while (m->cap < expect * 2) m->cap <<= 1;
    m->slot = calloc(m->cap, sizeof *m->slot);
    m->id = calloc(m->cap, sizeof *m->id);
    return m->slot && m->id ? 0 : -1;
}

static void strmap_free(StrMap *m) {
    free(m->pool);
    free(m->slot);
    free(m->id);
}

TOK_NO_COVERAGE static int32_t strmap_get(const StrMap *m, const char *key) {
    size_t i = str_hash(key) & (m->cap - 1);
    while (m->slot[i]) {
        if (strcmp(m->pool + m->slot[i] - 1, key) == 0) return m->id[i];
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

// 0 on success, -1 when out of memory or full (the caller sized it).
static int strmap_put(StrMap *m, const char *key, int32_t id) {
    if (m->count * 2 >= m->cap) return -1;
    size_t i = str_hash(key) & (m->cap - 1);
    while (m->slot[i]) {
        if (strcmp(m->pool + m->slot[i] - 1, key) == 0) {
            m->id[i] = id; // like a Python dict: the last duplicate wins
            return 0;
        }
        i = (i + 1) & (m->cap - 1);
    }
    size_t len = strlen(key) + 1;
    if (m->pool_n + len > m->pool_cap) {
        size_t cap = m->pool_cap ? m->pool_cap * 2 : 1 << 16;
        while (cap < m->pool_n + len) cap *= 2;
        char *p = realloc(m->pool, cap);
        if (!p) return -1;
        m->pool = p;
        m->pool_cap = cap;
    }
    memcpy(m->pool + m->pool_n, key, len);
    m->slot[i] = m->pool_n + 1;
    m->id[i] = id;
    m->pool_n += len;
    m->count++;
    return 0;
}

// bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others
// get 256, 257, ... in byte order. order[i] is the byte of vocab entry i.
static void byte_unicode_table(uint32_t cp_of_byte[256], int order[256]) {
    int n = 0, k = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (printable) cp_of_byte[b] = (uint32_t)b, order[k++] = b;
    }
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (!printable) cp_of_byte[b] = 256u + (uint32_t)n++, order[k++] = b;
    }
}

// ----------------------------------------------------------------------------
// added and special tokens, registered as transformers 5 registers them

// The config files of a tokenizer folder that name its tokens (any may be
// absent: NULL).
typedef struct TokConfigs {
    const JsonDoc *tc;   // tokenizer_config.json
    const JsonDoc *stm;  // special_tokens_map.json
    const JsonDoc *atj;  // added_tokens.json {"content": id}
    const JsonDoc *tj;   // tokenizer.json (its "added_tokens")
    const char *src;     // the folder, for messages
} TokConfigs;

typedef struct TokSpec { // one token as a file gives it
    const char *content;
    int32_t id;          // -1: its id in the vocab
    int normalized, lstrip, rstrip, single_word, special;
} TokSpec;

// Registers an added token; a second registration of the same content
// replaces the first (the last one wins in transformers too). Its id is the
// vocab's when the vocab has the content, else the next one after the vocab
// (as tokenizers' add_tokens numbers them; the id a file gives is not used).
// A normalized token is matched by its normalized content.
static void clean_hf(const U32Vec *in, U32Vec *out);
static int tok_add(ClipTokenizer *t, const TokSpec *k, const StrMap *vocab, const char *src, SdcError *err) {
    if (!k->content[0]) return 0; // an empty token matches nothing
    const int normalized = k->normalized < 0 ? !k->special : k->normalized;
    AddedTok *a = NULL;
    for (int i = 0; i < t->n_added && !a; i++)
        if (!strcmp(t->added[i].content, k->content)) a = &t->added[i];
    int32_t id = a ? a->id : strmap_get(vocab, k->content);
    if (id < 0) id = (int32_t)vocab->count + t->n_new++;
    U32Vec raw = {0}, cps = {0};
    push_utf8_str(&raw, k->content);
    if (normalized) clean_hf(&raw, &cps);
    else cps = raw, raw = (U32Vec){0};
    char *content = strdup(k->content);
    if (cps.oom || raw.oom || !content || !cps.n) {
        // nothing left after normalizing matches nothing; anything else is out
        // of memory (asked before the frees, which clear the flags)
        const int oom = cps.oom || raw.oom || !content;
        u32_free(&raw), u32_free(&cps), free(content);
        return oom ? sdc_err(err, SDC_ERR_OOM, "%s: out of memory", src) : 0;
    }
    u32_free(&raw);
    if (a) {
        free(a->cp), free(a->content);
    } else {
        if (t->n_added == t->cap_added) {
            int cap = t->cap_added ? 2 * t->cap_added : 8;
            AddedTok *na = realloc(t->added, (size_t)cap * sizeof *na);
            if (!na) {
                u32_free(&cps), free(content);
                return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", src);
            }
            t->added = na, t->cap_added = cap;
        }
        a = &t->added[t->n_added++];
    }
    a->content = content, a->cp = cps.v, a->n = (int)cps.n, a->id = id;
    a->normalized = (unsigned char)normalized;
    a->lstrip = (unsigned char)k->lstrip, a->rstrip = (unsigned char)k->rstrip;
    a->single_word = (unsigned char)k->single_word, a->special = (unsigned char)k->special;
    return 0;
}

static int jbool(const JsonDoc *d, const JsonNode *o, const char *key, int def) {
    const JsonNode *v = json_get(d, o, key);
    return v && v->type == JSON_BOOL ? v->boolean : def;
}

// A token value of a config: a string (special: an AddedToken with
// normalized false), or an AddedToken dict ({"content": ..., "normalized":
// ..., "__type": "AddedToken"}; special: its "special", else special_default).
// 1 when v is neither.
static int tok_spec(const JsonDoc *d, const JsonNode *v, int special_default, TokSpec *k) {
    memset(k, 0, sizeof *k);
    k->id = -1;
    if (v && v->type == JSON_STRING) {
        k->content = json_str(d, v), k->special = 1, k->normalized = 0;
        return 0;
    }
    if (!v || v->type != JSON_OBJECT || !json_str(d, json_get(d, v, "content"))) return 1;
    k->content = json_str(d, json_get(d, v, "content"));
    k->special = jbool(d, v, "special", special_default);
    const JsonNode *nm = json_get(d, v, "normalized");
    k->normalized = nm && nm->type == JSON_BOOL ? nm->boolean : -1;
    k->lstrip = jbool(d, v, "lstrip", 0), k->rstrip = jbool(d, v, "rstrip", 0);
    k->single_word = jbool(d, v, "single_word", 0);
    return 0;
}

static const JsonNode *jroot_get(const JsonDoc *d, const char *key) {
    return d ? json_get(d, json_root(d), key) : NULL;
}

// The added and special tokens of a folder, as transformers 5's
// from_pretrained sets them up: the tokens with ids (tokenizer_config's
// added_tokens_decoder, or else added_tokens.json and tokenizer.json's
// added_tokens), then the special tokens bos, eos, unk, sep, pad, cls, mask
// (tokenizer_config's, replaced by special_tokens_map's when there is no
// added_tokens_decoder; CLIPTokenizer's defaults otherwise), each taking the
// flags of the token with its content if there is one, in that order: the
// last registration of a content sets its flags. So SD 1.x folders (pad
// "<|endoftext|>" as a string) match EOS on the raw text and BOS on the
// normalized one, SD 2.x folders (pad "!") both on the normalized text and
// "!" on the raw text.
static int tok_register(ClipTokenizer *t, const StrMap *vocab, const TokConfigs *c, SdcError *err) {
    static const char *const KEYS[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                       "pad_token", "cls_token", "mask_token"};
    static const char *const CLIP_DEFAULT[] = {"<|startoftext|>", "<|endoftext|>", "<|endoftext|>", NULL,
                                               "<|endoftext|>", NULL, NULL};
    const char *src = c && c->src ? c->src : "CLIP tokenizer";
    const JsonDoc *tc = c ? c->tc : NULL, *stm = c ? c->stm : NULL;
    TokSpec *dec = NULL;
    int n_dec = 0, cap = 0, rc = 0;
#define DEC_PUSH(spec)                                                                     \
    do {                                                                                   \
        int i_ = 0;                                                                        \
        while (i_ < n_dec && dec[i_].id != (spec).id) i_++;                                \
        if (i_ == n_dec) {                                                                 \
            if (n_dec == cap) {                                                            \
                cap = cap ? 2 * cap : 16;                                                  \
                TokSpec *nd_ = realloc(dec, (size_t)cap * sizeof *nd_);                    \
                if (!nd_) { rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", src); goto done; } \
                dec = nd_;                                                                 \
            }                                                                              \
            n_dec++;                                                                       \
        }                                                                                  \
        dec[i_] = (spec);                                                                  \
    } while (0)
    const JsonNode *atd = jroot_get(tc, "added_tokens_decoder");
    const int legacy = !(atd && atd->type == JSON_OBJECT);
    if (!legacy) {
        for (const JsonNode *e = json_first(tc, atd); e; e = json_next(tc, e)) {
            TokSpec k;
            char *end;
            long id = strtol(json_key(tc, e), &end, 10);
            if (*end || id < 0 || id > INT32_MAX || tok_spec(tc, e, 0, &k)) {
                rc = sdc_err(err, SDC_ERR_FORMAT, "%s/tokenizer_config.json: added_tokens_decoder entry \"%s\" is not "
                             "{\"content\": ...} under a token id", src, json_key(tc, e));
                goto done;
            }
            k.id = (int32_t)id;
            DEC_PUSH(k);
        }
    } else {
        if (c && c->atj) { // added_tokens.json: special if a special token has its content
            const JsonNode *r = json_root(c->atj);
            for (const JsonNode *e = json_first(c->atj, r); e; e = json_next(c->atj, e)) {
                if (e->type != JSON_NUMBER || !e->is_int || e->i < 0 || e->i > INT32_MAX) {
                    rc = sdc_err(err, SDC_ERR_FORMAT, "%s/added_tokens.json: \"%s\" has no integer id", src,
                                 json_key(c->atj, e));
                    goto done;
                }
                int special = 0;
                for (int k = 0; k < 7; k++) {
                    TokSpec s2;
                    const JsonNode *v = jroot_get(stm, KEYS[k]);
                    if (!v) v = jroot_get(tc, KEYS[k]);
                    if (!tok_spec(stm && jroot_get(stm, KEYS[k]) ? stm : tc, v, 1, &s2) &&
                        !strcmp(s2.content, json_key(c->atj, e)))
                        special = 1;
                }
                TokSpec k = {.content = json_key(c->atj, e), .id = (int32_t)e->i, .normalized = !special,
                             .special = special};
                DEC_PUSH(k);
            }
        }
        const JsonNode *at = jroot_get(c ? c->tj : NULL, "added_tokens");
        for (const JsonNode *e = at ? json_first(c->tj, at) : NULL; e; e = json_next(c->tj, e)) {
            TokSpec k;
            const JsonNode *id = json_get(c->tj, e, "id");
            if (tok_spec(c->tj, e, 0, &k) || !id || id->type != JSON_NUMBER || !id->is_int || id->i < 0 ||
                id->i > INT32_MAX) {
                rc = sdc_err(err, SDC_ERR_FORMAT, "%s/tokenizer.json: an added_tokens entry lacks \"id\" or "
                             "\"content\"", src);
                goto done;
            }
            k.id = (int32_t)id->i;
            DEC_PUSH(k);
        }
    }
    for (int i = 0; i < n_dec; i++)
        if ((rc = tok_add(t, &dec[i], vocab, src, err))) goto done;
    // the special tokens, through the tokens with ids of the same content
    for (int k = 0; k < 7; k++) {
        const JsonDoc *d = legacy && jroot_get(stm, KEYS[k]) ? stm : tc;
        const JsonNode *v = jroot_get(d, KEYS[k]);
        TokSpec spec;
        if (v && v->type == JSON_NULL) continue;
        if (v && tok_spec(d, v, d == stm, &spec)) {
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: \"%s\" is neither a string nor {\"content\": ...}\n---> fix the "
                         "tokenizer's %s", src, KEYS[k], d == stm ? "special_tokens_map.json" : "tokenizer_config.json");
            goto done;
        }
        if (!v) {
            if (!CLIP_DEFAULT[k]) continue;
            spec = (TokSpec){.content = CLIP_DEFAULT[k], .id = -1, .normalized = 0, .special = 1};
        }
        spec.special = 1;
        for (int i = 0; i < n_dec; i++)
            if (!strcmp(dec[i].content, spec.content)) spec = dec[i], spec.special = 1;
        if ((rc = tok_add(t, &spec, vocab, src, err))) goto done;
        if (!strcmp(KEYS[k], "pad_token"))
            for (int i = 0; i < t->n_added; i++)
                if (!strcmp(t->added[i].content, spec.content)) t->pad = t->added[i].id;
    }
    // additional_special_tokens: a list, each as a special token
    const JsonDoc *ad = legacy && jroot_get(stm, "additional_special_tokens") ? stm : tc;
    const JsonNode *al = jroot_get(ad, "additional_special_tokens");
    for (const JsonNode *e = al && al->type == JSON_ARRAY ? json_first(ad, al) : NULL; e; e = json_next(ad, e)) {
        TokSpec spec;
        if (tok_spec(ad, e, 1, &spec)) continue;
        spec.special = 1;
        for (int i = 0; i < n_dec; i++)
            if (!strcmp(dec[i].content, spec.content)) spec = dec[i], spec.special = 1;
        if ((rc = tok_add(t, &spec, vocab, src, err))) goto done;
    }
done:
#undef DEC_PUSH
    free(dec);
    return rc;
}

// ----------------------------------------------------------------------------
// SD's tokenizer folders: the files SD 1.x and 2.x ship in tokenizer/
// (openai/clip-vit-large-patch14's, with pad "!" for SD 2.x). sdc's default
// tokenizer is registered from the same text it writes into exported folders.

static const char *const SD_BOS_EOS_UNK =
    "  \"bos_token\": {\"__type\": \"AddedToken\", \"content\": \"<|startoftext|>\", \"lstrip\": false, "
    "\"normalized\": true, \"rstrip\": false, \"single_word\": false},\n"
    "  \"eos_token\": {\"__type\": \"AddedToken\", \"content\": \"<|endoftext|>\", \"lstrip\": false, "
    "\"normalized\": true, \"rstrip\": false, \"single_word\": false},\n";
static const char *const SD_UNK =
    "  \"unk_token\": {\"__type\": \"AddedToken\", \"content\": \"<|endoftext|>\", \"lstrip\": false, "
    "\"normalized\": true, \"rstrip\": false, \"single_word\": false}\n";

// tokenizer_config.json (which = 0) or special_tokens_map.json (1) of SD 1.x
// (sd2 = 0) or SD 2.x, as a malloc'd string.
static char *sd_tokenizer_file(int sd2, int which, int max_length) {
    const char *pad = sd2 ? "!" : "<|endoftext|>";
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);
    if (!f) return NULL;
    if (which == 0) {
        fprintf(f, "{\n  \"add_prefix_space\": false,\n%s  \"do_lower_case\": true,\n  \"errors\": \"replace\",\n"
                   "  \"model_max_length\": %d,\n  \"pad_token\": \"%s\",\n"
                   "  \"special_tokens_map_file\": \"./special_tokens_map.json\",\n"
                   "  \"tokenizer_class\": \"CLIPTokenizer\",\n%s}\n",
                SD_BOS_EOS_UNK, max_length, pad, SD_UNK);
    } else { // the same tokens without "__type", as special_tokens_map.json has them
        fprintf(f, "{\n%s  \"pad_token\": \"%s\",\n%s}\n", SD_BOS_EOS_UNK, pad, SD_UNK);
    }
    if (fclose(f)) {
        free(out);
        return NULL;
    }
    if (which == 1) { // drop the "__type" members
        const char *key = "\"__type\": \"AddedToken\", ";
        for (char *p; (p = strstr(out, key));) memmove(p, p + strlen(key), strlen(p + strlen(key)) + 1);
    }
    return out;
}

// Registers the special tokens of SD's folder (sd2: SD 2.x's).
static int tok_register_sd(ClipTokenizer *t, const StrMap *vocab, int sd2, SdcError *err) {
    char *tc_text = sd_tokenizer_file(sd2, 0, CLIP_TOK_MAX_LEN), *stm_text = sd_tokenizer_file(sd2, 1, CLIP_TOK_MAX_LEN);
    JsonDoc tc = {0}, stm = {0};
    int rc = !tc_text || !stm_text ? sdc_err(err, SDC_ERR_OOM, "tokenizer: out of memory") : 0;
    if (!rc) rc = json_parse(&tc, tc_text, strlen(tc_text), "sdc's SD tokenizer_config.json", err);
    if (!rc) rc = json_parse(&stm, stm_text, strlen(stm_text), "sdc's SD special_tokens_map.json", err);
    const TokConfigs c = {.tc = &tc, .stm = &stm, .src = sd2 ? "sdc's SD 2.x tokenizer" : "sdc's SD 1.x tokenizer"};
    if (!rc) rc = tok_register(t, vocab, &c, err);
    json_free(&tc);
    json_free(&stm);
    free(tc_text);
    free(stm_text);
    return rc;
}


// ----------------------------------------------------------------------------
// building

// Builds the tokenizer from a vocab and the merges "a b" (in rank order).
// src names the files for error messages.
// Then its added and special tokens: those the config files in cfg name, or
// (cfg NULL) SD's folder's (sd 1 or 2), or CLIPTokenizer's defaults (sd 0).
static int tok_build(ClipTokenizer **out, const StrMap *vocab, char **merge_a, char **merge_b, size_t n_merges,
                     const char *src, const TokConfigs *cfg, int sd, SdcError *err) {
    ClipTokenizer *t = calloc(1, sizeof *t);
    if (!t) return sdc_err(err, SDC_ERR_OOM, "tokenizer: out of memory");
    t->mode = CLIP_TOK_HF;
    uint32_t cp_of_byte[256];
    int order[256];
    byte_unicode_table(cp_of_byte, order);
    for (int b = 0; b < 256; b++) {
        char s[16];
        int k = utf8_put(cp_of_byte[b], (unsigned char *)s);
        s[k] = 0;
        t->byte_id[b] = strmap_get(vocab, s);
        memcpy(s + k, "</w>", 5);
        t->byte_eow_id[b] = strmap_get(vocab, s);
        if (t->byte_id[b] < 0 || t->byte_eow_id[b] < 0) {
            clip_tok_free(t);
            return sdc_err(err, SDC_ERR_FORMAT, "%s: the vocab has no entry for byte 0x%02x (\"%s\")"
                           " ---> expected a byte-level CLIP vocab (256 byte symbols, each also with </w>)", src, b, s);
        }
    }
    t->bos = strmap_get(vocab, "<|startoftext|>");
    t->eos = strmap_get(vocab, "<|endoftext|>");
    t->pad = t->eos;
    if (t->bos < 0 || t->eos < 0) {
        clip_tok_free(t);
        return sdc_err(err, SDC_ERR_FORMAT, "%s: the vocab lacks <|startoftext|> or <|endoftext|>"
                       " ---> expected a CLIP vocab", src);
    }
    MergeTable *m = &t->merges;
    m->cap = 1;
    while (m->cap < n_merges * 2 + 2) m->cap <<= 1;
    m->key = malloc(m->cap * sizeof *m->key);
    m->rank = malloc(m->cap * sizeof *m->rank);
    m->merged = malloc(m->cap * sizeof *m->merged);
    if (!m->key || !m->rank || !m->merged) {
        clip_tok_free(t);
        return sdc_err(err, SDC_ERR_OOM, "tokenizer: out of memory for %zu merges", n_merges);
    }
    for (size_t i = 0; i < m->cap; i++) m->key[i] = MERGE_EMPTY;
    char joined[1024];
    for (size_t r = 0; r < n_merges; r++) {
        int32_t a = strmap_get(vocab, merge_a[r]), b = strmap_get(vocab, merge_b[r]);
        size_t la = strlen(merge_a[r]), lb = strlen(merge_b[r]);
        int32_t c = -1;
        if (la + lb < sizeof joined) {
            memcpy(joined, merge_a[r], la);
            memcpy(joined + la, merge_b[r], lb + 1);
            c = strmap_get(vocab, joined);
        }
        if (a < 0 || b < 0 || c < 0) {
            clip_tok_free(t);
            return sdc_err(err, SDC_ERR_FORMAT, "%s: merge %zu \"%s %s\" uses a symbol missing from the vocab"
                           " ---> vocab and merges must come from the same tokenizer", src, r + 1,
                           merge_a[r], merge_b[r]);
        }
        merge_insert(m, a, b, (int32_t)r, c);
    }
    int rc = cfg ? tok_register(t, vocab, cfg, err) : sd ? tok_register_sd(t, vocab, sd == 2, err)
                                                        : tok_register(t, vocab, NULL, err);
    if (rc) {
        clip_tok_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

// ----------------------------------------------------------------------------
// loading: openai/open_clip gzip merges file

static int read_gz(const char *path, char **buf, size_t *len, SdcError *err) {
    gzFile f = gzopen(path, "rb");
    if (!f) return sdc_err(err, SDC_ERR_IO, "%s: cannot open ---> expected the gzip CLIP merges file"
                           " (bpe_simple_vocab_16e6.txt.gz)", path);
    size_t cap = 1 << 22, n = 0;
    char *b = malloc(cap + 1);
    for (;;) {
        if (!b) {
            gzclose(f);
            return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
        }
        int got = gzread(f, b + n, (unsigned)(cap - n));
        if (got < 0) {
            int e;
            const char *msg = gzerror(f, &e);
            sdc_err(err, SDC_ERR_FORMAT, "%s: gzip read failed: %s ---> is the file truncated?", path, msg);
            free(b);
            gzclose(f);
            return SDC_ERR_FORMAT;
        }
        n += (size_t)got;
        if (got == 0) break;
        if (n == cap) {
            cap *= 2;
            char *nb = realloc(b, cap + 1);
            if (!nb) free(b);
            b = nb;
        }
    }
    gzclose(f);
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

// Splits buf (modified) into lines; *lines points into buf.
static int split_lines(char *buf, size_t len, char ***lines, size_t *n_lines) {
    size_t n = 1;
    for (size_t i = 0; i < len; i++) n += buf[i] == '\n';
    char **l = malloc(n * sizeof *l);
    if (!l) return -1;
    size_t k = 0;
    char *p = buf;
    l[k++] = p;
    for (size_t i = 0; i < len; i++) {
        if (buf[i] == '\n') {
            buf[i] = 0;
            if (i > 0 && buf[i - 1] == '\r') buf[i - 1] = 0;
            l[k++] = buf + i + 1;
        }
    }
    *lines = l;
    *n_lines = k;
    return 0;
}

// A merge line "a b" -> a, b (in place). 0 when it is not exactly two fields.
static int split_merge(char *line, char **a, char **b) {
    char *sp = strchr(line, ' ');
    if (!sp || sp == line || !sp[1] || strchr(sp + 1, ' ')) return 0;
    *sp = 0;
    *a = line;
    *b = sp + 1;
    return 1;
}

// sd: the special tokens of SD 1.x's (1) or 2.x's (2) tokenizer folder, or
// CLIPTokenizer's defaults (0).
static int clip_tok_load_gz_as(ClipTokenizer **out, const char *path, int sd, SdcError *err) {
    // openai CLIP: line 0 is a header; lines 1 .. 49152-256-2 are the merges
    // CLIP uses; the vocab is 256 byte symbols, the same with </w>, one entry
    // per merge, then <|startoftext|> and <|endoftext|>.
    enum { N_MERGES = 49152 - 256 - 2 };
    char *buf = NULL, **lines = NULL, **ma = NULL, **mb = NULL;
    size_t len = 0, n_lines = 0;
    StrMap vocab = {0};
    SDC_TRY(read_gz(path, &buf, &len, err));
    int rc = 0;
    if (split_lines(buf, len, &lines, &n_lines) || strmap_init(&vocab, CLIP_TOK_VOCAB) ||
        !(ma = malloc(N_MERGES * sizeof *ma)) || !(mb = malloc(N_MERGES * sizeof *mb))) {
        rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
        goto done;
    }
    if (n_lines < N_MERGES + 1) {
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: %zu lines, expected at least %d (a header and %d merges)"
                     " ---> is this bpe_simple_vocab_16e6.txt.gz?", path, n_lines, N_MERGES + 1, N_MERGES);
        goto done;
    }
    for (size_t r = 0; r < N_MERGES; r++) {
        if (!split_merge(lines[r + 1], &ma[r], &mb[r])) {
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: line %zu is not a merge \"a b\"", path, r + 2);
            goto done;
        }
    }
    uint32_t cp_of_byte[256];
    int order[256];
    byte_unicode_table(cp_of_byte, order);
    int32_t id = 0;
    char s[1024];
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < 256; i++) {
            int k = utf8_put(cp_of_byte[order[i]], (unsigned char *)s);
            strcpy(s + k, pass ? "</w>" : "");
            if (strmap_put(&vocab, s, id++)) goto oom;
        }
    }
    for (size_t r = 0; r < N_MERGES; r++) {
        if (snprintf(s, sizeof s, "%s%s", ma[r], mb[r]) >= (int)sizeof s) {
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: merge on line %zu is too long", path, r + 2);
            goto done;
        }
        if (strmap_put(&vocab, s, id++)) goto oom;
    }
    if (strmap_put(&vocab, "<|startoftext|>", id++) || strmap_put(&vocab, "<|endoftext|>", id++)) goto oom;
    rc = tok_build(out, &vocab, ma, mb, N_MERGES, path, NULL, sd, err);
    goto done;
oom:
    rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory building the vocab", path);
done:
    strmap_free(&vocab);
    free(ma);
    free(mb);
    free(lines);
    free(buf);
    return rc;
}

int clip_tok_load_gz(ClipTokenizer **out, const char *path, SdcError *err) {
    return clip_tok_load_gz_as(out, path, 0, err);
}

// ----------------------------------------------------------------------------
// loading: a diffusers tokenizer/ folder (vocab.json + merges.txt)

static int read_file(const char *path, char **buf, size_t *len, SdcError *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return sdc_err(err, SDC_ERR_IO, "%s: cannot open", path);
    // sized from the file (a tokenizer folder's vocab.json is about 1 MB), grown if it grows while read
    struct stat st;
    size_t cap = fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : 0, n = 0;
    if (cap < 4096) cap = 4096;
    char *b = malloc(cap + 1);
    while (b) {
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        cap *= 2;
        char *nb = realloc(b, cap + 1);
        if (!nb) free(b);
        b = nb;
    }
    int bad = ferror(f);
    fclose(f);
    if (!b) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
    if (bad) {
        free(b);
        return sdc_err(err, SDC_ERR_IO, "%s: read failed", path);
    }
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

static const char *json_ws(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

static int hex4(const char *p, uint32_t *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        *v = *v * 16 + (uint32_t)d;
    }
    return 0;
}

// Parses a JSON string at p (on the '"') into dst (cap bytes); returns the
// position after the closing quote, or NULL.
static const char *json_string(const char *p, char *dst, size_t cap) {
    if (*p != '"') return NULL;
    p++;
    size_t k = 0;
    while (*p && *p != '"') {
        uint32_t cp;
        if (*p == '\\') {
            p++;
            switch (*p) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (hex4(p + 1, &cp)) return NULL;
                p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF && p[1] == '\\' && p[2] == 'u') {
                    uint32_t lo;
                    if (!hex4(p + 3, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        p += 6;
                    }
                }
                break;
            default: return NULL;
            }
            p++;
            if (k + 4 >= cap) return NULL;
            k += (size_t)utf8_put(cp, (unsigned char *)dst + k);
        } else {
            if (k + 1 >= cap) return NULL;
            dst[k++] = *p++;
        }
    }
    if (*p != '"') return NULL;
    dst[k] = 0;
    return p + 1;
}

// vocab.json: one flat object {"token": id, ...}.
static int parse_vocab_json(const char *path, char *buf, StrMap *vocab, SdcError *err) {
    const char *p = json_ws(buf);
    if (*p != '{') return sdc_err(err, SDC_ERR_FORMAT, "%s: expected a JSON object {\"token\": id, ...}", path);
    p = json_ws(p + 1);
    char key[1024];
    int line_hint = 0;
    while (*p != '}') {
        const char *q = json_string(p, key, sizeof key);
        if (!q) break;
        p = json_ws(q);
        if (*p != ':') break;
        p = json_ws(p + 1);
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX) break;
        if (strmap_put(vocab, key, (int32_t)v)) {
            return sdc_err(err, SDC_ERR_FORMAT, "%s: more than %zu entries or out of memory"
                           " ---> a CLIP vocab has %d", path, vocab->cap / 2, CLIP_TOK_VOCAB);
        }
        p = json_ws(end);
        line_hint++;
        if (*p == ',') p = json_ws(p + 1);
        else if (*p != '}') break;
    }
    if (*p != '}')
        return sdc_err(err, SDC_ERR_FORMAT, "%s: malformed JSON after entry %d (near \"%.20s\")"
                       " ---> expected {\"token\": id, ...}", path, line_hint, p);
    return 0;
}

static int load_shipped(ClipTokenizer **out, int sd2, SdcError *err) {
    int rc = clip_tok_load_gz_as(out, SDC_DATA_DIR "/bpe_simple_vocab_16e6.txt.gz", sd2 ? 2 : 1, err);
    if (rc) sdc_err_wrap(err, rc == SDC_ERR_OOM ? "loading the shipped CLIP vocab"
                                                : "loading the shipped CLIP vocab (---> was sdc moved after the build?)");
    return rc;
}

int clip_tok_load_default(ClipTokenizer **out, SdcError *err) { return load_shipped(out, 0, err); }
int clip_tok_load_default_sd2(ClipTokenizer **out, SdcError *err) { return load_shipped(out, 1, err); }

// ----------------------------------------------------------------------------
// loading: a diffusers / transformers tokenizer folder

// A JSON file of the folder into d if it exists (*have = 1).
static int opt_json(const char *dir, const char *name, JsonDoc *d, int *have, SdcError *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    *have = 0;
    memset(d, 0, sizeof *d);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    SDC_TRY(json_parse_file(d, path, 64u << 20, err));
    if (json_root(d)->type != JSON_OBJECT) {
        json_free(d);
        return sdc_err(err, SDC_ERR_FORMAT, "%s: expected a JSON object at the top", path);
    }
    *have = 1;
    return 0;
}

// tokenizer.json's BPE model: vocab and merges (["a b", ...] or [["a", "b"], ...]).
static int vocab_from_tokenizer_json(const JsonDoc *tj, const char *path, StrMap *vocab, char ***ma, char ***mb,
                                     size_t *n_merges, char **pool, SdcError *err) {
    const JsonNode *model = jroot_get(tj, "model");
    const char *type = json_str(tj, json_get(tj, model, "type"));
    const JsonNode *v = json_get(tj, model, "vocab"), *m = json_get(tj, model, "merges");
    const char *suffix = json_str(tj, json_get(tj, model, "end_of_word_suffix"));
    if (!type || strcmp(type, "BPE") || !v || v->type != JSON_OBJECT || !m || m->type != JSON_ARRAY)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: model is not a BPE model with vocab and merges\n---> is this "
                       "a CLIP tokenizer?", path);
    if (!suffix || strcmp(suffix, "</w>"))
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: model.end_of_word_suffix is \"%s\", CLIP's is \"</w>\"\n---> "
                       "is this a CLIP tokenizer?", path, suffix ? suffix : "null");
    if (strmap_init(vocab, (size_t)v->n * 2 + 16)) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
    for (const JsonNode *e = json_first(tj, v); e; e = json_next(tj, e)) {
        if (e->type != JSON_NUMBER || !e->is_int || e->i < 0 || e->i > INT32_MAX)
            return sdc_err(err, SDC_ERR_FORMAT, "%s: model.vocab[\"%.40s\"] is not a token id", path, json_key(tj, e));
        if (strmap_put(vocab, json_key(tj, e), (int32_t)e->i)) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
    }
    size_t bytes = 0;
    for (const JsonNode *e = json_first(tj, m); e; e = json_next(tj, e)) {
        if (e->type == JSON_STRING) bytes += (size_t)e->str_len + 1;
        else if (e->type == JSON_ARRAY && e->n == 2 && json_str(tj, json_at(tj, e, 0)) && json_str(tj, json_at(tj, e, 1)))
            bytes += (size_t)json_at(tj, e, 0)->str_len + (size_t)json_at(tj, e, 1)->str_len + 2;
        else return sdc_err(err, SDC_ERR_FORMAT, "%s: a model.merges entry is neither \"a b\" nor [\"a\", \"b\"]", path);
    }
    *pool = malloc(bytes + 1);
    *ma = malloc(((size_t)m->n + 1) * sizeof **ma);
    *mb = malloc(((size_t)m->n + 1) * sizeof **mb);
    if (!*pool || !*ma || !*mb) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
    char *q = *pool;
    size_t k = 0;
    for (const JsonNode *e = json_first(tj, m); e; e = json_next(tj, e), k++) {
        if (e->type == JSON_STRING) {
            memcpy(q, json_str(tj, e), (size_t)e->str_len + 1);
            if (!split_merge(q, &(*ma)[k], &(*mb)[k]))
                return sdc_err(err, SDC_ERR_FORMAT, "%s: model.merges[%zu] is not \"a b\"", path, k);
            q += e->str_len + 1;
        } else {
            for (int j = 0; j < 2; j++) {
                const JsonNode *x = json_at(tj, e, j);
                memcpy(q, json_str(tj, x), (size_t)x->str_len + 1);
                (j ? *mb : *ma)[k] = q;
                q += x->str_len + 1;
            }
        }
    }
    *n_merges = k;
    return 0;
}

int clip_tok_load_dir(ClipTokenizer **out, const char *dir, SdcError *err) {
    char vpath[4096], mpath[4096];
    snprintf(vpath, sizeof vpath, "%s/vocab.json", dir);
    snprintf(mpath, sizeof mpath, "%s/merges.txt", dir);
    char *vbuf = NULL, *mbuf = NULL, **lines = NULL, **ma = NULL, **mb = NULL, *pool = NULL;
    size_t vlen, mlen, n_lines = 0, n_merges = 0;
    StrMap vocab = {0};
    JsonDoc tc, stm, atj, tj;
    int have_tc = 0, have_stm = 0, have_atj = 0, have_tj = 0;
    int rc = opt_json(dir, "tokenizer_config.json", &tc, &have_tc, err);
    if (!rc) rc = opt_json(dir, "special_tokens_map.json", &stm, &have_stm, err);
    if (!rc) rc = opt_json(dir, "added_tokens.json", &atj, &have_atj, err);
    if (!rc) rc = opt_json(dir, "tokenizer.json", &tj, &have_tj, err);
    if (rc) goto done;
    if (have_tj) { // transformers' fast tokenizers (and every transformers 5 save) read this one
        char tpath[4096];
        snprintf(tpath, sizeof tpath, "%s/tokenizer.json", dir);
        if ((rc = vocab_from_tokenizer_json(&tj, tpath, &vocab, &ma, &mb, &n_merges, &pool, err))) goto done;
    } else {
        if ((rc = read_file(vpath, &vbuf, &vlen, err))) {
            sdc_err_wrap(err, "loading a tokenizer folder (---> expected %s to hold tokenizer.json, or vocab.json "
                         "and merges.txt, as a diffusers tokenizer/ folder does)", dir);
            goto done;
        }
        if ((rc = read_file(mpath, &mbuf, &mlen, err))) goto done;
        // the vocab's table sized to its entries: no more than the file's ':'s (one per entry), and at most
        // twice CLIP's vocab (more is refused: not a CLIP vocab)
        size_t colons = 0;
        for (const char *c = vbuf; (c = memchr(c, ':', vlen - (size_t)(c - vbuf))); c++) colons++;
        if (split_lines(mbuf, mlen, &lines, &n_lines) ||
            strmap_init(&vocab, colons < CLIP_TOK_VOCAB * 2 ? colons + 1 : CLIP_TOK_VOCAB * 2) ||
            !(ma = malloc(n_lines * sizeof *ma)) || !(mb = malloc(n_lines * sizeof *mb))) {
            rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", dir);
            goto done;
        }
        if ((rc = parse_vocab_json(vpath, vbuf, &vocab, err))) goto done;
        for (size_t i = 0; i < n_lines; i++) {
            char *l = lines[i];
            if (!*l || (i == 0 && strncmp(l, "#version", 8) == 0)) continue;
            if (!split_merge(l, &ma[n_merges], &mb[n_merges])) {
                rc = sdc_err(err, SDC_ERR_FORMAT, "%s: line %zu is not a merge \"a b\"", mpath, i + 1);
                goto done;
            }
            n_merges++;
        }
    }
    const TokConfigs cfg = {.tc = have_tc ? &tc : NULL, .stm = have_stm ? &stm : NULL, .atj = have_atj ? &atj : NULL,
                            .tj = have_tj ? &tj : NULL, .src = dir};
    rc = tok_build(out, &vocab, ma, mb, n_merges, dir, &cfg, 0, err);
done:
    if (have_tc) json_free(&tc);
    if (have_stm) json_free(&stm);
    if (have_atj) json_free(&atj);
    if (have_tj) json_free(&tj);
    strmap_free(&vocab);
    free(pool);
    free(ma);
    free(mb);
    free(lines);
    free(mbuf);
    free(vbuf);
    return rc;
}

// ----------------------------------------------------------------------------
// writing a tokenizer folder from the shipped vocab

static int write_all(const char *path, const char *text, size_t n, SdcError *err) {
    FILE *f = fopen(path, "wb");
    if (!f) return sdc_err(err, SDC_ERR_IO, "%s: cannot create (%s)", path, strerror(errno));
    int bad = fwrite(text, 1, n, f) != n, e = errno;
    if (fclose(f) && !bad) bad = 1, e = errno;
    return bad ? sdc_err(err, SDC_ERR_IO, "%s: cannot write (%s)", path, strerror(e)) : 0;
}

int clip_tok_write_hf(const char *dir, ClipTokFolder kind, SdcError *err) {
    enum { N_MERGES = 49152 - 256 - 2 };
    const char *gz = SDC_DATA_DIR "/bpe_simple_vocab_16e6.txt.gz";
    char *buf = NULL, **lines = NULL, *vj = NULL, *mt = NULL;
    size_t len = 0, n_lines = 0, nv = 0, nm = 0;
    SDC_TRY(read_gz(gz, &buf, &len, err));
    int rc = 0;
    FILE *fv = NULL, *fm = NULL;
    if (split_lines(buf, len, &lines, &n_lines) || !(fv = open_memstream(&vj, &nv)) ||
        !(fm = open_memstream(&mt, &nm))) {
        rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", gz);
        goto done;
    }
    if (n_lines < N_MERGES + 1) {
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: %zu lines, expected a header and %d merges", gz, n_lines, N_MERGES);
        goto done;
    }
    // vocab.json in id order: byte symbols, the same with </w>, the merges, the specials
    uint32_t cp_of_byte[256];
    int order[256], id = 0;
    byte_unicode_table(cp_of_byte, order);
    fputc('{', fv);
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < 256; i++) {
            unsigned char u[8];
            int k = utf8_put(cp_of_byte[order[i]], u);
            fprintf(fv, "%s\"", id ? ", " : "");
            if (k == 1 && (u[0] == '"' || u[0] == '\\')) fputc('\\', fv);
            fwrite(u, 1, (size_t)k, fv);
            fprintf(fv, "%s\": %d", pass ? "</w>" : "", id++);
        }
    fputs("#version: 0.2\n", fm);
    for (size_t r = 0; r < N_MERGES; r++) {
        const char *l = lines[r + 1];
        fprintf(fv, ", \"");
        for (const char *p = l; *p; p++) {
            if (*p == ' ') continue;
            if (*p == '"' || *p == '\\') fputc('\\', fv);
            fputc(*p, fv);
        }
        fprintf(fv, "\": %d", id++);
        fprintf(fm, "%s\n", l);
    }
    fprintf(fv, ", \"<|startoftext|>\": %d, \"<|endoftext|>\": %d}\n", id, id + 1);
    if (fclose(fv) | fclose(fm)) {
        fv = fm = NULL;
        rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", gz);
        goto done;
    }
    fv = fm = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    if ((rc = write_all(path, vj, nv, err))) goto done;
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    if ((rc = write_all(path, mt, nm, err))) goto done;
    for (int which = 0; kind != CLIP_TOK_FOLDER_BARE && which < 2; which++) {
        char *text = sd_tokenizer_file(kind == CLIP_TOK_FOLDER_SD2, which, CLIP_TOK_MAX_LEN);
        if (!text) {
            rc = sdc_err(err, SDC_ERR_OOM, "tokenizer: out of memory");
            goto done;
        }
        snprintf(path, sizeof path, "%s/%s", dir, which ? "special_tokens_map.json" : "tokenizer_config.json");
        rc = write_all(path, text, strlen(text), err);
        free(text);
        if (rc) goto done;
    }
done:
    if (fv) fclose(fv);
    if (fm) fclose(fm);
    free(vj);
    free(mt);
    free(lines);
    free(buf);
    return rc;
}
// ----------------------------------------------------------------------------
// text cleanup of each mode

static int is_pyspace(uint32_t c) { return (uni_flags(c) & UNI_PYSPACE) != 0; }

// open_clip: whitespace_clean(basic_clean(text)).lower()
static void clean_open_clip(const U32Vec *in, U32Vec *out) {
    U32Vec a = {0}, b = {0}, c = {0};
    ftfy_fix_text(in, &a);
    html_unescape(&a, &b);
    a.n = 0;
    html_unescape(&b, &a);
    // " ".join(text.split()) (also covers basic_clean's strip)
    for (size_t i = 0; i < a.n;) {
        while (i < a.n && is_pyspace(a.v[i])) i++;
        if (i == a.n) break;
        if (c.n) u32_push(&c, ' ');
        while (i < a.n && !is_pyspace(a.v[i])) u32_push(&c, a.v[i++]);
    }
    lower_python(&c, out);
    if (a.oom || b.oom || c.oom) out->oom = 1;
    u32_free(&a);
    u32_free(&b);
    u32_free(&c);
}

// transformers CLIPTokenizer normalizer: NFC, \s+ -> " ", lowercase.
static void clean_hf(const U32Vec *in, U32Vec *out) {
    U32Vec a = {0}, b = {0};
    nfc(in, &a);
    for (size_t i = 0; i < a.n; i++) {
        if (uni_flags(a.v[i]) & UNI_S) {
            while (i + 1 < a.n && (uni_flags(a.v[i + 1]) & UNI_S)) i++;
            u32_push(&b, ' ');
        } else {
            u32_push(&b, a.v[i]);
        }
    }
    lower_chars(&b, out);
    if (a.oom || b.oom) out->oom = 1;
    u32_free(&a);
    u32_free(&b);
}

// ----------------------------------------------------------------------------
// pre-tokenisation and BPE

// BPE of one piece (its UTF-8 bytes), appending vocab ids to out.
static void bpe_word(const ClipTokenizer *t, const unsigned char *bytes, size_t n, U32Vec *out) {
    int32_t stack_buf[256];
    int32_t *sym = n <= 256 ? stack_buf : malloc(n * sizeof *sym);
    if (!sym) {
        out->oom = 1;
        return;
    }
    for (size_t i = 0; i < n; i++) sym[i] = i + 1 < n ? t->byte_id[bytes[i]] : t->byte_eow_id[bytes[i]];
    size_t len = n;
    for (;;) { // merge the best-ranked pair everywhere, left to right
        int32_t best = -1, best_a = 0, best_b = 0, best_m = 0, m;
        for (size_t i = 0; i + 1 < len; i++) {
            int32_t r = merge_lookup(&t->merges, sym[i], sym[i + 1], &m);
            if (r >= 0 && (best < 0 || r < best)) best = r, best_a = sym[i], best_b = sym[i + 1], best_m = m;
        }
        if (best < 0) break;
        size_t k = 0;
        for (size_t i = 0; i < len; i++) {
            if (i + 1 < len && sym[i] == best_a && sym[i + 1] == best_b) {
                sym[k++] = best_m;
                i++;
            } else {
                sym[k++] = sym[i];
            }
        }
        len = k;
        if (len == 1) break;
    }
    for (size_t i = 0; i < len; i++) u32_push(out, (uint32_t)sym[i]);
    if (sym != stack_buf) free(sym);
}

static void bpe_piece(const ClipTokenizer *t, const uint32_t *cp, size_t n, U32Vec *out, unsigned char **buf,
                      size_t *buf_cap) {
    if (n * 4 > *buf_cap) {
        size_t cap = n * 4 + 64;
        unsigned char *p = realloc(*buf, cap);
        if (!p) {
            out->oom = 1;
            return;
        }
        *buf = p;
        *buf_cap = cap;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += (size_t)utf8_put(cp[i], *buf + k);
    bpe_word(t, *buf, k, out);
}

// Does s[i..] start with the ASCII string lit? fold: regex IGNORECASE on
// lowercased text, where U+017F (long s) still matches 's' and U+212A 'k'.
static int match_lit(const U32Vec *s, size_t i, const char *lit, int fold) {
    size_t k = 0;
    for (; lit[k]; k++) { // fails at the first character, mostly
        if (i + k >= s->n) return 0;
        uint32_t c = s->v[i + k], l = (unsigned char)lit[k];
        if (c == l) continue;
        if (fold && ((l == 's' && c == 0x17F) || (l == 'k' && c == 0x212A) || (c < 128 && (c | 0x20) == l && l >= 'a' && l <= 'z')))
            continue;
        return 0;
    }
    return (int)k;
}

// CLIP's regex over cleaned text:
//   <special>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// open_clip compiles it with IGNORECASE and its specials are <start_of_text>,
// <end_of_text> (emitted as BOS / EOS). transformers matches it case-sensitively
// with <|startoftext|>, <|endoftext|>, but those pieces are plain text there
// (the ByteLevel pre-tokenizer splits them again into "<|", the word, "|>").
static void pretokenize(const ClipTokenizer *t, const U32Vec *s, int open_clip, U32Vec *out) {
    static const char *contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    unsigned fl = open_clip ? UNI_LI : UNI_L, fn = open_clip ? UNI_NI : UNI_N;
    unsigned char *buf = NULL;
    size_t buf_cap = 0;
    size_t i = 0;
    while (i < s->n) {
        int k;
        uint32_t c0 = s->v[i]; // every special starts with '<', every contraction with '\''
        if (c0 == '<' && open_clip) {
            if ((k = match_lit(s, i, "<start_of_text>", 1))) {
                u32_push(out, (uint32_t)t->bos);
                i += (size_t)k;
                continue;
            }
            if ((k = match_lit(s, i, "<end_of_text>", 1))) {
                u32_push(out, (uint32_t)t->eos);
                i += (size_t)k;
                continue;
            }
        } else if (c0 == '<') {
            static const char *hf_special[] = {"<|startoftext|>", "<|endoftext|>"};
            int hit = 0;
            for (int q = 0; q < 2 && !hit; q++) {
                if ((k = match_lit(s, i, hf_special[q], 0))) {
                    bpe_piece(t, s->v + i, 2, out, &buf, &buf_cap);
                    bpe_piece(t, s->v + i + 2, (size_t)k - 4, out, &buf, &buf_cap);
                    bpe_piece(t, s->v + i + k - 2, 2, out, &buf, &buf_cap);
                    i += (size_t)k;
                    hit = 1;
                }
            }
            if (hit) continue;
        }
        int hit = 0;
        for (int q = 0; c0 == '\'' && q < 7 && !hit; q++) {
            if ((k = match_lit(s, i, contractions[q], open_clip))) {
                bpe_piece(t, s->v + i, (size_t)k, out, &buf, &buf_cap);
                i += (size_t)k;
                hit = 1;
            }
        }
        if (hit) continue;
        unsigned f = uni_flags(s->v[i]);
        size_t j = i + 1;
        if (f & fl) {
            while (j < s->n && (uni_flags(s->v[j]) & fl)) j++;
        } else if (f & fn) {
            // one digit per piece
        } else if (open_clip ? (f & UNI_OI) : !(f & (UNI_S | UNI_L | UNI_N))) {
            while (j < s->n) {
                unsigned g = uni_flags(s->v[j]);
                if (open_clip ? !(g & UNI_OI) : (g & (UNI_S | UNI_L | UNI_N)) != 0) break;
                j++;
            }
        } else {
            i++; // whitespace: no alternative matches here
            continue;
        }
        bpe_piece(t, s->v + i, j - i, out, &buf, &buf_cap);
        i = j;
    }
    free(buf);
}

// ----------------------------------------------------------------------------
// added tokens in the prompt (tokenizers' AddedVocabulary)

// a single_word token's neighbours: tokenizers' word characters (\\w: alphanumeric or '_')
static int is_word_char(uint32_t c) { return c == '_' || (uni_flags(c) & (UNI_L | UNI_N)) != 0; }
static int is_ws(uint32_t c) { return (uni_flags(c) & UNI_S) != 0; }

typedef void (*TextFn)(const ClipTokenizer *t, const uint32_t *s, size_t n, U32Vec *out);

// Splits s (n code points) on the added tokens of one kind (normalized 0 / 1)
// as tokenizers' find_matches does: the non-overlapping leftmost-longest
// matches (Aho-Corasick), a single_word token kept only between non-word
// characters, lstrip / rstrip taking the whitespace beside the token into it;
// tokens go to out as ids, the text between them to text().
static void split_added(const ClipTokenizer *t, const uint32_t *s, size_t n, int normalized, TextFn text,
                        U32Vec *out) {
    size_t pos = 0, done = 0; // search from pos; s[0, done) is handled
    while (pos < n) {
        int best = -1;
        size_t at = n;
        for (size_t i = pos; i < n && best < 0; i++) // the leftmost start, then the longest there
            for (int k = 0; k < t->n_added; k++) {
                const AddedTok *a = &t->added[k];
                if (a->normalized != normalized || (size_t)a->n > n - i || a->cp[0] != s[i]) continue;
                if (memcmp(a->cp, s + i, (size_t)a->n * sizeof *s)) continue;
                if (best < 0 || a->n > t->added[best].n) best = k, at = i;
            }
        if (best < 0) break;
        const AddedTok *a = &t->added[best];
        size_t start = at, stop = at + (size_t)a->n;
        pos = stop;
        if (a->single_word && ((start > 0 && is_word_char(s[start - 1])) || (stop < n && is_word_char(s[stop]))))
            continue;
        if (a->lstrip) {
            while (start > done && is_ws(s[start - 1])) start--;
        }
        if (a->rstrip)
            while (stop < n && is_ws(s[stop])) stop++;
        if (done < start) text(t, s + done, start - done, out);
        u32_push(out, (uint32_t)a->id);
        done = pos = stop;
    }
    if (done < n) text(t, s + done, n - done, out);
}

static void text_pretokenized(const ClipTokenizer *t, const uint32_t *s, size_t n, U32Vec *out) {
    const U32Vec piece = {.v = (uint32_t *)s, .n = n};
    pretokenize(t, &piece, 0, out);
}

static void text_normalized(const ClipTokenizer *t, const uint32_t *s, size_t n, U32Vec *out) {
    const U32Vec piece = {.v = (uint32_t *)s, .n = n};
    U32Vec clean = {0};
    clean_hf(&piece, &clean);
    split_added(t, clean.v, clean.n, 1, text_pretokenized, out);
    if (clean.oom) out->oom = 1;
    u32_free(&clean);
}

// All ids of text (no BOS / EOS) into out.
static int tok_run(const ClipTokenizer *t, const char *text, U32Vec *out, SdcError *err) {
    if (!t) return sdc_err(err, SDC_ERR_ARG, "clip tokenizer: NULL tokenizer ---> load one first");
    if (!text) return sdc_err(err, SDC_ERR_ARG, "clip tokenizer: NULL prompt ---> pass \"\" for an empty prompt");
    U32Vec raw = {0}, clean = {0};
    utf8_decode(text, strlen(text), &raw);
    if (t->mode == CLIP_TOK_OPEN_CLIP) {
        clean_open_clip(&raw, &clean);
        pretokenize(t, &clean, 1, out);
    } else {
        // transformers: the added tokens matched on the raw text first, then
        // each stretch between them normalized, the added tokens matched on
        // the normalized text, and the stretches left pre-tokenized
        split_added(t, raw.v, raw.n, 0, text_normalized, out);
    }
    int oom = raw.oom || clean.oom || out->oom;
    u32_free(&raw);
    u32_free(&clean);
    if (oom) return sdc_err(err, SDC_ERR_OOM, "clip tokenizer: out of memory on a %zu-byte prompt", strlen(text));
    return 0;
}

int clip_tok_tokenize(const ClipTokenizer *t, const char *text, int32_t *ids, int cap, int *n, SdcError *err) {
    U32Vec v = {0};
    int rc = tok_run(t, text, &v, err);
    if (!rc) {
        for (size_t i = 0; i < v.n && (int)i < cap; i++) ids[i] = (int32_t)v.v[i];
        *n = (int)v.n;
    }
    free(v.v);
    return rc;
}

int clip_tok_encode(const ClipTokenizer *t, const char *text, int32_t *ids, int max_len, int32_t pad_id,
                    int *n_truncated, SdcError *err) {
    if (max_len < 2)
        return sdc_err(err, SDC_ERR_ARG, "clip_tok_encode: max_len %d ---> need room for BOS and EOS (CLIP uses %d)",
                       max_len, CLIP_TOK_MAX_LEN);
    U32Vec v = {0};
    int rc = tok_run(t, text, &v, err);
    if (rc) {
        free(v.v);
        return rc;
    }
    size_t keep = v.n < (size_t)(max_len - 2) ? v.n : (size_t)(max_len - 2);
    ids[0] = t->bos;
    for (size_t i = 0; i < keep; i++) ids[1 + i] = (int32_t)v.v[i]; // ids < 49408
    ids[keep + 1] = t->eos;
    for (int i = (int)keep + 2; i < max_len; i++) ids[i] = pad_id;
    if (n_truncated) *n_truncated = (int)(v.n - keep);
    free(v.v);
    return 0;
}
