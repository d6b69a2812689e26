// image.c: PNG writing with an A1111 `parameters` chunk (see image.h).
#include "io/image.h"

#include <errno.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int image_write_png(const char *path, const uint8_t *rgb, int width, int height, const char *parameters,
                    SdcError *err) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return sdc_err(err, SDC_ERR_ARG, "output path too long: %s", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return sdc_err(err, SDC_ERR_IO, "%s: cannot create (%s) ---> does the folder exist and is it writable?",
                       path, strerror(errno));
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        fclose(f);
        remove(tmp);
        return sdc_err(err, SDC_ERR_OOM, "%s: libpng could not start", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        remove(tmp);
        return sdc_err(err, SDC_ERR_IO, "%s: libpng failed while writing (disk full?)", path);
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_text text;
    if (parameters) {
        memset(&text, 0, sizeof text);
        text.compression = PNG_TEXT_COMPRESSION_NONE;
        text.key = "parameters";
        text.text = (char *)parameters;
        text.text_length = strlen(parameters);
        png_set_text(png, info, &text, 1);
    }
    png_write_info(png, info);
    for (int y = 0; y < height; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * width * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (fflush(f) != 0 || fclose(f) != 0) {
        remove(tmp);
        return sdc_err(err, SDC_ERR_IO, "%s: write failed (%s)", path, strerror(errno));
    }
    if (rename(tmp, path) != 0) {
        remove(tmp);
        return sdc_err(err, SDC_ERR_IO, "%s: cannot rename from %s (%s)", path, tmp, strerror(errno));
    }
    return 0;
}

void image_from_vae(uint8_t *rgb, const float *x, int n, int height, int width) {
    size_t plane = (size_t)height * width;
    const float *item = x + (size_t)n * 3 * plane; // (3, H, W)
    for (size_t p = 0; p < plane; p++)
        for (int c = 0; c < 3; c++) {
            float v = item[c * plane + p] * 0.5f + 0.5f;
            v = v < 0 ? 0 : v > 1 ? 1 : v;
            rgb[p * 3 + c] = (uint8_t)lrintf(v * 255.0f); // numpy round: half to even
        }
}
