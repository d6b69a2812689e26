// fuzz_image.c: libFuzzer target for the image decoders of src/io/image.c:
// image_read_mem on the whole input (PNG or JPEG by magic bytes, EXIF
// orientation included), then, on success, conversions and a small resize of
// what came out, and the EXIF parser on the raw bytes. Built and run by
// tools/fuzz.sh with -fsanitize=fuzzer,address,undefined; not a CTest test.
// libpng and libjpeg themselves are the system's (not instrumented): what is
// checked is sdc's use of them (error longjmps, sizes, buffers).
// Built with FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, so PNG CRC / Adler-32
// checks are off and mutated files reach the decoder proper.
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "io/image.h"

#define FUZZ_MAX_PIXELS (1 << 18) // 512 x 512: keeps one input to a few ms

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    SdcError err = {0};
    Image im;
    (void)image_exif_orientation(data, size);
    int want = size ? (data[size - 1] & 1 ? 3 : 0) : 0; // trailing bytes after IEND / EOI are ignored by both
    if (image_read_mem(&im, data, size, "fuzz.img", want, FUZZ_MAX_PIXELS, &err)) {
        if (!err.msg[0] || !strstr(err.msg, "fuzz.img") || im.data) __builtin_trap(); // errors name the input
        return 0;
    }
    if (im.width < 1 || im.height < 1 || (int64_t)im.width * im.height > FUZZ_MAX_PIXELS ||
        (im.channels != 1 && im.channels != 3) || (want && im.channels != want))
        __builtin_trap();
    volatile uint8_t sink = 0;
    size_t n = (size_t)im.width * im.height * im.channels;
    for (size_t i = 0; i < n; i += 61) sink ^= im.data[i];
    sink ^= im.data[n - 1];
    Image other, small;
    if (!image_convert(&im, &other, im.channels == 1 ? 3 : 1, &err)) image_free(&other);
    ImageFilter f = (ImageFilter)(size % 4);
    if (!image_resize(&im, &small, 1 + (int)(size % 13), 1 + (int)(size % 7), f, &err)) {
        sink ^= small.data[0];
        image_free(&small);
    }
    (void)sink;
    image_free(&im);
    return 0;
}
