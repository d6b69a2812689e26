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

// Parses protobuf text format (as protoc --decode prints it and users write
// it: `field: value`, `message { ... }`, repeated fields repeated or as
// `[a, b]`, `#` comments, strings with C escapes and adjacent concatenation,
// enums by name or number) into a freshly allocated message of type desc
// (free with protobuf_c_message_free_unpacked(msg, NULL)). path names the
// source in messages, which give line:column and the field.
int manifest_parse_text(const ProtobufCMessageDescriptor *desc, const char *text, size_t len, const char *path,
                        ProtobufCMessage **out, SdcError *err);
// Reads a Job from a file: protobuf text format, or binary wire format (as
// `protoc --encode=sdc.Job` writes it) when the file is not valid UTF-8 text.
int manifest_read_file(const char *path, Sdc__Job **out, SdcError *err);

// Whether a field was given (proto2: its has_ flag; strings and messages:
// set to something other than the default).
int manifest_field_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *fd);
// Sets string field `field` of msg to a copy of v, freeing what it held
// (never the static default). Returns SDC_ERR_INTERNAL for an unknown field,
// SDC_ERR_OOM when the copy cannot be made (no message: the caller names it).
int manifest_set_string(ProtobufCMessage *msg, const char *field, const char *v);

// Sets scalar field `field` of msg from its text v ("5e-6", "true", "cosine",
// an enum name; a repeated field gets v appended), parsed as the text format
// parses it: errors name the field.
int manifest_set_field(ProtobufCMessage *msg, const char *field, const char *v, SdcError *err);
// The Job in text format as one malloc'd string (NULL when out of memory):
// what checkpoints store as their `manifest` attribute.
char *manifest_to_text(const Sdc__Job *job);
// Checks a Job for values no run can use; the message names the field.
int manifest_validate(const Sdc__Job *job, SdcError *err);

#endif
