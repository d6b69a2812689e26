// fuzz_manifest_bin.c: libFuzzer target for manifest files as `sdc run`
// reads them (jobs/manifest_text.c, manifest_read_file): the input written to
// a file and read back, which takes binary wire format (protobuf-c's
// sdc__job__unpack) unless the bytes are valid UTF-8 text; then
// fuzz_manifest_check's round trips. Seeds: tests/fuzz/seeds/manifest_bin
// (the text seeds packed by protobuf-c). Run with tools/fuzz.sh SECONDS 1
// manifest_bin.
#include "fuzz_util.h"

#include "fuzz_manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[600];
    fuzz_path(path, sizeof path, "job.pb");
    fuzz_write(path, data, size);
    SdcError err = {0};
    Sdc__Job *job = NULL;
    int rc = manifest_read_file(path, &job, &err);
    fuzz_note("manifest_read_file", rc, err.msg);
    if (rc) {
        if (job || !strstr(err.msg, path)) __builtin_trap();
        // bytes protobuf-c takes as an sdc.Job that are not plain text (a
        // control character) are read as one, unless a string in it is not
        // UTF-8 or an enum has no name: the small binary job of seeds/manifest_bin/convert.pb is all ASCII
        int text = 1;
        for (size_t i = 0; i < size && text; i++) text = data[i] >= 0x20 || (data[i] >= 9 && data[i] <= 13);
        Sdc__Job *j = sdc__job__unpack(NULL, size, data);
        if (j && !text && !strstr(err.msg, "not valid UTF-8") && !strstr(err.msg, ": not a sdc.")) {
            fprintf(stderr, "a binary sdc.Job refused: %s\n", err.msg);
            __builtin_trap();
        }
        if (j) sdc__job__free_unpacked(j, NULL);
        return 0;
    }
    fuzz_manifest_check(job);
    protobuf_c_message_free_unpacked(&job->base, NULL);
    return 0;
}
