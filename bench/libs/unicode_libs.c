// unicode_libs.c: the Unicode data the CLIP tokenizer uses (src/text/
// unicode_tables.c, generated from Python's unicodedata / regex / str.lower
// by tools/gen_unicode_tables.py) against utf8proc (Debian 12: 2.8.0), code
// point by code point: letter and number classes, str.lower(), canonical
// combining classes and decompositions. A code point where they differ is a
// prompt that would tokenize differently from the Python reference if the
// tables were replaced by utf8proc. The evidence behind the utf8proc entry
// of docs/decisions.md. Reads the tables; changes nothing in src/text/.
// Not part of the build:
//   apt-get install libutf8proc-dev
//   gcc -O2 -Isrc bench/libs/unicode_libs.c src/text/unicode_tables.c -lutf8proc -o /tmp/unicode_libs
#include <stdio.h>
#include <string.h>
#include <utf8proc.h>

#include "text/unicode_tables.h"

static int runs_find(const UniRuns *r, uint32_t cp) {
    int lo = 0, hi = r->n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (r->start[mid] <= cp) lo = mid;
        else hi = mid - 1;
    }
    return r->val[lo];
}

static const uint32_t *map_find(const UniMap *m, uint32_t cp, int *len) {
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

// "U+XXXX" or "none"
static const char *cpname(long cp, char buf[24]) {
    if (cp < 0) return "none";
    snprintf(buf, 24, "U+%04lX", (unsigned long)cp);
    return buf;
}

int main(void) {
    int d_l = 0, d_n = 0, d_lower = 0, d_lower_full = 0, d_ccc = 0, d_dec = 0;
    long first_l = -1, first_n = -1, first_lower = -1, first_ccc = -1, first_dec = -1;
    for (uint32_t cp = 0; cp < 0x110000; cp++) {
        if (cp >= 0xD800 && cp < 0xE000) continue;
        const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
        unsigned fl = (unsigned)runs_find(&uni_flag_runs, cp);
        int cat = p->category;
        int is_l = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
        int is_n = cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO;
        if (is_l != !!(fl & UNI_L)) d_l++, first_l = first_l < 0 ? (long)cp : first_l;
        if (is_n != !!(fl & UNI_N)) d_n++, first_n = first_n < 0 ? (long)cp : first_n;
        // str.lower(): a full mapping (one code point to several) utf8proc's
        // simple tolower cannot give
        int len = 0;
        const uint32_t *m = map_find(&uni_lower, cp, &len);
        uint32_t want = m && len == 1 ? m[0] : cp;
        if (m && len > 1) d_lower_full++;
        else if ((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp) != want)
            d_lower++, first_lower = first_lower < 0 ? (long)cp : first_lower;
        if ((int)p->combining_class != runs_find(&uni_ccc_runs, cp))
            d_ccc++, first_ccc = first_ccc < 0 ? (long)cp : first_ccc;
        // canonical decomposition (one level): utf8proc gives it through
        // utf8proc_decompose_char with UTF8PROC_DECOMPOSE (full, recursive), so
        // compare the recursive expansion of the table's
        utf8proc_int32_t dst[32];
        utf8proc_ssize_t n = utf8proc_decompose_char((utf8proc_int32_t)cp, dst, 32, UTF8PROC_DECOMPOSE, NULL);
        uint32_t exp[32], tmp[32];
        int en = 1;
        exp[0] = cp;
        for (int changed = 1; changed && en < 30;) { // expand until stable
            changed = 0;
            int tn = 0;
            for (int i = 0; i < en && tn < 30; i++) {
                int dl = 0;
                const uint32_t *dm = map_find(&uni_decomp, exp[i], &dl);
                if (dm) {
                    for (int j = 0; j < dl && tn < 30; j++) tmp[tn++] = dm[j];
                    changed = 1;
                } else tmp[tn++] = exp[i];
            }
            memcpy(exp, tmp, sizeof(uint32_t) * (size_t)tn);
            en = tn;
        }
        int hangul = cp >= 0xAC00 && cp <= 0xD7A3; // algorithmic in sdc's tokenizer, not in the table
        if (!hangul && (n != en || memcmp(dst, exp, sizeof(uint32_t) * (size_t)en)))
            d_dec++, first_dec = first_dec < 0 ? (long)cp : first_dec;
    }
    printf("utf8proc %s (Unicode %s); tables: %s\n", utf8proc_version(), utf8proc_unicode_version(),
           "classes from the regex module (its own Unicode: 17.0 for regex 2026.5.9), the rest from Python 3.11 (Unicode 14.0.0); see the head of src/text/unicode_tables.c");
    char b[24];
    printf("code points where they differ (first one in brackets):\n");
    printf("  regex \\p{L} vs utf8proc L*:            %6d [%s]\n", d_l, cpname(first_l, b));
    printf("  regex \\p{N} vs utf8proc N*:            %6d [%s]\n", d_n, cpname(first_n, b));
    printf("  str.lower() vs utf8proc_tolower:        %6d [%s]\n", d_lower, cpname(first_lower, b));
    printf("  str.lower() full mappings (1 -> n cps): %6d (utf8proc_tolower maps one code point to one)\n",
           d_lower_full);
    printf("  canonical combining class:              %6d [%s]\n", d_ccc, cpname(first_ccc, b));
    printf("  canonical decomposition (full):         %6d [%s]\n", d_dec, cpname(first_dec, b));
    printf("not in utf8proc at all: the regex IGNORECASE classes, str.isspace, ftfy's and html's tables\n");
    return 0;
}
