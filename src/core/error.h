// error.h: how sdc library code reports failure.
//
// Library functions return an int status (0 = success, otherwise one of the
// SDC_ERR_* codes) and fill an SdcError with a message that names the file,
// the field and what was expected, ending with a hint where one helps
// ("---> did you pass a diffusers folder?"). Library code never calls exit();
// only main() decides to exit. SdcError lives on the caller's stack: there is
// no global error state.
#ifndef SDC_ERROR_H
#define SDC_ERROR_H

#include <stdarg.h>

enum {
    SDC_OK = 0,
    SDC_ERR_IO = 1,          // open/read/write/mmap failed
    SDC_ERR_FORMAT = 2,      // malformed file contents (header, JSON, image)
    SDC_ERR_SHAPE = 3,       // a tensor has the wrong shape or is missing
    SDC_ERR_ARG = 4,         // bad argument from the user
    SDC_ERR_OOM = 5,         // allocation failed
    SDC_ERR_UNSUPPORTED = 6, // valid input we do not handle (yet)
    SDC_ERR_DEVICE = 7,      // CUDA / driver / device problem
    SDC_ERR_INTERNAL = 8,    // a bug in sdc
    SDC_ERR_NONFINITE = 9,   // a NaN or Inf appeared (loss, gradient norm)
    SDC_ERR_STOPPED = 10,    // stopped early on a signal, state saved: run again to resume
};

typedef struct SdcError {
    int code;
    char msg[2048];
} SdcError;

// Sets err (if not NULL) and returns code, so callers can write
//   return sdc_err(err, SDC_ERR_FORMAT, "%s: bad header", path);
int sdc_err(SdcError *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

// Prefixes the existing message with more context ("loading unet: ...").
int sdc_err_wrap(SdcError *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

const char *sdc_err_name(int code);

#define SDC_TRY(expr)              \
    do {                           \
        int sdc_rc_ = (expr);      \
        if (sdc_rc_) return sdc_rc_; \
    } while (0)

// Internal invariants (a violated one is a bug in sdc, not bad input): print
// the call site and abort. Never used for anything a user can cause.
#define SDC_CHECK(cond)                                                        \
    do {                                                                       \
        if (!(cond)) sdc_check_failed(#cond, __FILE__, __LINE__, __func__);    \
    } while (0)
_Noreturn void sdc_check_failed(const char *cond, const char *file, int line, const char *func);

#endif
