// json_libs.c: sdc's JSON parser (src/io/json.c) against the two maintained
// C JSON libraries Debian ships, libjansson (2.14) and libcJSON (1.7.15), on
// what sdc parses: a safetensors header the size of SD 1.5's (1131 tensors),
// a CLIP tokenizer vocab.json (49408 entries, \u escapes), a UNet
// config.json; and on malformed or hostile texts, which of them each parser
// accepts. The evidence behind the JSON entry of docs/decisions.md. Not part
// of the build (sdc does not depend on either library):
//   apt-get install libjansson-dev libcjson-dev
//   gcc -O2 -Isrc bench/libs/json_libs.c src/io/json.c src/core/error.c
//       -ljansson -lcjson -o /tmp/json_libs && /tmp/json_libs
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <time.h>

// io/json.h cannot be included next to jansson.h: both define JSON_NULL,
// JSON_OBJECT, ... (a switch would rename one set). json_parse's two
// structs are passed as opaque, generously sized, aligned buffers instead.
int json_parse(void *doc, const char *buf, size_t len, const char *what, void *err);
void json_free(void *doc);

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct Buf {
    char *s;
    size_t n, cap;
} Buf;

static void put(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(Buf *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (b->s && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        b->cap = b->cap ? b->cap * 2 : 1 << 16;
        b->s = realloc(b->s, b->cap);
        if (!b->s) exit(1);
    }
}

// A safetensors header with n tensors named like SD 1.5's (original layout).
static Buf st_header(int n) {
    Buf b = {0};
    put(&b, "{\"__metadata__\":{\"format\":\"pt\"}");
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        int c = 320 << (i % 3);
        size_t nb = (size_t)c * c * 9 * 2;
        put(&b, ",\"model.diffusion_model.input_blocks.%d.%d.transformer_blocks.0.attn%d.to_q.weight\":"
                "{\"dtype\":\"F16\",\"shape\":[%d,%d,3,3],\"data_offsets\":[%zu,%zu]}",
            i / 10, i % 10, i % 2 + 1, c, c, off, off + nb);
        off += nb;
    }
    put(&b, "}");
    return b;
}

// A CLIP vocab.json: 49408 byte-level BPE tokens, many with \u escapes.
static Buf vocab(void) {
    Buf b = {0};
    put(&b, "{");
    unsigned s = 12345;
    for (int i = 0; i < 49408; i++) {
        char tok[40];
        int k = 0, len = 2 + (int)(s >> 28) % 7;
        for (int j = 0; j < len; j++) {
            s = s * 1664525u + 1013904223u;
            tok[k++] = (char)('a' + (s >> 24) % 26);
        }
        tok[k] = 0;
        put(&b, "%s\"%s%s%d\": %d", i ? ", " : "", i % 5 == 0 ? "\\u0120" : "", tok, i, i);
        if (i % 3 == 0) put(&b, ", \"%s</w>\\u00e9%d\": %d", tok, i, 49408 + i); // a few more, accents
    }
    put(&b, "}");
    return b;
}

static Buf config(void) {
    Buf b = {0};
    put(&b, "{\"_class_name\": \"UNet2DConditionModel\", \"_diffusers_version\": \"0.31.0\", \"act_fn\": \"silu\", "
            "\"attention_head_dim\": 8, \"block_out_channels\": [320, 640, 1280, 1280], \"center_input_sample\": "
            "false, \"cross_attention_dim\": 768, \"down_block_types\": [\"CrossAttnDownBlock2D\", "
            "\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"downsample_padding\": 1, "
            "\"flip_sin_to_cos\": true, \"freq_shift\": 0, \"in_channels\": 4, \"layers_per_block\": 2, "
            "\"mid_block_scale_factor\": 1, \"norm_eps\": 1e-05, \"norm_num_groups\": 32, \"out_channels\": 4, "
            "\"sample_size\": 64, \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", "
            "\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"], \"use_linear_projection\": false}");
    return b;
}

enum { SDC, JANSSON, JANSSON_STRICT, CJSON, NP };
static const char *NAMES[NP] = {"sdc json.c", "jansson", "jansson (reject dup keys)", "cJSON"};

