// json.h: a small strict JSON parser (RFC 8259) for the untrusted text sdc
// reads: safetensors headers and diffusers config.json / tokenizer files.
//
// It builds a read-only tree in one JsonDoc: objects, arrays, strings
// (escapes including \uXXXX and surrogate pairs decoded to UTF-8; raw bytes
// must be valid UTF-8), numbers, true/false/null. It never reads past the
// buffer it is given (which need not be NUL-terminated), limits nesting depth,
// rejects trailing garbage, control characters in strings, lone surrogates,
// leading zeros, "+1", ".5", "1.", NaN/Infinity (but see json_parse_config)
// and comments. Duplicate keys
// are kept (callers that care, e.g. safetensors.c, check them).
// It is not a streaming parser and keeps no source positions after parsing.
#ifndef SDC_JSON_H
#define SDC_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define JSON_MAX_DEPTH 64

typedef enum { JSON_NULL = 0, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonNode {
    JsonType type;
    int n;            // array / object: number of children
    int first, next;  // index of first child / next sibling in JsonDoc.nodes, -1 = none
    int key;          // object member: offset of its key in JsonDoc.strs, else -1
    int key_len;
    int is_int;       // number written without fraction or exponent and fits int64
    int64_t i;        // its value when is_int
    double num;       // every number, as strtod reads it
    int boolean;
    int str, str_len; // string: offset in JsonDoc.strs (NUL-terminated there) and byte length
} JsonNode;

typedef struct JsonDoc {
    JsonNode *nodes; // nodes[0] is the root
    int n, cap;
    char *strs;      // decoded strings and keys, each NUL-terminated
    size_t slen, scap;
} JsonDoc;

// Parses len bytes of buf. what names the source in messages ("x.safetensors
// header", "unet/config.json"). On failure doc is left empty (json_free safe).
int json_parse(JsonDoc *doc, const char *buf, size_t len, const char *what, SdcError *err);
// json_parse for the config files Python writes (diffusers' save_config,
// transformers' save_pretrained): json.dumps writes float("nan") / inf / -inf
// as the bare words NaN, Infinity, -Infinity (e.g. DPMSolverMultistepScheduler's
// "lambda_min_clipped": -Infinity), which this also reads, as numbers
// (is_int 0). Everything else is as strict as json_parse.
int json_parse_config(JsonDoc *doc, const char *buf, size_t len, const char *what, SdcError *err);
// Reads and parses a whole config file (at most max_bytes) with json_parse_config.
int json_parse_file(JsonDoc *doc, const char *path, size_t max_bytes, SdcError *err);
void json_free(JsonDoc *doc);

const JsonNode *json_root(const JsonDoc *doc);
// Children in order: for (c = json_first(d, obj); c; c = json_next(d, c)).
const JsonNode *json_first(const JsonDoc *doc, const JsonNode *node);
const JsonNode *json_next(const JsonDoc *doc, const JsonNode *node);
// Object member by key (the last one if repeated); NULL if absent or node is not an object.
const JsonNode *json_get(const JsonDoc *doc, const JsonNode *obj, const char *key);
// The i-th element of an array; NULL if out of range.
const JsonNode *json_at(const JsonDoc *doc, const JsonNode *arr, int i);
const char *json_key(const JsonDoc *doc, const JsonNode *member); // "" if none
const char *json_str(const JsonDoc *doc, const JsonNode *node);   // NULL unless a string
const char *json_type_name(JsonType t);

#endif
