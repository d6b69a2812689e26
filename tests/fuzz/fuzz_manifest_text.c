// fuzz_manifest_text.c: libFuzzer target for the protobuf text-format reader
// of job manifests (jobs/manifest_text.c): manifest_parse_text on the whole
// input as an sdc.Job, then fuzz_manifest_check's round trips on what parsed.
// Seeds: tests/fuzz/seeds/manifest_text (jobs/examples and --dump-manifest
// outputs). Run with tools/fuzz.sh SECONDS 1 manifest_text.
#include "fuzz_util.h"

#include "fuzz_manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    SdcError err = {0};
    ProtobufCMessage *m = NULL;
    int rc = manifest_parse_text(&sdc__job__descriptor, (const char *)data, size, "fuzz.txtpb", &m, &err);
    fuzz_note("manifest_parse_text", rc, err.msg);
    if (rc) {
        if (m || !strstr(err.msg, "fuzz.txtpb")) __builtin_trap(); // errors name the file
        return 0;
    }
    fuzz_manifest_check((Sdc__Job *)m);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}
