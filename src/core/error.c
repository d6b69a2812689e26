// error.c: SdcError helpers (see error.h).
#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sdc_err(SdcError *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
        // running out of memory is named as such wherever it happened, with
        // what a user can do about it (many sites only say what they made)
        if (code == SDC_ERR_OOM && !strstr(err->msg, "memory")) {
            char what[sizeof err->msg];
            memcpy(what, err->msg, sizeof what);
            snprintf(err->msg, sizeof err->msg, "out of memory: %.1900s%s", what,
                     strstr(what, "--->") ? "" : " ---> free memory on this machine, or ask for less (smaller "
                                                 "batches or images)");
        }
    }
    return code;
}

int sdc_err_wrap(SdcError *err, const char *fmt, ...) {
    if (!err) return SDC_ERR_INTERNAL;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    size_t np = strlen(prefix);
    if (np > sizeof err->msg - 3) np = sizeof err->msg - 3;
    memcpy(err->msg, prefix, np);
    memcpy(err->msg + np, ": ", 2);
    size_t room = sizeof err->msg - np - 3;
    size_t no = strnlen(old, room);
    memcpy(err->msg + np + 2, old, no);
    err->msg[np + 2 + no] = 0;
    return err->code ? err->code : SDC_ERR_INTERNAL;
}

const char *sdc_err_name(int code) {
    switch (code) {
    case SDC_OK: return "ok";
    case SDC_ERR_IO: return "I/O error";
    case SDC_ERR_FORMAT: return "format error";
    case SDC_ERR_SHAPE: return "shape error";
    case SDC_ERR_ARG: return "bad argument";
    case SDC_ERR_OOM: return "out of memory";
    case SDC_ERR_UNSUPPORTED: return "unsupported";
    case SDC_ERR_DEVICE: return "device error";
    case SDC_ERR_NONFINITE: return "not a finite number";
    case SDC_ERR_STOPPED: return "stopped on a signal";
    default: return "internal error";
    }
}

_Noreturn void sdc_check_failed(const char *cond, const char *file, int line, const char *func) {
    fprintf(stderr, "sdc: internal check failed: %s\n  at %s:%d in %s()\n"
                    "---> this is a bug in sdc; please report it with the command line\n",
            cond, file, line, func);
    abort();
}
