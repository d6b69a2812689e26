// image.c: PNG/JPEG decoding (libpng, libjpeg-turbo) with EXIF orientation,
// PIL-exact resampling, crops, the outpainting canvas, image/mask tensors, and
// PNG writing with an A1111 `parameters` chunk. See image.h for the contract
// of each function; the semantics follow PIL / torchvision / diffusers (read
// for behaviour, not copied).
//
// Decoders run on untrusted bytes (tests/fuzz/fuzz_image.c): every size is
// checked before allocation, libpng and libjpeg report errors by longjmp to
// a setjmp in the one function that owns the decoder, and all state that
// must survive the longjmp lives in a struct owned by the caller.
#include "io/image.h"

#include <errno.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h> // before jpeglib.h, which uses FILE
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h> // JWRN_JPEG_EOF

#define IMAGE_MAX_FILE_BYTES ((size_t)1 << 30) // 1 GiB: no PNG/JPEG under the pixel limit is bigger

// ----------------------------------------------------------------------------
// allocation

static int64_t limit_pixels(int64_t max_pixels) {
    return max_pixels > 0 && max_pixels < IMAGE_MAX_PIXELS ? max_pixels : IMAGE_MAX_PIXELS;
}

// Checks w x h against the limits; name (may be NULL) for the message.
static int check_dims(int64_t w, int64_t h, int64_t max_pixels, const char *name, SdcError *err) {
    const char *sep = name ? ": " : "";
    if (!name) name = "";
    if (w <= 0 || h <= 0)
        return sdc_err(err, SDC_ERR_FORMAT, "%s%simage size %lldx%lld: expected width and height >= 1 ---> the file "
                       "header is damaged", name, sep, (long long)w, (long long)h);
    int64_t maxp = limit_pixels(max_pixels);
    if (w > IMAGE_MAX_SIDE || h > IMAGE_MAX_SIDE || w * h > maxp)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s%simage size %lldx%lld exceeds sdc's limit (%d pixels a side, "
                       "%lld pixels in all) ---> downscale it first", name, sep, (long long)w, (long long)h,
                       IMAGE_MAX_SIDE, (long long)maxp);
    return 0;
}

int image_alloc(Image *im, int width, int height, int channels, SdcError *err) {
    memset(im, 0, sizeof *im);
    SDC_TRY(check_dims(width, height, 0, "image_alloc", err));
    if (channels != 1 && channels != 3)
        return sdc_err(err, SDC_ERR_ARG, "image_alloc: %d channels: expected 1 (gray) or 3 (RGB)", channels);
    im->data = calloc((size_t)width * height * channels, 1);
    if (!im->data)
        return sdc_err(err, SDC_ERR_OOM, "image_alloc: out of memory for %dx%dx%d", width, height, channels);
    im->width = width, im->height = height, im->channels = channels;
    return 0;
}

void image_free(Image *im) {
    if (!im) return;
    free(im->data);
    memset(im, 0, sizeof *im);
}

// ----------------------------------------------------------------------------
// pixel format conversion shared by the decoders

// PIL's L from RGB: ITU-R 601-2 luma in 16-bit fixed point, rounded.
static inline uint8_t luma(const uint8_t *p) {
    return (uint8_t)((19595u * p[0] + 38470u * p[1] + 7471u * p[2] + 0x8000u) >> 16);
}

// n pixels of `in` with nc channels (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)
// -> `out` with oc channels (1 or 3). Alpha is dropped, gray replicated.
static void pixels_convert(const uint8_t *in, int nc, uint8_t *out, int oc, size_t n) {
    for (size_t i = 0; i < n; i++, in += nc, out += oc) {
        if (nc <= 2) {
            out[0] = in[0];
            if (oc == 3) out[1] = out[2] = in[0];
        } else if (oc == 3) {
            out[0] = in[0], out[1] = in[1], out[2] = in[2];
        } else {
            out[0] = luma(in);
        }
    }
}

static int want_ok(int want, const char *name, SdcError *err) {
    if (want == 0 || want == 1 || want == 3) return 0;
    return sdc_err(err, SDC_ERR_ARG, "%s: want_channels %d: expected 0 (as stored), 1 (gray) or 3 (RGB)", name, want);
}

// ----------------------------------------------------------------------------
// EXIF orientation

