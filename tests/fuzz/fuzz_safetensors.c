// fuzz_safetensors.c: libFuzzer target for the untrusted-bytes parsers of
// src/io: st_parse on the whole input (a safetensors file), and json_parse
// on the bytes after the 8-byte length (the header alone). Built and run by
// tools/fuzz.sh with -fsanitize=fuzzer,address,undefined; not a CTest test.
// On a successful parse it touches every entry, so a view that the validator
// let through outside the buffer shows up as an ASan report.
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "io/json.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    SdcError err;
    StFile f;
    if (st_parse(&f, data, size, "fuzz.safetensors", &err) == 0) {
        volatile uint8_t sink = 0;
        for (int i = 0; i < f.n; i++) {
            const StEntry *e = &f.entries[i];
            if (st_find(&f, e->name) != e) __builtin_trap(); // names sorted and unique
            Tensor t = st_tensor(&f, e);
            if (e->nbytes) {
                const uint8_t *p = f.data + e->offset;
                sink ^= p[0] ^ p[e->nbytes - 1];
            }
            (void)t;
        }
        for (int i = 0; i < f.n_meta; i++) (void)st_meta(&f, f.meta_keys[i]);
        (void)sink;
        st_close(&f);
    }
    if (size > 8) {
        JsonDoc d;
        if (json_parse(&d, (const char *)data + 8, size - 8, "fuzz.json", &err) == 0) {
            const JsonNode *r = json_root(&d);
            for (const JsonNode *c = json_first(&d, r); c; c = json_next(&d, c)) {
                (void)json_key(&d, c);
                (void)json_str(&d, c);
                (void)json_get(&d, r, json_key(&d, c));
            }
            json_free(&d);
        }
    }
    return 0;
}
