// test_safetensors.c: the safetensors reader/writer and the JSON parser.
// (1) st_write -> st_open round trips in F32/F16/BF16 (+ I64, metadata);
// (2) a battery of malformed files, each of which must fail with a message
//     that names the problem (checked by substring), never crash;
// (3) the strict JSON parser on escapes, surrogates, numbers and bad input.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/json.h"
#include "io/safetensors.h"
#include "testutil.h"

// ----------------------------------------------------------------------------
// helpers

// 8-byte length + header + data_len bytes of data (value i & 0xff).
static uint8_t *make_buf(const char *header, size_t data_len, size_t *size) {
    size_t hl = strlen(header);
    *size = 8 + hl + data_len;
    uint8_t *b = malloc(*size ? *size : 1);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) b[8 + hl + i] = (uint8_t)i;
    return b;
}

// Parses buf and expects failure with `want` in the message (or success if want is NULL).
static void expect_parse(TestCtx *t, const char *label, const uint8_t *buf, size_t size, const char *want) {
    StFile f;
    SdcError err = {0};
    int rc = st_parse(&f, buf, size, "bad.safetensors", &err);
    if (!want) {
        check_true(t, rc == 0, "%-28s parses: %s", label, rc ? err.msg : "ok");
        if (!rc) st_close(&f);
        return;
    }
    int named = rc && strstr(err.msg, "bad.safetensors") != NULL;
    int ok = rc && strstr(err.msg, want) != NULL;
    check_true(t, ok && named, "%-28s rejected (want \"%s\"): %s", label, want,
               rc ? strtok(err.msg, "\n") : "ACCEPTED");
}

static void expect_header(TestCtx *t, const char *label, const char *header, size_t data_len, const char *want) {
    size_t size;
    uint8_t *b = make_buf(header, data_len, &size);
    expect_parse(t, label, b, size, want);
    free(b);
}

// ----------------------------------------------------------------------------
// (1) round trip

static void test_round_trip(TestCtx *t, const char *dir) {
    enum { N = 37 };
    float ref[N];
    fill_uniform(ref, N, 7, -2.0f, 2.0f);
    uint16_t h16[N], hb16[N];
    convert_from_f32(h16, DT_F16, ref, N);
    convert_from_f32(hb16, DT_BF16, ref, N);
    int64_t ids[5] = {0, 1, 2, 3, 1LL << 40};
    int64_t s_a[] = {37}, s_b[] = {1, 37, 1, 1}, s_c[] = {37, 1}, s_d[] = {5}, s_e[] = {0, 3};
    Tensor ts[5] = {
        tensor_make(DT_F32, DEV_CPU, ref, 1, s_a),
        tensor_make(DT_F16, DEV_CPU, h16, 4, s_b),
        tensor_make(DT_BF16, DEV_CPU, hb16, 2, s_c),
        tensor_make(DT_I64, DEV_CPU, ids, 1, s_d),
        tensor_make(DT_F32, DEV_CPU, ref, 2, s_e), // empty tensor
    };
    const char *names[5] = {"z.weight", "a.half \"quoted\"", "m.bf16", "position_ids", "empty"};
    const char *mk[2] = {"format", "note"}, *mv[2] = {"pt", "line1\nline2 \xc3\xa9"};
    char path[512];
    snprintf(path, sizeof path, "%s/rt.safetensors", dir);
    SdcError err = {0};
    int rc = st_write(path, names, ts, 5, mk, mv, 2, &err);
    check_true(t, rc == 0, "st_write: %s", rc ? err.msg : "ok");
    StFile f;
    rc = st_open(&f, path, &err);
    check_true(t, rc == 0, "st_open of the written file: %s", rc ? err.msg : "ok");
    if (rc) return;
    check_true(t, f.n == 5, "5 entries read back (got %d)", f.n);
    check_true(t, ((uintptr_t)f.data & 7) == 0, "data region is 8-byte aligned");
    check_true(t, f.entries[0].name && !strcmp(f.entries[0].name, "a.half \"quoted\""), "entries sorted by name");
    for (int i = 0; i < 5; i++) {
        Tensor got;
        rc = st_get(&f, names[i], &got, &err);
        check_true(t, rc == 0, "st_get %s: %s", names[i], rc ? err.msg : "ok");
        if (rc) continue;
        int same = got.dtype == ts[i].dtype && tensor_same_shape(&got, &ts[i]) &&
                   (tensor_bytes(&got) == 0 || !memcmp(got.data, ts[i].data, tensor_bytes(&got)));
        check_true(t, same, "round trip %-18s %-4s bytes identical", names[i], dtype_name(ts[i].dtype));
    }
    float back[N];
    Tensor g;
    if (!st_get(&f, "m.bf16", &g, &err)) {
        convert_to_f32(back, g.data, DT_BF16, N);
        check_rel(t, "bf16 values vs f32 source", back, ref, N, 1.0 / 128);
    }
    if (!st_get(&f, "a.half \"quoted\"", &g, &err)) {
        convert_to_f32(back, g.data, DT_F16, N);
        check_rel(t, "f16 values vs f32 source", back, ref, N, 1.0 / 1024);
    }
    const char *note = st_meta(&f, "note");
    check_true(t, note && !strcmp(note, mv[1]), "metadata with escapes read back");
    check_true(t, st_meta(&f, "absent") == NULL && st_find(&f, "absent") == NULL, "absent lookups give NULL");
    rc = st_get(&f, "nope", &g, &err);
    check_true(t, rc == SDC_ERR_SHAPE && strstr(err.msg, "nope"), "missing tensor error names it: %s", err.msg);
    st_close(&f);

    // A truncated copy of the valid file must fail at open, naming truncation.
    FILE *in = fopen(path, "rb");
    uint8_t buf[4096];
    size_t len = in ? fread(buf, 1, sizeof buf, in) : 0;
    if (in) fclose(in);
    char tpath[512];
    snprintf(tpath, sizeof tpath, "%s/trunc.safetensors", dir);
    FILE *out = fopen(tpath, "wb");
    if (out) {
        fwrite(buf, 1, len - 10, out);
        fclose(out);
    }
    rc = st_open(&f, tpath, &err);
    int good = rc == SDC_ERR_FORMAT && strstr(err.msg, "truncated") && strstr(err.msg, "trunc.safetensors");
    check_true(t, good, "truncated file rejected: %s", rc ? strtok(err.msg, "\n") : "ACCEPTED");
    if (!rc) st_close(&f);
    out = fopen(tpath, "wb");
    if (out) fclose(out);
    rc = st_open(&f, tpath, &err);
    good = rc && strstr(err.msg, "empty file");
    check_true(t, good, "empty file on disk rejected: %s", rc ? strtok(err.msg, "\n") : "ACCEPTED");
    if (!rc) st_close(&f);
    snprintf(tpath, sizeof tpath, "%s/does-not-exist.safetensors", dir);
    rc = st_open(&f, tpath, &err);
    good = rc == SDC_ERR_IO && strstr(err.msg, "does-not-exist");
    check_true(t, good, "missing file: %s", rc ? strtok(err.msg, "\n") : "ACCEPTED");
}