static uint32_t rd16(const uint8_t *p, int be) { return be ? (uint32_t)p[0] << 8 | p[1] : (uint32_t)p[1] << 8 | p[0]; }
static uint32_t rd32(const uint8_t *p, int be) {
    return be ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]
              : (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

// The Orientation value of a TIFF-structured EXIF block, -1 if the block
// has no Orientation tag (or is malformed), 0 if the value is not 1..8.
static int exif_find_orientation(const uint8_t *exif, size_t size) {
    if (!exif) return -1;
    if (size >= 6 && memcmp(exif, "Exif\0\0", 6) == 0) exif += 6, size -= 6;
    // TIFF header: "II" (little endian) or "MM", 42, offset of IFD0.
    if (size < 8) return -1;
    int be;
    if (exif[0] == 'I' && exif[1] == 'I') be = 0;
    else if (exif[0] == 'M' && exif[1] == 'M') be = 1;
    else return -1;
    if (rd16(exif + 2, be) != 42) return -1;
    uint32_t ifd = rd32(exif + 4, be);
    if (ifd > size || size - ifd < 2) return -1;
    uint32_t n = rd16(exif + ifd, be);
    // 12-byte entries: tag, type, count, value (or offset).
    for (uint32_t i = 0; i < n; i++) {
        size_t e = (size_t)ifd + 2 + (size_t)i * 12;
        if (e + 12 > size) return -1;
        if (rd16(exif + e, be) != 0x0112) continue;
        uint32_t type = rd16(exif + e + 2, be), count = rd32(exif + e + 4, be);
        uint32_t v = type == 3 ? rd16(exif + e + 8, be) : type == 4 ? rd32(exif + e + 8, be) : 0;
        return count >= 1 && v >= 1 && v <= 8 ? (int)v : 0;
    }
    return -1;
}

int image_exif_orientation(const uint8_t *exif, size_t size) {
    int o = exif_find_orientation(exif, size);
    return o >= 1 ? o : 1;
}

// PIL's fallback when EXIF has no Orientation: the first
// `tiff:Orientation="d` or `tiff:Orientation>d` in XMP. -1 if absent.
static int xmp_find_orientation(const uint8_t *s, size_t n) {
    static const char key[] = "tiff:Orientation";
    const size_t k = sizeof key - 1;
    for (size_t i = 0; i + k <= n; i++) {
        if (memcmp(s + i, key, k) != 0) continue;
        size_t j = i + k;
        if (j + 1 < n && s[j] == '=' && s[j + 1] == '"') j += 2;
        else if (j < n && s[j] == '>') j += 1;
        else continue;
        if (j < n && s[j] >= '0' && s[j] <= '9') return s[j] - '0';
    }
    return -1;
}

static int orientation_pick(int exif, int xmp) {
    int o = exif >= 0 ? exif : xmp; // EXIF wins when it has the tag at all
    return o >= 2 && o <= 8 ? o : 1;
}

int image_orient(Image *im, int o, SdcError *err) {
    if (o <= 1 || o > 8) return 0;
    const int W = im->width, H = im->height, C = im->channels;
    const int swap = o >= 5; // 5..8 exchange width and height
    const int ow = swap ? H : W, oh = swap ? W : H;
    uint8_t *out = malloc((size_t)W * H * C); // (oh, ow, C)
    if (!out) return sdc_err(err, SDC_ERR_OOM, "image_orient: out of memory for %dx%d", W, H);
    for (int y = 0; y < oh; y++)
        for (int x = 0; x < ow; x++) {
            int sx, sy; // the stored pixel that lands at (x, y) of the upright image
            switch (o) {
            case 2: sx = W - 1 - x, sy = y; break;                 // mirror
            case 3: sx = W - 1 - x, sy = H - 1 - y; break;         // rotate 180
            case 4: sx = x, sy = H - 1 - y; break;                 // flip
            case 5: sx = y, sy = x; break;                         // transpose
            case 6: sx = y, sy = H - 1 - x; break;                 // rotate 90 clockwise
            case 7: sx = W - 1 - y, sy = H - 1 - x; break;         // transverse
            default: sx = W - 1 - y, sy = x; break;                // 8: rotate 90 counter-clockwise
            }
            memcpy(out + ((size_t)y * ow + x) * C, im->data + ((size_t)sy * W + sx) * C, C);
        }
    free(im->data);
    im->data = out, im->width = ow, im->height = oh;
    return 0;
}

// ----------------------------------------------------------------------------
// PNG (libpng)

typedef struct PngJob {
    const uint8_t *buf;
    size_t size, pos;
    const char *name;
    int64_t max_pixels;
    png_structp png;
    png_infop info;
    uint8_t *pixels;     // (H, rowbytes) decoded rows, 8-bit samples
    png_bytep *rows;     // H pointers into pixels
    char msg[256];       // libpng's message, or ours
    int code;            // SDC_ERR_* for msg
    SdcError dims;       // set when the header's size is refused
    int width, height, nc, orientation;
} PngJob;

static void png_on_error(png_structp png, png_const_charp msg) {
    PngJob *job = png_get_error_ptr(png);
    if (!job->code) {
        snprintf(job->msg, sizeof job->msg, "%s", msg);
        job->code = SDC_ERR_FORMAT;
    }
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

static void png_on_read(png_structp png, png_bytep dst, size_t n) {
    PngJob *job = png_get_io_ptr(png);
    if (n > job->size - job->pos) {
        snprintf(job->msg, sizeof job->msg, "file ends early (truncated after %zu bytes)", job->size);
        job->code = SDC_ERR_FORMAT;
        png_error(png, job->msg);
    }
    memcpy(dst, job->buf + job->pos, n);
    job->pos += n;
}

// ImageMagick's "Raw profile type exif" text: "\nexif\n   <len>\n<hex lines>";
// PIL joins the lines after the third and decodes the hex. -1 if unreadable.
static int raw_profile_orientation(const char *t, size_t n) {
    size_t i = 0;
    for (int nl = 0; i < n && nl < 3; i++) nl += t[i] == '\n';
    size_t cap = (n - i) / 2 + 1, m = 0;
    uint8_t *b = malloc(cap);
    if (!b) return -1;
    int hi = -1;
    for (; i < n; i++) {
        char c = t[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (v < 0) {
            if (c == '\n' || c == ' ') continue;
            break;
        }
        if (hi < 0) hi = v;
        else b[m++] = (uint8_t)(hi << 4 | v), hi = -1;
    }
    int o = exif_find_orientation(b, m);
    free(b);
    return o;
}

// Orientation from eXIf (or a raw-profile text chunk), else from XMP in
// iTXt, as PIL's getexif. Called after the header and again after the end,
// since these chunks may follow the image data.
static void png_take_orientation(PngJob *job) {
    int exif = -1, xmp = -1;
#ifdef PNG_eXIf_SUPPORTED
    png_bytep ex = NULL;
    png_uint_32 n = 0;
    if (png_get_eXIf_1(job->png, job->info, &n, &ex) && ex && n) exif = exif_find_orientation(ex, n);
#endif
    png_textp text = NULL;
    int nt = 0;
    png_get_text(job->png, job->info, &text, &nt);
    for (int i = 0; i < nt; i++) {
        size_t len = text[i].itxt_length ? text[i].itxt_length : text[i].text_length;
        if (!text[i].key || !text[i].text) continue;
        if (exif < 0 && strcmp(text[i].key, "Raw profile type exif") == 0)
            exif = raw_profile_orientation(text[i].text, len);
        else if (xmp < 0 && strcmp(text[i].key, "XML:com.adobe.xmp") == 0)
            xmp = xmp_find_orientation((const uint8_t *)text[i].text, len);
    }
    job->orientation = orientation_pick(exif, xmp);
}

// Walks the chunk list up to IEND before libpng sees the bytes: libpng
// allocates a chunk's claimed length (up to 2 GB) before reading it, so a
// length running past the end of the buffer is refused here as truncation.
static int png_check_chunks(PngJob *job) {
    size_t pos = 8;
    while (pos + 12 <= job->size) {
        const uint8_t *c = job->buf + pos;
        uint32_t len = (uint32_t)c[0] << 24 | (uint32_t)c[1] << 16 | (uint32_t)c[2] << 8 | c[3];
        if (len > job->size - pos - 12) break;
        if (memcmp(c + 4, "IEND", 4) == 0) return 0;
        pos += 12 + (size_t)len;
    }
    snprintf(job->msg, sizeof job->msg, "file ends early (truncated: the chunk at byte %zu runs past the end of "
             "the %zu bytes, or IEND is missing)", pos, job->size);
    return job->code = SDC_ERR_FORMAT;
}

// Decodes into job->pixels (H, W, nc) with nc in 1..4. Returns 0 or sets
// job->code / job->msg. The one setjmp owner for libpng.
static int png_decode(PngJob *job) {
    if (png_check_chunks(job)) return job->code;
    job->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, job, png_on_error, png_on_warning);
    job->info = job->png ? png_create_info_struct(job->png) : NULL;
    if (!job->png || !job->info) {
        snprintf(job->msg, sizeof job->msg, "libpng could not start (out of memory)");
        return job->code = SDC_ERR_OOM;
    }
    if (setjmp(png_jmpbuf(job->png))) return job->code ? job->code : (job->code = SDC_ERR_FORMAT);
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    // Let the fuzzer past checksums to the decoder proper.
    png_set_crc_action(job->png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);
    png_set_option(job->png, PNG_IGNORE_ADLER32, PNG_OPTION_ON);
#endif
    png_set_read_fn(job->png, job, png_on_read);
    png_set_user_limits(job->png, IMAGE_MAX_SIDE * 8, IMAGE_MAX_SIDE * 8); // ours are checked below, with a message
    // A chunk header may claim 2 GB; libpng would allocate it before reading.
    // Ancillary chunks (text, XMP, ICC) of real files are far smaller.
    png_set_chunk_malloc_max(job->png, 16u << 20);
    png_read_info(job->png, job->info);
    png_uint_32 w = 0, h = 0;
    int depth = 0, ctype = 0, interlace = 0;
    png_get_IHDR(job->png, job->info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    if (check_dims(w, h, job->max_pixels, NULL, &job->dims)) {
        job->code = job->dims.code;
        png_longjmp(job->png, 1);
    }
    // To 8-bit gray / gray+alpha / RGB / RGBA. palette_to_rgb (png_set_expand)
    // also turns tRNS into an alpha channel, which is dropped later, so the
    // colours are PIL's convert("RGB") of the palette.
    if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(job->png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(job->png); // x 255/(2^d-1)
    if (depth == 16) png_set_strip_16(job->png); // keep the high byte, as PIL's RGB;16B unpacker
    png_set_interlace_handling(job->png);
    png_read_update_info(job->png, job->info);
    job->nc = png_get_channels(job->png, job->info);
    size_t rowbytes = png_get_rowbytes(job->png, job->info);
    if (job->nc < 1 || job->nc > 4 || png_get_bit_depth(job->png, job->info) != 8 || rowbytes != (size_t)w * job->nc)
        png_error(job->png, "unexpected layout after conversion to 8-bit");
    job->width = (int)w, job->height = (int)h;
    job->pixels = malloc(rowbytes * h);
    job->rows = malloc(sizeof(png_bytep) * h);
    if (!job->pixels || !job->rows) {
        snprintf(job->msg, sizeof job->msg, "out of memory for %ux%u pixels", (unsigned)w, (unsigned)h);
        job->code = SDC_ERR_OOM;
        png_longjmp(job->png, 1);
    }
    for (png_uint_32 y = 0; y < h; y++) job->rows[y] = job->pixels + (size_t)y * rowbytes;
    png_read_image(job->png, job->rows);
    png_read_end(job->png, job->info); // eXIf may follow the image data; a missing IEND is truncation
    png_take_orientation(job);
    return 0;
}

static int png_read_into(Image *out, const uint8_t *buf, size_t size, const char *name, int want, int64_t max_pixels,
                         SdcError *err) {
    PngJob job;
    memset(&job, 0, sizeof job);
    job.buf = buf, job.size = size, job.name = name, job.max_pixels = max_pixels;
    int rc = png_decode(&job);
    if (job.png) png_destroy_read_struct(&job.png, job.info ? &job.info : NULL, NULL);
    free(job.rows);
    if (rc) {
        free(job.pixels);
        if (job.dims.code) return sdc_err(err, job.dims.code, "%s: %s", name, job.dims.msg);
        if (rc == SDC_ERR_UNSUPPORTED || rc == SDC_ERR_OOM) return sdc_err(err, rc, "%s: %s", name, job.msg);
        return sdc_err(err, rc, "%s: not a readable PNG: %s ---> is the file complete? re-export it as PNG or JPEG",
                       name, job.msg);
    }
    int oc = want ? want : job.nc <= 2 ? 1 : 3;
    out->width = job.width, out->height = job.height, out->channels = oc;
    if (oc == job.nc) {
        out->data = job.pixels;
    } else {
        // Converting in place is safe when shrinking; use a fresh buffer otherwise.
        size_t n = (size_t)job.width * job.height;
        uint8_t *dst = oc < job.nc ? job.pixels : malloc(n * oc);
        if (!dst) {
            free(job.pixels);
            memset(out, 0, sizeof *out);
            return sdc_err(err, SDC_ERR_OOM, "%s: out of memory for %dx%d pixels", name, job.width, job.height);
        }
        pixels_convert(job.pixels, job.nc, dst, oc, n);
        if (dst != job.pixels) free(job.pixels);
        out->data = dst;
    }
    int o = job.orientation;
    if (image_orient(out, o, err)) {
        image_free(out);
        return sdc_err_wrap(err, "%s", name);
    }
    return 0;
}

// ----------------------------------------------------------------------------
// JPEG (libjpeg-turbo)

typedef struct JpegErr {
    struct jpeg_error_mgr pub; // first: libjpeg hands us a pointer to it
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
    int code;
} JpegErr;

typedef struct JpegJob {
    struct jpeg_decompress_struct cinfo;
    JpegErr jerr;
    struct jpeg_progress_mgr progress;
    const uint8_t *buf;
    size_t size;
    int64_t max_pixels;
    uint8_t *pixels; // (H, W, nc) as libjpeg outputs it
    int width, height, nc, cmyk, orientation;
    SdcError dims; // set when the header's size is refused
} JpegJob;

// libjpeg's default error_exit ends the process: ours jumps back to jpeg_decode.
static void jpeg_on_error(j_common_ptr cinfo) {
    JpegErr *e = (JpegErr *)cinfo->err;
    if (!e->code) {
        cinfo->err->format_message(cinfo, e->msg);
        e->code = SDC_ERR_FORMAT;
    }
    longjmp(e->jump, 1);
}

// Warnings (level -1) are ignored, as PIL ignores them ("extraneous bytes
// before marker" is common in camera files), except running out of data:
// libjpeg would pad the rest of the image with gray; we refuse it.
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        JpegErr *e = (JpegErr *)cinfo->err;
        snprintf(e->msg, sizeof e->msg, "file ends early (truncated)");
        e->code = SDC_ERR_FORMAT;
        longjmp(e->jump, 1);
    }
}

// A hostile progressive file can hold thousands of tiny scans, each a pass
// over the whole coefficient buffer; real files have about 10.
static void jpeg_on_progress(j_common_ptr cinfo) {
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (cinfo->is_decompressor && d->input_scan_number > 500) {
        JpegErr *e = (JpegErr *)cinfo->err;
        snprintf(e->msg, sizeof e->msg, "more than 500 progressive scans");
        e->code = SDC_ERR_FORMAT;
        longjmp(e->jump, 1);
    }
}

// The one setjmp owner for libjpeg. Fills job->pixels or sets job->jerr.
static int jpeg_decode(JpegJob *job) {
    job->cinfo.err = jpeg_std_error(&job->jerr.pub);
    job->jerr.pub.error_exit = jpeg_on_error;
    job->jerr.pub.emit_message = jpeg_on_message;
    if (setjmp(job->jerr.jump)) return job->jerr.code ? job->jerr.code : SDC_ERR_FORMAT;
    jpeg_create_decompress(&job->cinfo);
    job->progress.progress_monitor = jpeg_on_progress;
    job->cinfo.progress = &job->progress;
    jpeg_mem_src(&job->cinfo, job->buf, (unsigned long)job->size);
    jpeg_save_markers(&job->cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&job->cinfo, TRUE);
    if (check_dims(job->cinfo.image_width, job->cinfo.image_height, job->max_pixels, NULL, &job->dims)) {
        job->jerr.code = job->dims.code;
        longjmp(job->jerr.jump, 1);
    }
    // The first APP1 Exif block, as PIL keeps it; XMP (APP1 with the Adobe
    // namespace) only when Exif has no Orientation.
    static const char xmp_ns[] = "http://ns.adobe.com/xap/1.0/";
    int exif = -1, xmp = -1, seen_exif = 0;
    for (jpeg_saved_marker_ptr m = job->cinfo.marker_list; m; m = m->next) {
        if (m->marker != JPEG_APP0 + 1) continue;
        if (!seen_exif && m->data_length >= 6 && memcmp(m->data, "Exif\0\0", 6) == 0)
            exif = exif_find_orientation(m->data, m->data_length), seen_exif = 1;
        else if (xmp < 0 && m->data_length >= sizeof xmp_ns && memcmp(m->data, xmp_ns, sizeof xmp_ns) == 0)
            xmp = xmp_find_orientation(m->data + sizeof xmp_ns, m->data_length - sizeof xmp_ns);
    }
    job->orientation = orientation_pick(exif, xmp);
    // PIL's modes: 1 component L, 3 RGB, 4 CMYK (libjpeg turns YCCK into CMYK).
    switch (job->cinfo.num_components) {
    case 1: job->cinfo.out_color_space = JCS_GRAYSCALE; break;
    case 3: job->cinfo.out_color_space = JCS_RGB; break;
    case 4: job->cinfo.out_color_space = JCS_CMYK, job->cmyk = 1; break;
    default:
        snprintf(job->jerr.msg, sizeof job->jerr.msg, "%d colour components: expected 1, 3 or 4",
                 job->cinfo.num_components);
        job->jerr.code = SDC_ERR_UNSUPPORTED;
        longjmp(job->jerr.jump, 1);
    }
    // libjpeg's defaults are PIL's: islow IDCT, fancy upsampling, no scaling.
    jpeg_start_decompress(&job->cinfo);
    int W = (int)job->cinfo.output_width, H = (int)job->cinfo.output_height, nc = job->cinfo.output_components;
    job->width = W, job->height = H, job->nc = nc;
    job->pixels = malloc((size_t)W * H * nc);
    if (!job->pixels) {
        snprintf(job->jerr.msg, sizeof job->jerr.msg, "out of memory for %dx%d pixels", W, H);
        job->jerr.code = SDC_ERR_OOM;
        longjmp(job->jerr.jump, 1);
    }
    while (job->cinfo.output_scanline < job->cinfo.output_height) {
        JSAMPROW row = job->pixels + (size_t)job->cinfo.output_scanline * W * nc;
        jpeg_read_scanlines(&job->cinfo, &row, 1);
    }
    // Every row is decoded: what follows (EOI, trailing bytes) is not needed,
    // so jpeg_finish_decompress is skipped and a missing EOI is accepted.
    return 0;
}

// PIL reads CMYK JPEGs as "CMYK;I" (Adobe polarity: stored inverted) and
// converts to RGB by R = 255 - K' - C'(255 - K') / 255 with C' = 255 - c,
// K' = 255 - k (rounded product). In terms of the stored bytes c, k:
// R = k - round((255 - c) k / 255).
static void cmyk_to_rgb(const uint8_t *in, uint8_t *out, size_t n) {
    for (size_t i = 0; i < n; i++, in += 4, out += 3)
        for (int c = 0; c < 3; c++) {
            unsigned nk = in[3], t = (255u - in[c]) * nk + 128u;
            int v = (int)nk - (int)((t + (t >> 8)) >> 8);
            out[c] = (uint8_t)(v < 0 ? 0 : v);
        }
}

static int jpeg_read_into(Image *out, const uint8_t *buf, size_t size, const char *name, int want,
                          int64_t max_pixels, SdcError *err) {
    JpegJob *job = calloc(1, sizeof *job); // large (jmp_buf + cinfo); heap keeps it off the fuzzer's stack
    if (!job) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", name);
    job->buf = buf, job->size = size, job->max_pixels = max_pixels;
    int rc = jpeg_decode(job);
    jpeg_destroy_decompress(&job->cinfo);
    if (rc) {
        free(job->pixels);
        if (job->dims.code)
            sdc_err(err, job->dims.code, "%s: %s", name, job->dims.msg);
        else if (rc == SDC_ERR_UNSUPPORTED || rc == SDC_ERR_OOM)
            sdc_err(err, rc, "%s: %s", name, job->jerr.msg);
        else
            sdc_err(err, rc, "%s: not a readable JPEG: %s ---> is the file complete? re-export it as PNG or JPEG",
                    name, job->jerr.msg);
        free(job);
        return rc;
    }
    size_t n = (size_t)job->width * job->height;
    if (job->cmyk) { // to RGB first, as PIL converts CMYK -> RGB (-> L)
        uint8_t *rgb = malloc(n * 3);
        if (!rgb) {
            free(job->pixels), free(job);
            return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", name);
        }
        cmyk_to_rgb(job->pixels, rgb, n);
        free(job->pixels);
        job->pixels = rgb, job->nc = 3;
    }
    int oc = want ? want : job->nc;
    out->width = job->width, out->height = job->height, out->channels = oc;
    if (oc == job->nc) {
        out->data = job->pixels;
    } else {
        uint8_t *dst = oc < job->nc ? job->pixels : malloc(n * oc);
        if (!dst) {
            free(job->pixels), free(job);
            memset(out, 0, sizeof *out);
            return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", name);
        }
        pixels_convert(job->pixels, job->nc, dst, oc, n);
        if (dst != job->pixels) free(job->pixels);
        out->data = dst;
    }
    int o = job->orientation;
    free(job);
    if (image_orient(out, o, err)) {
        image_free(out);
        return sdc_err_wrap(err, "%s", name);
    }
    return 0;
}

// ----------------------------------------------------------------------------
// reading: format by magic bytes

int image_read_mem(Image *out, const uint8_t *buf, size_t size, const char *name, int want_channels,
                   int64_t max_pixels, SdcError *err) {
    memset(out, 0, sizeof *out);
    if (!name) name = "(memory)";
    SDC_TRY(want_ok(want_channels, name, err));
    static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (size == 0)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: empty file (0 bytes): expected a PNG or JPEG image ---> was it "
                       "written completely?", name);
    if (size >= 8 && memcmp(buf, png_magic, 8) == 0)
        return png_read_into(out, buf, size, name, want_channels, max_pixels, err);
    if (size >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF)
        return jpeg_read_into(out, buf, size, name, want_channels, max_pixels, err);
    char head[40];
    int k = 0;
    for (size_t i = 0; i < size && i < 8; i++) k += snprintf(head + k, sizeof head - k, "%02x ", buf[i]);
    if (k) head[k - 1] = 0;
    return sdc_err(err, SDC_ERR_FORMAT, "%s: not a PNG or JPEG file (starts with bytes %s; expected 89 50 4e 47 "
                   "or ff d8 ff) ---> sdc reads PNG and JPEG by content, whatever the extension; convert other "
                   "formats first", name, head);
}

int image_read(Image *out, const char *path, int want_channels, SdcError *err) {
    memset(out, 0, sizeof *out);
    SDC_TRY(want_ok(want_channels, path, err));
    FILE *f = fopen(path, "rb");
    if (!f)
        return sdc_err(err, SDC_ERR_IO, "%s: cannot open (%s) ---> check the path", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= IMAGE_MAX_FILE_BYTES) {
                free(buf), fclose(f);
                return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: larger than %zu bytes: not an image sdc reads", path,
                               IMAGE_MAX_FILE_BYTES);
            }
            cap = cap ? cap * 2 : 1 << 16;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) {
                free(buf), fclose(f);
                return sdc_err(err, SDC_ERR_OOM, "%s: out of memory reading the file", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f) ? errno : 0;
    fclose(f);
    if (bad) {
        free(buf);
        return sdc_err(err, SDC_ERR_IO, "%s: read error (%s) ---> is it a regular, readable file?", path,
                       strerror(bad));
    }
    int rc = image_read_mem(out, buf, n, path, want_channels, 0, err);
    free(buf);
    return rc;
}

