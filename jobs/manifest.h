// manifest.h: the job manifest (jobs/sdc.proto, compiled by protoc-c) in
// protobuf text format, written from the generated descriptors so that every
// field of the .proto is covered without hand-written code per field.
#ifndef SDC_MANIFEST_H
#define SDC_MANIFEST_H

#include <stdio.h>

#include "core/error.h"
#include "sdc.pb-c.h"

// Prints msg in protobuf text format (proto3: fields at their default value
// are omitted, as protoc does).
void manifest_print_text(FILE *f, const ProtobufCMessage *msg, int indent);

// Checks a Job for values no run can use; the message names the field.
int manifest_validate(const Sdc__Job *job, SdcError *err);

#endif
