// fuzz_manifest.h: the checks the two manifest targets (text and binary)
// run on a Job that parsed: it validates or is refused with a message, and
// its text form is a fixed point: printed, parsed back and printed again it
// gives the same text, and packed to the wire format and unpacked it prints
// the same (so a checkpoint's `manifest` attribute and `--dump-manifest`
// describe the job that ran).
#ifndef SDC_FUZZ_MANIFEST_H
#define SDC_FUZZ_MANIFEST_H

#include <stdlib.h>
#include <string.h>

#include "jobs/manifest.h"

static void fuzz_manifest_check(Sdc__Job *job) {
    SdcError err = {0};
    if (manifest_validate(job, &err) && !err.msg[0]) __builtin_trap(); // a refusal says why
    char *t1 = manifest_to_text(job);
    if (!t1) return; // out of memory
    ProtobufCMessage *m2 = NULL;
    if (manifest_parse_text(&sdc__job__descriptor, t1, strlen(t1), "printed", &m2, &err)) {
        fprintf(stderr, "the printed manifest does not parse back: %s\n---\n%s---\n", err.msg, t1);
        __builtin_trap();
    }
    char *t2 = manifest_to_text((Sdc__Job *)m2);
    if (t2 && strcmp(t1, t2)) {
        fprintf(stderr, "printed, parsed and printed again differs:\n---\n%s---\n%s---\n", t1, t2);
        __builtin_trap();
    }
    size_t n = protobuf_c_message_get_packed_size(m2);
    uint8_t *wire = malloc(n ? n : 1);
    if (wire) {
        protobuf_c_message_pack(m2, wire);
        Sdc__Job *j3 = sdc__job__unpack(NULL, n, wire);
        if (!j3) __builtin_trap(); // what protobuf-c packs, it unpacks
        char *t3 = manifest_to_text(j3);
        if (t3 && t2 && strcmp(t2, t3)) {
            fprintf(stderr, "packed and unpacked, the manifest prints otherwise:\n---\n%s---\n%s---\n", t2, t3);
            __builtin_trap();
        }
        free(t3);
        sdc__job__free_unpacked(j3, NULL);
        free(wire);
    }
    free(t2);
    protobuf_c_message_free_unpacked(m2, NULL);
    free(t1);
}

#endif