// ----------------------------------------------------------------------------
// conversions, crops, sizes

int image_convert(const Image *src, Image *dst, int channels, SdcError *err) {
    SDC_TRY(image_alloc(dst, src->width, src->height, channels, err));
    pixels_convert(src->data, src->channels, dst->data, channels, (size_t)src->width * src->height);
    return 0;
}

int image_crop(const Image *src, Image *dst, int x, int y, int width, int height, SdcError *err) {
    memset(dst, 0, sizeof *dst);
    if (x < 0 || y < 0 || width <= 0 || height <= 0 || x > src->width - width || y > src->height - height)
        return sdc_err(err, SDC_ERR_ARG, "image_crop: %dx%d at (%d, %d) does not lie inside the %dx%d image", width,
                       height, x, y, src->width, src->height);
    SDC_TRY(image_alloc(dst, width, height, src->channels, err));
    const int C = src->channels;
    for (int r = 0; r < height; r++)
        memcpy(dst->data + (size_t)r * width * C, src->data + ((size_t)(y + r) * src->width + x) * C,
               (size_t)width * C);
    return 0;
}

void image_short_side_size(int width, int height, int resolution, int *out_w, int *out_h) {
    int shorter = width <= height ? width : height, longer = width <= height ? height : width;
    int nl = (int)((double)resolution * longer / shorter); // Python int(): truncation
    *out_w = width <= height ? resolution : nl;
    *out_h = width <= height ? nl : resolution;
}