// 1 when parser p accepts the n bytes of s
static int accepts(int p, const char *s, size_t n) {
    if (p == SDC) {
        _Alignas(16) char d[256], e[4096];
        int ok = json_parse(d, s, n, "x", e) == 0;
        json_free(d);
        return ok;
    }
    if (p == JANSSON || p == JANSSON_STRICT) {
        json_error_t e;
        json_t *j = json_loadb(s, n, (p == JANSSON_STRICT ? JSON_REJECT_DUPLICATES : 0) | JSON_DECODE_ANY, &e);
        json_decref(j);
        return j != NULL;
    }
    const char *end = NULL;
    cJSON *c = cJSON_ParseWithLengthOpts(s, n, &end, 0);
    int ok = c != NULL;
    cJSON_Delete(c);
    if (ok) // the whole buffer must be one value (cJSON stops after it)
        for (; end < s + n; end++)
            if (*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r') ok = 0;
    return ok;
}

static void bench(const char *label, Buf b, int reps) {
    printf("%-28s %8.1f KB:", label, b.n / 1e3);
    for (int p = 0; p < NP; p++) {
        double best = 1e30;
        int ok = 1;
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            ok &= accepts(p, b.s, b.n);
            double t = now() - t0;
            if (t < best) best = t;
        }
        printf("  %s %.0f MB/s%s", NAMES[p], b.n / 1e6 / best, ok ? "" : " (REJECTED it)");
    }
    printf("\n");
}

int main(void) {
    bench("safetensors header (1131)", st_header(1131), 30);
    bench("vocab.json (49408+)", vocab(), 10);
    bench("unet config.json", config(), 2000);

    // malformed / hostile texts: what should be refused (1) or accepted (0 = either is fine, shown)
    static char deep[200001];
    memset(deep, '[', 100000);
    memset(deep + 100000, ']', 100000);
    static const struct {
        const char *s;
        size_t n; // 0: strlen
        const char *why;
    } cases[] = {
        {"", 0, "empty"}, {"{", 0, "unclosed"}, {"[1,]", 0, "trailing comma"}, {"{\"a\":1,}", 0, "trailing comma"},
        {"{a:1}", 0, "unquoted key"}, {"01", 0, "leading zero"}, {"+1", 0, "plus sign"}, {".5", 0, "bare fraction"},
        {"1.", 0, "bare point"}, {"NaN", 0, "NaN"}, {"Infinity", 0, "Infinity"}, {"\"\\x\"", 0, "bad escape"},
        {"\"\\ud800\"", 0, "lone high surrogate"}, {"\"\\udc00\"", 0, "lone low surrogate"},
        {"\"a\tb\"", 0, "raw tab in string"}, {"[1] [2]", 0, "two values"}, {"// c\n{}", 0, "comment"},
        {"\"\xc0\xaf\"", 0, "overlong UTF-8"}, {"\"\xed\xa0\x80\"", 0, "UTF-8 surrogate"},
        {"\"\xff\"", 0, "invalid UTF-8 byte"}, {"{\"a\":1} x", 0, "trailing garbage"},
        {"[1,2", 4, "cut inside an array (no NUL after it)"}, {"{\"a\":1,\"a\":2}", 0, "duplicate key"},
        {"{\"a\\u0000b\":1}", 0, "NUL in a key"}, {"[1e400]", 0, "number out of double range"},
        {"[9223372036854775808]", 0, "integer beyond int64"}, {deep, 200000, "100000 nested arrays"},
    };
    printf("\n%-40s", "input (should be refused unless noted)");
    for (int p = 0; p < NP; p++) printf(" | %s", NAMES[p]);
    printf("\n");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        printf("%-40s", cases[i].why);
        for (int p = 0; p < NP; p++)
            printf(" | %*s", (int)strlen(NAMES[p]),
                   accepts(p, cases[i].s, cases[i].n ? cases[i].n : strlen(cases[i].s)) ? "accepts" : "refuses");
        printf("\n");
    }
    return 0;
}
