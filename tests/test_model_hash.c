// test_model_hash.c: the model hash an HDF5 sweep records (data/genout.c,
// libcrypto's SHA-256) gives the values the hand-written SHA-256 gave and
// sha256sum gives, since caches and existing files store them: the FIPS 180-4
// examples, a 9 MiB + 3 byte file (crossing the 4 MiB read blocks) whose
// digest Python's hashlib computed, a diffusers folder (hashed as its
// unet/diffusion_pytorch_model.safetensors), and a missing file named in the
// error.
#define _GNU_SOURCE // mkdtemp, setenv
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/fsutil.h"
#include "data/genout.h"
#include "testutil.h"

static void hex(const uint8_t d[32], char out[65]) {
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void check_mem(TestCtx *t, const char *label, const void *data, size_t n, const char *want) {
    uint8_t d[32];
    char got[65] = "";
    SdcError err = {0};
    int rc = genout_sha256(data, n, d, &err);
    if (!rc) hex(d, got);
    check_true(t, !rc && !strcmp(got, want), "SHA-256 of %s = %s (got %s)", label, want, rc ? err.msg : got);
}

// The whole file in memory (malloc'd), its size in *n.
static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(len > 0 ? (size_t)len : 1);
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) free(b), b = NULL;
    fclose(f);
    *n = (size_t)len;
    return b;
}

int main(void) {
    TestCtx t = {0};
    char dir[] = "/tmp/sdc-test-hash.XXXXXX";
    if (!mkdtemp(dir)) return 1;
    setenv("SDC_CACHE_DIR", dir, 1); // a fresh cache: every file below is hashed

    // FIPS 180-4 / NIST examples
    check_mem(&t, "\"\"", "", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    check_mem(&t, "\"abc\"", "abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    check_mem(&t, "the 448-bit example", m448, strlen(m448),
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    char *ma = malloc(1000000);
    if (!ma) return 1;
    memset(ma, 'a', 1000000);
    check_mem(&t, "a million 'a'", ma, 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(ma);

    // a file over two read blocks and a bit: (i * 2654435761 >> 13) & 0xff
    const size_t n = (9u << 20) + 3;
    uint8_t *b = malloc(n);
    if (!b) return 1;
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(((uint64_t)i * 2654435761u) >> 13);
    char path[256];
    snprintf(path, sizeof path, "%s/pattern.bin", dir);
    FILE *f = fopen(path, "wb");
    int wrote = f && fwrite(b, 1, n, f) == n;
    if (f && fclose(f)) wrote = 0;
    check_true(&t, wrote, "wrote %s (%zu bytes)", path, n);
    const char *want = "d3204606e574b41da53b1595b19c33b9bd71c211052941f51f71824818851430"; // hashlib.sha256
    check_mem(&t, "the pattern in memory", b, n, want);
    free(b);
    char sh[11] = "", full[65] = "";
    SdcError err = {0};
    int rc = genout_model_hash(path, sh, full, &err);
    check_true(&t, !rc && !strcmp(full, want) && !strncmp(sh, want, 10) && strlen(sh) == 10,
               "model hash of the 9 MiB + 3 file: %s, short %s", rc ? err.msg : full, sh);
    // again, from the cache: the same
    char sh2[11] = "", full2[65] = "";
    rc = genout_model_hash(path, sh2, full2, &err);
    check_true(&t, !rc && !strcmp(full2, want) && !strcmp(sh2, sh), "... again (from the cache): %s",
               rc ? err.msg : full2);

    // a diffusers folder is hashed as its UNet file
    const char *unet = "tests/fixtures/tiny-sd1/unet/diffusion_pytorch_model.safetensors";
    size_t un = 0;
    uint8_t *ub = slurp(unet, &un), d[32];
    char uwant[65] = "";
    if (ub && !genout_sha256(ub, un, d, &err)) hex(d, uwant);
    free(ub);
    rc = genout_model_hash("tests/fixtures/tiny-sd1", sh, full, &err);
    check_true(&t, uwant[0] && !rc && !strcmp(full, uwant),
               "a diffusers folder: the hash of %s (%s; folder: %s)", unet, uwant, rc ? err.msg : full);

    // a missing file: an I/O error naming it
    rc = genout_model_hash("/nonexistent/model.safetensors", sh, full, &err);
    check_true(&t, rc == SDC_ERR_IO && strstr(err.msg, "/nonexistent/model.safetensors") && strstr(err.msg, "--->"),
               "a missing file: %s", rc ? err.msg : "no error");

    fs_rm_tree(dir);
    return test_summary(&t);
}