int image_center_offset(int size, int crop) {
    int d = size - crop;
    if (d % 2 == 0) return d / 2;
    int k = (d - (d < 0)) / 2; // floor(d / 2); d / 2 = k + 0.5: Python round() goes to the even one
    return k % 2 == 0 ? k : k + 1;
}

int image_check_same_size(const Image *a, const char *a_name, const Image *b, const char *b_name, SdcError *err) {
    if (a->width == b->width && a->height == b->height) return 0;
    return sdc_err(err, SDC_ERR_SHAPE, "%s is %dx%d but %s is %dx%d: expected the same size ---> resize %s to %dx%d",
                   a_name, a->width, a->height, b_name, b->width, b->height, a_name, b->width, b->height);
}

// ----------------------------------------------------------------------------
// resampling (PIL's Resample.c semantics)
//
// Each output pixel xx is a weighted sum of inputs xmin .. xmin + n - 1
// around center = (xx + 0.5) * in / out. The filter is stretched by
// max(in / out, 1): downscaling averages over every input pixel it covers
// (antialiasing). Weights are normalised to sum 1, then rounded to 22-bit
// fixed point; sums start at 0.5 (rounding) and are clipped to 0..255.
// Coefficient arithmetic must not be fused into FMAs (x86-64-v3 has them):
// a last-bit change flips a rounded coefficient now and then.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