// ----------------------------------------------------------------------------
// (2) malformed files

static void test_malformed(TestCtx *t) {
    const char *ok1 = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    expect_header(t, "valid minimal", ok1, 8, NULL);
    expect_header(t, "valid, space padded", "{\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,8]}}   ",
                  8, NULL);
    expect_header(t, "valid, no tensors", "{}", 0, NULL);
    expect_header(t, "valid, metadata only", "{\"__metadata__\":{\"k\":\"v\"}}", 0, NULL);
    expect_header(t, "valid, F64 kept unloaded", "{\"b\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}",
                  8, NULL);

    size_t size;
    uint8_t *b = make_buf(ok1, 8, &size);
    expect_parse(t, "empty file", b, 0, "empty file");
    expect_parse(t, "shorter than 8 bytes", b, 5, "too short");
    expect_parse(t, "truncated data", b, size - 3, "truncated");
    expect_parse(t, "header cut (len > file)", b, 8 + 10, "larger than the");
    uint8_t big[16] = {0};
    big[3] = 0x10; // 268 MB header length
    expect_parse(t, "header length over 100MB", big, sizeof big, "limit");
    uint64_t huge = ~0ULL;
    memcpy(big, &huge, 8);
    expect_parse(t, "header length 2^64-1", big, sizeof big, "limit");
    free(b);

    expect_header(t, "header not JSON", "{abc}", 0, "invalid JSON");
    expect_header(t, "not an object", "[1,2]", 0, "header does not start");
    expect_header(t, "unterminated string", "{\"a", 0, "unterminated string");
    expect_header(t, "unterminated object", "{\"a\":{\"dtype\":\"F32\"", 0, "invalid JSON");
    expect_header(t, "trailing garbage", "{} x", 0, "end of input");
    expect_header(t, "unknown dtype", "{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                  "unknown dtype \"F33\"");
    expect_header(t, "dtype not a string", "{\"a\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                  "unknown dtype");
    expect_header(t, "missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "lacks \"shape\"");
    expect_header(t, "missing data_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "lacks \"data_offsets\"");
    expect_header(t, "entry not an object", "{\"a\":[1]}", 0, "expected an object");
    expect_header(t, "negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
                  "shape[0]");
    expect_header(t, "fractional dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8,
                  "shape[0]");
    expect_header(t, "shape overflow",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
                  "overflows");
    expect_header(t, "offsets out of range", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 8,
                  "outside the data region");
    expect_header(t, "offsets reversed", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8,
                  "outside the data region");
    expect_header(t, "offsets one number", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]}}", 8,
                  "[begin, end]");
    expect_header(t, "shape/bytes mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                  "needs 12 bytes");
    expect_header(t, "dtype/bytes mismatch", "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                  "needs 4 bytes");
    expect_header(t, "gap between tensors",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "gap before \"b\"");
    expect_header(t, "gap at start", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                  "belong to no tensor");
    expect_header(t, "overlapping tensors",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlaps");
    expect_header(t, "same bytes twice",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "overlaps");
    expect_header(t, "trailing data bytes", ok1, 12, "trailing bytes");
    expect_header(t, "duplicate names",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "appears twice");
    expect_header(t, "empty name", "{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "empty");
    expect_header(t, "NUL in name", "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  "NUL");
    expect_header(t, "metadata not strings", "{\"__metadata__\":{\"k\":1}}", 0, "expected a string");
    expect_header(t, "metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "twice");
    expect_header(t, "invalid UTF-8 in name", "{\"\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                  4, "UTF-8");

    // deep nesting: 10000 '[' inside a metadata value
    size_t depth = 10000;
    char *deep = malloc(depth * 2 + 64);
    size_t k = (size_t)sprintf(deep, "{\"__metadata__\":");
    for (size_t i = 0; i < depth; i++) deep[k++] = '[';
    for (size_t i = 0; i < depth; i++) deep[k++] = ']';
    deep[k++] = '}';
    deep[k] = 0;
    expect_header(t, "deep nesting", deep, 0, "nested deeper");
    free(deep);

    // An F64 / 5-D tensor parses but st_get refuses it, naming it.
    size_t sz;
    uint8_t *fb = make_buf("{\"b\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                           "\"c\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[8,12]}}", 12, &sz);
    StFile f;
    SdcError err = {0};
    if (!st_parse(&f, fb, sz, "x.safetensors", &err)) {
        Tensor tt;
        int rc = st_get(&f, "b", &tt, &err);
        int good = rc == SDC_ERR_UNSUPPORTED && strstr(err.msg, "F64") && strstr(err.msg, "\"b\"");
        check_true(t, good, "F64 tensor refused when requested: %s", strtok(err.msg, "\n"));
        rc = st_get(&f, "c", &tt, &err);
        good = rc == SDC_ERR_UNSUPPORTED && strstr(err.msg, "5 dims");
        check_true(t, good, "5-D tensor refused: %s", strtok(err.msg, "\n"));
        st_close(&f);
    } else {
        check_true(t, 0, "F64 / 5-D file should parse: %s", err.msg);
    }
    free(fb);

    // Every prefix of a valid two-tensor file fails cleanly (no crash, no accept).
    uint8_t *vb = make_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]}}", 12, &sz);
    int accepted = 0;
    for (size_t cut = 0; cut < sz; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1); // exact-size copy: ASan catches any over-read
        memcpy(copy, vb, cut);
        if (!st_parse(&f, copy, cut, "p.safetensors", &err)) {
            accepted++;
            st_close(&f);
        }
        free(copy);
    }
    check_true(t, accepted == 0, "all %zu truncated prefixes rejected (%d accepted)", sz, accepted);
    free(vb);
}

// ----------------------------------------------------------------------------
// (3) JSON

static int json_ok(const char *s, JsonDoc *d) {
    SdcError err = {0};
    return json_parse(d, s, strlen(s), "t.json", &err) == 0;
}

static void test_json(TestCtx *t) {
    JsonDoc d;
    int ok = json_ok("{\"s\":\"a\\\"b\\\\c\\/\\b\\f\\n\\r\\t\\u00e9\\u20ac\\ud83d\\ude00\",\"n\":[-0, 12, -3.5e2, "
                     "1E-2, 9223372036854775807, 9223372036854775808], \"t\":true, \"f\":false, \"z\":null, "
                     "\"s\":\"last\", \"o\":{}}", &d);
    check_true(t, ok, "JSON with every escape and number form parses");
    if (ok) {
        const JsonNode *r = json_root(&d);
        check_true(t, r->type == JSON_OBJECT && r->n == 7, "root object has 7 members (got %d)", r->n);
        check_true(t, !strcmp(json_str(&d, json_get(&d, r, "s")), "last"), "repeated key: last one wins");
        const JsonNode *s0 = json_first(&d, r);
        const char *want = "a\"b\\c/\b\f\n\r\t\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
        check_true(t, s0 && !strcmp(json_str(&d, s0), want), "escapes and surrogate pair decode to UTF-8");
        const JsonNode *n = json_get(&d, r, "n");
        check_true(t, n && n->n == 6, "number array of 6");
        const JsonNode *e1 = json_at(&d, n, 1), *e2 = json_at(&d, n, 2), *e4 = json_at(&d, n, 4),
                       *e5 = json_at(&d, n, 5);
        check_true(t, e1 && e1->is_int && e1->i == 12, "12 is an int");
        check_true(t, e2 && !e2->is_int && e2->num == -350.0, "-3.5e2 is -350, not an int");
        check_true(t, e4 && e4->is_int && e4->i == INT64_MAX, "INT64_MAX exact");
        check_true(t, e5 && !e5->is_int && e5->num > 9.2e18, "2^63 is not an int64 but a number");
        check_true(t, json_get(&d, r, "t")->boolean == 1 && json_get(&d, r, "z")->type == JSON_NULL, "literals");
        check_true(t, json_at(&d, n, 6) == NULL && json_get(&d, n, "x") == NULL, "out-of-range lookups give NULL");
        json_free(&d);
    }
    const char *bad[] = {
        "", "   ", "{", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "01", "+1", ".5", "1.", "1e", "-",
        "NaN", "Infinity", "tru", "nul", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"",
        "\"\\ud800\\u0041\"", "\"a\tb\"", "[1] [2]", "// c\n{}", "'a'", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"",
    };
    int all_rejected = 1;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        SdcError err = {0};
        if (!json_parse(&d, bad[i], strlen(bad[i]), "t.json", &err)) {
            all_rejected = 0;
            printf("  JSON accepted but should not: [%s]\n", bad[i]);
            json_free(&d);
        } else if (!strstr(err.msg, "t.json")) {
            all_rejected = 0;
            printf("  JSON error does not name the source: %s\n", err.msg);
        }
    }
    check_true(t, all_rejected, "%zu malformed JSON texts rejected with messages", sizeof bad / sizeof bad[0]);
    // Not NUL-terminated: a buffer ending inside a number / literal / string.
    const char nt[] = {'[', '1', '2', '3'};
    SdcError err = {0};
    check_true(t, json_parse(&d, nt, sizeof nt, "t.json", &err) != 0, "unterminated array in exact buffer");
    check_true(t, json_parse(&d, "123", 3, "t.json", &err) == 0 && json_root(&d)->i == 123, "bare number");
    json_free(&d);
    check_true(t, json_parse(&d, "\xef\xbb\xbf{}", 5, "t.json", &err) == 0, "UTF-8 BOM accepted");
    json_free(&d);
    // Config files as Python writes them: diffusers' DPMSolverMultistepScheduler
    // config holds "lambda_min_clipped": -Infinity.
    const char *py = "{\"lambda_min_clipped\": -Infinity, \"a\": [NaN, Infinity, -1.5]}";
    int py_ok = json_parse_config(&d, py, strlen(py), "scheduler_config.json", &err) == 0;
    check_true(t, py_ok, "json_parse_config reads Python's -Infinity / NaN / Infinity%s%s", py_ok ? "" : ": ",
               py_ok ? "" : err.msg);
    if (py_ok) {
        const JsonNode *r = json_root(&d), *l = json_get(&d, r, "lambda_min_clipped"), *a = json_get(&d, r, "a");
        check_true(t, l && l->type == JSON_NUMBER && !l->is_int && isinf(l->num) && l->num < 0 &&
                          isnan(json_at(&d, a, 0)->num) && isinf(json_at(&d, a, 1)->num) &&
                          json_at(&d, a, 1)->num > 0 && json_at(&d, a, 2)->num == -1.5,
                   "-Infinity, NaN, Infinity read as numbers");
        json_free(&d);
    }
    check_true(t, json_parse(&d, py, strlen(py), "t.json", &err) != 0, "json_parse (safetensors headers) still "
               "rejects -Infinity");
    const char *py_bad[] = {"-Inf", "Infinit", "nan", "inf", "[NaNa]", "--Infinity", "-NaN"};
    int py_rejected = 1;
    for (size_t i = 0; i < sizeof py_bad / sizeof py_bad[0]; i++)
        if (!json_parse_config(&d, py_bad[i], strlen(py_bad[i]), "t.json", &err)) {
            py_rejected = 0;
            printf("  json_parse_config accepted [%s]\n", py_bad[i]);
            json_free(&d);
        }
    check_true(t, py_rejected, "json_parse_config rejects %zu near misses", sizeof py_bad / sizeof py_bad[0]);
}

int main(void) {
    TestCtx t = {0};
    char dir[] = "/tmp/sdc_test_st_XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    printf("round trip\n");
    test_round_trip(&t, dir);
    printf("malformed files\n");
    test_malformed(&t);
    printf("JSON\n");
    test_json(&t);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) printf("  (could not remove %s)\n", dir);
    return test_summary(&t);
}
