// fuzz_h5_genout.c: libFuzzer target for the generation output reader
// (data/genout.c): the input written as a .h5 file that a sweep resumes
// into, genout_open with the sweep of fuzz_h5.h (it checks that the file
// holds this same sweep and reads its done mask), then genout_close; no
// HDF5 id may be left open after either.
// Seeds: tests/fuzz/seeds/h5_genout (that sweep written by genout_open /
// genout_write, none, some and all items done; make_fuzz_seeds.c).
// Run with tools/fuzz.sh SECONDS 1 h5_genout.
#include "fuzz_util.h"

#include "fuzz_h5.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[600];
    if (!path[0]) fuzz_h5_start(), fuzz_path(path, sizeof path, "gen.h5");
    FUZZ_H5_INPUT(path, data, size);
    SdcError err = {0};
    GenOut g;
    H5Par ser = h5_par_serial();
    int rc = genout_open(&g, path, FUZZ_GEN_ITEMS, FUZZ_GEN_N, FUZZ_GEN_W, FUZZ_GEN_H, FUZZ_GEN_HASH, NULL, &ser, &err);
    fuzz_note("genout_open", rc, err.msg);
    if (rc) {
        if (!strstr(err.msg, path)) __builtin_trap(); // errors name the file
        fuzz_h5_end();
        return 0;
    }
    int done = 0;
    for (int i = 0; i < FUZZ_GEN_N; i++) done += g.done_mask[i] != 0;
    (void)done;
    genout_close(&g, &err);
    fuzz_h5_end();
    return 0;
}