#define RESAMPLE_BITS 22 // PIL's PRECISION_BITS: 32 - 8 - 2

static double filter_bilinear(double x) {
    x = fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

static double filter_bicubic(double x) { // Keys cubic, a = -0.5
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double filter_lanczos(double x) { // Lanczos-3
    return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0;
}

typedef struct Coeffs {
    int ksize;
    int *bounds; // (out, 2): first input index, count
    int32_t *k;  // (out, ksize) fixed-point weights
} Coeffs;

static void coeffs_free(Coeffs *c) {
    free(c->bounds), free(c->k);
    c->bounds = NULL, c->k = NULL;
}

static int coeffs_make(Coeffs *c, int in_size, int out_size, ImageFilter f, SdcError *err) {
    double (*fn)(double) = f == IMAGE_BILINEAR ? filter_bilinear : f == IMAGE_BICUBIC ? filter_bicubic : filter_lanczos;
    double support = f == IMAGE_BILINEAR ? 1.0 : f == IMAGE_BICUBIC ? 2.0 : 3.0;
    double scale = (double)in_size / out_size;
    double fscale = scale < 1.0 ? 1.0 : scale;
    support *= fscale;
    int ksize = (int)ceil(support) * 2 + 1;
    c->ksize = ksize;
    c->bounds = malloc(sizeof(int) * 2 * out_size);
    c->k = calloc((size_t)out_size * ksize, sizeof(int32_t));
    double *w = malloc(sizeof(double) * ksize); // this output's weights before rounding
    if (!c->bounds || !c->k || !w) {
        free(w), coeffs_free(c);
        return sdc_err(err, SDC_ERR_OOM, "image_resize: out of memory for %d x %d coefficients", out_size, ksize);
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        int n = xmax - xmin;
        double sum = 0.0;
        for (int x = 0; x < n; x++) {
            w[x] = fn((x + xmin - center + 0.5) / fscale);
            sum += w[x];
        }
        for (int x = 0; x < n; x++) {
            double v = sum != 0.0 ? w[x] / sum : w[x];
            double s = v * (double)(1 << RESAMPLE_BITS);
            c->k[(size_t)xx * ksize + x] = (int32_t)(v < 0 ? s - 0.5 : s + 0.5); // round half away from zero
        }
        c->bounds[2 * xx] = xmin, c->bounds[2 * xx + 1] = n;
    }
    free(w);
    return 0;
}

#if defined(__clang__)
#pragma STDC FP_CONTRACT ON
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

static inline uint8_t clip_fixed(int64_t acc) {
    if (acc < 0) return 0;
    acc >>= RESAMPLE_BITS;
    return (uint8_t)(acc > 255 ? 255 : acc);
}

// rows [y0, y0 + h) of src (w_in wide) -> dst (h, out_w, C).
static void resample_horizontal(const uint8_t *src, int w_in, int C, int y0, int h, const Coeffs *c, int out_w,
                                uint8_t *dst) {
    for (int y = 0; y < h; y++) {
        const uint8_t *row = src + (size_t)(y0 + y) * w_in * C;
        uint8_t *o = dst + (size_t)y * out_w * C;
        for (int xx = 0; xx < out_w; xx++) {
            const int xmin = c->bounds[2 * xx], n = c->bounds[2 * xx + 1];
            const int32_t *k = c->k + (size_t)xx * c->ksize;
            for (int ch = 0; ch < C; ch++) {
                int64_t acc = 1 << (RESAMPLE_BITS - 1);
                for (int x = 0; x < n; x++) acc += (int64_t)row[(size_t)(xmin + x) * C + ch] * k[x];
                o[(size_t)xx * C + ch] = clip_fixed(acc);
            }
        }
    }
}

// src (h_in, w, C) whose row 0 is source row `shift` -> dst (out_h, w, C).
static void resample_vertical(const uint8_t *src, int w, int C, int shift, const Coeffs *c, int out_h, uint8_t *dst) {
    const size_t stride = (size_t)w * C;
    for (int yy = 0; yy < out_h; yy++) {
        const int ymin = c->bounds[2 * yy] - shift, n = c->bounds[2 * yy + 1];
        const int32_t *k = c->k + (size_t)yy * c->ksize;
        uint8_t *o = dst + (size_t)yy * stride;
        for (size_t i = 0; i < stride; i++) {
            int64_t acc = 1 << (RESAMPLE_BITS - 1);
            for (int y = 0; y < n; y++) acc += (int64_t)src[(size_t)(ymin + y) * stride + i] * k[y];
            o[i] = clip_fixed(acc);
        }
    }
}

// PIL resizes with NEAREST by an affine scale: source index floor of
// (x + 0.5) * in / out, accumulated step by step as PIL does.
static int resize_nearest(const Image *src, Image *dst, SdcError *err) {
    const int C = src->channels;
    int *xs = malloc(sizeof(int) * dst->width); // (out_w) source columns
    if (!xs) return sdc_err(err, SDC_ERR_OOM, "image_resize: out of memory");
    double a = (double)src->width / dst->width, xo = a * 0.5;
    for (int x = 0; x < dst->width; x++, xo += a) {
        int v = (int)xo;
        xs[x] = v < src->width ? v : src->width - 1;
    }
    double b = (double)src->height / dst->height, yo = b * 0.5;
    for (int y = 0; y < dst->height; y++, yo += b) {
        int sy = (int)yo;
        if (sy >= src->height) sy = src->height - 1;
        const uint8_t *row = src->data + (size_t)sy * src->width * C;
        uint8_t *o = dst->data + (size_t)y * dst->width * C;
        for (int x = 0; x < dst->width; x++) memcpy(o + (size_t)x * C, row + (size_t)xs[x] * C, C);
    }
    free(xs);
    return 0;
}

int image_resize(const Image *src, Image *dst, int width, int height, ImageFilter filter, SdcError *err) {
    memset(dst, 0, sizeof *dst);
    if (filter < IMAGE_NEAREST || filter > IMAGE_LANCZOS)
        return sdc_err(err, SDC_ERR_ARG, "image_resize: unknown filter %d", (int)filter);
    SDC_TRY(image_alloc(dst, width, height, src->channels, err));
    const int C = src->channels, W = src->width, H = src->height;
    if (width == W && height == H) { // PIL returns a copy
        memcpy(dst->data, src->data, (size_t)W * H * C);
        return 0;
    }
    if (filter == IMAGE_NEAREST) {
        int rc = resize_nearest(src, dst, err);
        if (rc) image_free(dst);
        return rc;
    }
    Coeffs ch = {0}, cv = {0};
    int rc = coeffs_make(&ch, W, width, filter, err);
    if (!rc) rc = coeffs_make(&cv, H, height, filter, err);
    uint8_t *tmp = NULL;
    if (!rc) {
        const int need_h = width != W, need_v = height != H;
        // Only source rows some output row uses go through the horizontal pass.
        const int y_first = cv.bounds[0], y_last = cv.bounds[2 * height - 2] + cv.bounds[2 * height - 1];
        if (need_h && need_v) {
            tmp = malloc((size_t)(y_last - y_first) * width * C); // (y_last - y_first, width, C)
            if (!tmp) {
                rc = sdc_err(err, SDC_ERR_OOM, "image_resize: out of memory");
            } else {
                resample_horizontal(src->data, W, C, y_first, y_last - y_first, &ch, width, tmp);
                resample_vertical(tmp, width, C, y_first, &cv, height, dst->data);
            }
        } else if (need_h) {
            resample_horizontal(src->data, W, C, 0, H, &ch, width, dst->data);
        } else {
            resample_vertical(src->data, W, C, 0, &cv, height, dst->data);
        }
    }
    free(tmp);
    coeffs_free(&ch), coeffs_free(&cv);
    if (rc) image_free(dst);
    return rc;
}

int image_resize_crop(const Image *src, Image *dst, int resolution, ImageFilter filter, int x, int y,
                      SdcError *err) {
    memset(dst, 0, sizeof *dst);
    if (resolution <= 0 || resolution > IMAGE_MAX_SIDE)
        return sdc_err(err, SDC_ERR_ARG, "resolution %d: expected 1 .. %d", resolution, IMAGE_MAX_SIDE);
    int rw, rh;
    image_short_side_size(src->width, src->height, resolution, &rw, &rh);
    if (x < 0 || y < 0) x = image_center_offset(rw, resolution), y = image_center_offset(rh, resolution);
    if (x > rw - resolution || y > rh - resolution)
        return sdc_err(err, SDC_ERR_ARG, "crop at (%d, %d) of %dx%d does not fit in the image resized to %dx%d "
                       "---> offsets go from 0 to %d, %d", x, y, resolution, resolution, rw, rh, rw - resolution,
                       rh - resolution);
    Image mid;
    SDC_TRY(image_resize(src, &mid, rw, rh, filter, err));
    int rc = image_crop(&mid, dst, x, y, resolution, resolution, err);
    image_free(&mid);
    return rc;
}

// ----------------------------------------------------------------------------
// outpainting

int image_outpaint_canvas(const Image *src, int left, int top, int right, int bottom, int overlap, Image *canvas,
                          Image *mask, SdcError *err) {
    memset(canvas, 0, sizeof *canvas);
    memset(mask, 0, sizeof *mask);
    if (left < 0 || top < 0 || right < 0 || bottom < 0 || overlap < 0)
        return sdc_err(err, SDC_ERR_ARG, "outpaint: extensions left %d, top %d, right %d, bottom %d, overlap %d: "
                       "expected >= 0", left, top, right, bottom, overlap);
    const int64_t cw = (int64_t)left + src->width + right, chh = (int64_t)top + src->height + bottom;
    if (cw % 8 || chh % 8)
        return sdc_err(err, SDC_ERR_ARG, "outpaint: canvas %lldx%lld (image %dx%d + left %d + right %d, + top %d + "
                       "bottom %d): expected multiples of 8 ---> adjust the extensions, e.g. right %lld, bottom %lld",
                       (long long)cw, (long long)chh, src->width, src->height, left, right, top, bottom,
                       (long long)(right + (8 - cw % 8) % 8), (long long)(bottom + (8 - chh % 8) % 8));
    if (cw > IMAGE_MAX_SIDE || chh > IMAGE_MAX_SIDE)
        return sdc_err(err, SDC_ERR_ARG, "outpaint: canvas %lldx%lld exceeds %d a side", (long long)cw,
                       (long long)chh, IMAGE_MAX_SIDE);
    SDC_TRY(image_alloc(canvas, (int)cw, (int)chh, src->channels, err));
    if (image_alloc(mask, (int)cw, (int)chh, 1, err)) {
        image_free(canvas);
        return err ? err->code : SDC_ERR_OOM;
    }
    const int C = src->channels, W = src->width, H = src->height;
    for (int y = 0; y < chh; y++) {
        int sy = y - top;
        sy = sy < 0 ? 0 : sy >= H ? H - 1 : sy;
        for (int x = 0; x < cw; x++) {
            int sx = x - left;
            sx = sx < 0 ? 0 : sx >= W ? W - 1 : sx;
            memcpy(canvas->data + ((size_t)y * cw + x) * C, src->data + ((size_t)sy * W + sx) * C, C);
            int inside = x >= left && x < left + W && y >= top && y < top + H;
            uint8_t m = 255;
            if (inside) {
                // distance to the nearest extended side (sides not extended do not count)
                int d = overlap;
                if (left > 0 && x - left < d) d = x - left;
                if (right > 0 && left + W - 1 - x < d) d = left + W - 1 - x;
                if (top > 0 && y - top < d) d = y - top;
                if (bottom > 0 && top + H - 1 - y < d) d = top + H - 1 - y;
                m = d >= overlap ? 0 : (uint8_t)((510 * (overlap - d) + overlap) / (2 * overlap));
            }
            mask->data[(size_t)y * cw + x] = m;
        }
    }
    return 0;
}

// ----------------------------------------------------------------------------
// tensors

int image_to_tensor(const Image *im, float *out, SdcError *err) {
    if (im->channels != 3)
        return sdc_err(err, SDC_ERR_ARG, "image_to_tensor: %d channels: expected an RGB image ---> read it with "
                       "want_channels 3", im->channels);
    const size_t plane = (size_t)im->width * im->height;
    for (size_t p = 0; p < plane; p++)
        for (int c = 0; c < 3; c++) {
            float t = (float)im->data[p * 3 + c] / 255.0f;
            out[c * plane + p] = 2.0f * t - 1.0f; // 2t is exact: one rounding either way, as in diffusers
        }
    return 0;
}

int mask_to_tensor(const Image *mask, float *out, SdcError *err) {
    if (mask->channels != 1 && mask->channels != 3)
        return sdc_err(err, SDC_ERR_ARG, "mask_to_tensor: %d channels: expected 1 or 3", mask->channels);
    const size_t n = (size_t)mask->width * mask->height;
    for (size_t p = 0; p < n; p++) {
        uint8_t v = mask->channels == 1 ? mask->data[p] : luma(mask->data + p * 3);
        out[p] = v >= 128 ? 1.0f : 0.0f; // v / 255 >= 0.5
    }
    return 0;
}

void mask_downsample(const float *mask, int height, int width, float *out, int out_h, int out_w) {
    const float sy = (float)height / (float)out_h, sx = (float)width / (float)out_w;
    for (int y = 0; y < out_h; y++) {
        int iy = out_h == height ? y : (int)floorf((float)y * sy);
        if (iy > height - 1) iy = height - 1;
        for (int x = 0; x < out_w; x++) {
            int ix = out_w == width ? x : (int)floorf((float)x * sx);
            if (ix > width - 1) ix = width - 1;
            out[(size_t)y * out_w + x] = mask[(size_t)iy * width + ix];
        }
    }
}

void image_mask_out(const float *image, const float *mask, int height, int width, float *out) {
    const size_t plane = (size_t)height * width;
    for (int c = 0; c < 3; c++)
        for (size_t p = 0; p < plane; p++) out[c * plane + p] = mask[p] < 0.5f ? image[c * plane + p] : 0.0f;
}

// ----------------------------------------------------------------------------
// writing

// What must survive libpng's longjmp while writing: owned by
// image_write_png, filled by the callbacks and the setjmp owner below.
typedef struct PngOut {
    FILE *f;
    int sys_errno;  // errno of the first failed fwrite (ENOSPC on a full disk)
    char msg[200];  // libpng's own message
} PngOut;

static void png_out_error(png_structp png, png_const_charp msg) {
    PngOut *o = png_get_error_ptr(png);
    if (!o->msg[0]) snprintf(o->msg, sizeof o->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_out_write(png_structp png, png_bytep data, size_t n) {
    PngOut *o = png_get_io_ptr(png);
    if (fwrite(data, 1, n, o->f) != n) {
        if (!o->sys_errno) o->sys_errno = errno ? errno : EIO;
        png_error(png, "write error");
    }
}

static void png_out_flush(png_structp png) { (void)png; }

// The one setjmp owner for writing: 0, or -1 with o->msg / o->sys_errno set.
static int png_write_all(PngOut *o, const uint8_t *rgb, int width, int height, const char *parameters) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, o, png_out_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, NULL);
        snprintf(o->msg, sizeof o->msg, "libpng could not start (out of memory)");
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    png_set_write_fn(png, o, png_out_write, png_out_flush);
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
    return 0;
}

// Written to PATH.tmp and renamed: a failed write (a full disk) leaves no
// file at path, and an earlier image there stays as it was.
int image_write_png(const char *path, const uint8_t *rgb, int width, int height, const char *parameters,
                    SdcError *err) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return sdc_err(err, SDC_ERR_ARG, "output path too long: %s", path);
    PngOut o = {.f = fopen(tmp, "wb")};
    if (!o.f)
        return sdc_err(err, SDC_ERR_IO, "%s: cannot create (%s) ---> does the folder exist and is it writable?",
                       path, strerror(errno));
    errno = 0;
    int bad = png_write_all(&o, rgb, width, height, parameters);
    // stdio's buffer goes out here: on a full disk this is often where it fails
    if (fflush(o.f) != 0 && !o.sys_errno) o.sys_errno = errno ? errno : EIO, bad = -1;
    if (fclose(o.f) != 0 && !o.sys_errno) o.sys_errno = errno ? errno : EIO, bad = -1;
    if (bad) {
        remove(tmp);
        if (o.sys_errno)
            return sdc_err(err, SDC_ERR_IO, "%s: cannot write the image: %s ---> %s", path, strerror(o.sys_errno),
                           o.sys_errno == ENOSPC || o.sys_errno == EDQUOT
                               ? "the disk (or quota) is full: free space there or write elsewhere"
                               : "is the file system healthy?");
        return sdc_err(err, SDC_ERR_IO, "%s: libpng failed while writing: %s", path, o.msg);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return sdc_err(err, SDC_ERR_IO, "%s: cannot rename from %s (%s)", path, tmp, strerror(e));
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
