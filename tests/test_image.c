// test_image.c: images in (src/io/image.c) against what PIL, torchvision and
// diffusers make of the same files (tests/fixtures/images/, written by
// tools/make_image_fixture.py):
// (1) every fixture decoded to RGB and to L, compared pixel by pixel with
//     PIL's exif_transpose + convert (PNG exact; JPEG: both sides use
//     libjpeg-turbo's islow IDCT and fancy upsampling, so also exact);
// (2) EXIF Orientation 1..8 in JPEG APP1 and PNG eXIf, both byte orders, all
//     giving the same upright picture; the EXIF parser on damaged blocks;
// (3) resizing vs PIL Image.resize (NEAREST, BILINEAR, BICUBIC, LANCZOS; down,
//     up, mixed): max |diff| per filter, tolerance 1 level;
// (4) DreamBooth short-side resize + centre / offset crop vs torchvision;
// (5) image / mask tensors, latent mask and masked image vs diffusers/torch;
// (6) the outpainting canvas and mask;
// (7) bad input: truncated, text, empty, missing, 0x0, huge, every prefix of
//     a PNG and a JPEG: each a clear error naming the file, never a crash;
// (8) image_write_png -> image_read round trip.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/image.h"
#include "io/safetensors.h"
#include "testutil.h"

#define DIR "tests/fixtures/images/"

static StFile g_refs;

// ----------------------------------------------------------------------------
// helpers

// The reference u8 tensor `name`; its element count must be n.
static const uint8_t *ref_u8(TestCtx *t, const char *name, size_t n) {
    Tensor r;
    SdcError err = {0};
    if (st_get(&g_refs, name, &r, &err)) {
        check_true(t, 0, "reference %s: %s", name, err.msg);
        return NULL;
    }
    if (r.dtype != DT_U8 || (size_t)tensor_numel(&r) != n) {
        check_true(t, 0, "reference %s: dtype %s, %lld values, expected u8 x %zu", name, dtype_name(r.dtype),
                   (long long)tensor_numel(&r), n);
        return NULL;
    }
    return r.data;
}

static const float *ref_f32(TestCtx *t, const char *name, size_t n) {
    Tensor r;
    SdcError err = {0};
    if (st_get(&g_refs, name, &r, &err) || r.dtype != DT_F32 || (size_t)tensor_numel(&r) != n) {
        check_true(t, 0, "reference %s: missing or not f32 x %zu (%s)", name, n, err.msg);
        return NULL;
    }
    return r.data;
}

static int max_diff_u8(const uint8_t *a, const uint8_t *b, size_t n) {
    int m = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        if (d > m) m = d;
    }
    return m;
}

// Compares im with reference `name` of shape (h, w[, c]); returns max |diff| or -1.
static int compare_ref(TestCtx *t, const Image *im, const char *name, int tol, const char *label) {
    size_t n = (size_t)im->width * im->height * im->channels;
    Tensor r;
    SdcError err = {0};
    if (st_get(&g_refs, name, &r, &err)) {
        check_true(t, 0, "%s: no reference %s", label, name);
        return -1;
    }
    int rh = (int)r.shape[0], rw = (int)r.shape[1], rc = r.ndim == 3 ? (int)r.shape[2] : 1;
    if (rh != im->height || rw != im->width || rc != im->channels) {
        check_true(t, 0, "%-44s size %dx%dx%d, PIL %dx%dx%d", label, im->width, im->height, im->channels, rw, rh, rc);
        return -1;
    }
    const uint8_t *ref = ref_u8(t, name, n);
    if (!ref) return -1;
    int d = max_diff_u8(im->data, ref, n);
    check_true(t, d <= tol, "%-44s %dx%dx%d  max|diff|=%d  tol=%d", label, im->width, im->height, im->channels, d,
               tol);
    return d;
}

static char *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(n > 0 ? (size_t)n : 1);
    *size = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

// ----------------------------------------------------------------------------
// (1) decoding vs PIL

static void test_decode(TestCtx *t) {
    printf("decode vs PIL exif_transpose + convert (RGB and L):\n");
    static const char *files[] = {"rgb.png",        "rgba.png",       "gray.png",       "gray_alpha.png",
                                  "gray1.png",      "palette.png",    "palette4.png",   "rgb16.png",
                                  "interlaced.png", "rgb420.jpg",     "rgb422.jpg",     "rgb444.jpg",
                                  "gray.jpg",       "progressive.jpg", "cmyk.jpg"};
    int worst_png = 0, worst_jpg = 0;
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        int jpg = strstr(files[i], ".jpg") != NULL;
        for (int want = 1; want <= 3; want += 2) {
            char path[256], ref[128], label[128];
            snprintf(path, sizeof path, DIR "%s", files[i]);
            snprintf(ref, sizeof ref, "dec.%s.%s", files[i], want == 3 ? "rgb" : "l");
            snprintf(label, sizeof label, "%s -> %s", files[i], want == 3 ? "RGB" : "L");
            Image im;
            SdcError err = {0};
            if (image_read(&im, path, want, &err)) {
                check_true(t, 0, "%s: %s", label, err.msg);
                continue;
            }
            int d = compare_ref(t, &im, ref, 0, label);
            if (jpg && d > worst_jpg) worst_jpg = d;
            if (!jpg && d > worst_png) worst_png = d;
            image_free(&im);
        }
    }
    printf("  max |diff| vs PIL: PNG %d, JPEG %d\n", worst_png, worst_jpg);
    // 16-bit gray: sdc keeps the high byte (PIL would clip the 16-bit value to 255).
    Image im;
    SdcError err = {0};
    if (!image_read(&im, DIR "gray16.png", 1, &err)) {
        compare_ref(t, &im, "dec.gray16.png.l", 0, "gray16.png -> L (high byte)");
        image_free(&im);
    } else {
        check_true(t, 0, "gray16.png: %s", err.msg);
    }
    // want_channels 0: as stored.
    static const struct { const char *f; int c; } native[] = {
        {"gray.png", 1}, {"gray_alpha.png", 1}, {"gray1.png", 1}, {"rgba.png", 3},
        {"palette.png", 3}, {"gray.jpg", 1}, {"cmyk.jpg", 3}, {"rgb420.jpg", 3}};
    for (size_t i = 0; i < sizeof native / sizeof *native; i++) {
        char path[256];
        snprintf(path, sizeof path, DIR "%s", native[i].f);
        int rc = image_read(&im, path, 0, &err);
        check_true(t, !rc && im.channels == native[i].c, "%-44s as stored: %d channel(s), expected %d",
                   native[i].f, rc ? -1 : im.channels, native[i].c);
        if (!rc) image_free(&im);
    }
}

// ----------------------------------------------------------------------------
// (2) EXIF orientation

static void test_exif(TestCtx *t) {
    printf("EXIF orientation (JPEG APP1, PNG eXIf; odd o big-endian, even o little-endian):\n");
    const uint8_t *up = ref_u8(t, "upright", 12 * 20 * 3);
    if (!up) return;
    int worst_jpg = 0;
    for (int o = 1; o <= 8; o++) {
        for (int jpg = 0; jpg <= 1; jpg++) {
            char path[256], ref[64], label[64];
            snprintf(path, sizeof path, DIR "exif_%d.%s", o, jpg ? "jpg" : "png");
            snprintf(ref, sizeof ref, "dec.exif_%d.%s.rgb", o, jpg ? "jpg" : "png");
            snprintf(label, sizeof label, "exif_%d.%s vs PIL", o, jpg ? "jpg" : "png");
            Image im;
            SdcError err = {0};
            if (image_read(&im, path, 3, &err)) {
                check_true(t, 0, "%s: %s", label, err.msg);
                continue;
            }
            compare_ref(t, &im, ref, 0, label);
            int upright = im.width == 20 && im.height == 12;
            int d = upright ? max_diff_u8(im.data, up, 12 * 20 * 3) : 999;
            // PNG is lossless: exactly the upright picture. JPEG: the upright
            // picture up to compression error (each orientation is a
            // differently rotated encoding, so the errors differ).
            if (jpg) {
                if (d > worst_jpg) worst_jpg = d;
                check_true(t, upright && d <= 24, "exif_%d.jpg upright 20x12 (got %dx%d), max|diff| to the picture %d "
                           "(JPEG q95)", o, im.width, im.height, d);
            } else {
                check_true(t, upright && d == 0, "exif_%d.png upright 20x12 (got %dx%d), identical to the picture", o,
                           im.width, im.height);
            }
            image_free(&im);
        }
    }
    // Orientation from XMP (JPEG APP1, PNG iTXt) and a PNG raw-profile text
    // chunk, which PIL's getexif also reads.
    static const char *other[] = {"xmp_6.jpg", "xmp_3.png", "rawexif_8.png"};
    for (int i = 0; i < 3; i++) {
        char path[256], ref[64], label[64];
        snprintf(path, sizeof path, DIR "%s", other[i]);
        snprintf(ref, sizeof ref, "dec.%s.rgb", other[i]);
        snprintf(label, sizeof label, "%s vs PIL (upright)", other[i]);
        Image im;
        SdcError err = {0};
        if (image_read(&im, path, 3, &err)) {
            check_true(t, 0, "%s: %s", label, err.msg);
            continue;
        }
        compare_ref(t, &im, ref, 0, label);
        image_free(&im);
    }
    printf("  JPEG orientations: max |diff| to the lossless picture %d\n", worst_jpg);

    // The parser on hand-made and damaged blocks.
    uint8_t le[] = {'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0};
    uint8_t be[] = {'M', 'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0};
    check_true(t, image_exif_orientation(le, sizeof le) == 6, "exif parser: II block, orientation 6");
    check_true(t, image_exif_orientation(be, sizeof be) == 8, "exif parser: MM block, orientation 8");
    int ok = 1;
    for (size_t n = 0; n < 18; n++) ok &= image_exif_orientation(le, n) == 1; // entry cut off: absent
    check_true(t, ok, "exif parser: every truncation before the value gives 1");
    uint8_t bad[sizeof le];
    memcpy(bad, le, sizeof le);
    bad[4] = 0xF0, bad[7] = 0x7F; // IFD offset far outside
    check_true(t, image_exif_orientation(bad, sizeof bad) == 1, "exif parser: IFD offset outside the block gives 1");
    memcpy(bad, le, sizeof le);
    bad[8] = 0xFF, bad[9] = 0xFF; // 65535 entries claimed
    check_true(t, image_exif_orientation(bad, sizeof bad) == 6, "exif parser: inflated entry count stays in bounds");
    memcpy(bad, le, sizeof le);
    bad[18] = 9; // orientation 9 does not exist
    check_true(t, image_exif_orientation(bad, sizeof bad) == 1, "exif parser: orientation 9 ignored");
}

// ----------------------------------------------------------------------------
// (3) resize vs PIL

static void test_resize(TestCtx *t) {
    printf("resize vs PIL Image.resize:\n");
    Image src, small, sgray;
    SdcError err = {0};
    if (image_read(&src, DIR "src97x61.png", 3, &err)) {
        check_true(t, 0, "%s", err.msg);
        return;
    }
    // The fixture's upsampling source: src.crop((10, 5, 42, 29)).convert("L").
    Image tmp;
    if (image_crop(&src, &small, 10, 5, 32, 24, &err) || image_convert(&small, &sgray, 1, &err)) {
        check_true(t, 0, "crop/convert: %s", err.msg);
        image_free(&src);
        return;
    }
    static const char *fname[] = {"nearest", "bilinear", "bicubic", "lanczos"};
    static const struct { const char *name; int w, h, gray; } cases[] = {
        {"down64x64", 64, 64, 0}, {"mixed40x70", 40, 70, 0}, {"up100x75", 100, 75, 1}, {"third", 32, 20, 0}};
    for (int f = 0; f < 4; f++) {
        int worst = 0;
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
            char ref[64], label[96];
            snprintf(ref, sizeof ref, "rs.%s.%s", cases[c].name, fname[f]);
            const Image *in = cases[c].gray ? &sgray : &src;
            snprintf(label, sizeof label, "%s %dx%d -> %dx%d %s", fname[f], in->width, in->height, cases[c].w,
                     cases[c].h, cases[c].gray ? "(L)" : "(RGB)");
            if (image_resize(in, &tmp, cases[c].w, cases[c].h, (ImageFilter)f, &err)) {
                check_true(t, 0, "%s: %s", label, err.msg);
                continue;
            }
            int d = compare_ref(t, &tmp, ref, 1, label);
            if (d > worst) worst = d;
            image_free(&tmp);
        }
        printf("  %s: max |diff| vs PIL over all cases = %d\n", fname[f], worst);
    }
    // Same size is a copy; a single axis takes one pass.
    int rc = image_resize(&src, &tmp, 97, 61, IMAGE_LANCZOS, &err);
    check_true(t, !rc && !memcmp(tmp.data, src.data, 97 * 61 * 3), "resize to the same size copies");
    if (!rc) image_free(&tmp);
    rc = image_resize(&src, &tmp, 0, 10, IMAGE_BICUBIC, &err);
    check_true(t, rc != 0, "resize to 0x10 refused: %s", rc ? err.msg : "ACCEPTED");
    image_free(&src), image_free(&small), image_free(&sgray);
}

// ----------------------------------------------------------------------------
// (4) DreamBooth preprocessing

static void test_dreambooth(TestCtx *t) {
    printf("DreamBooth resize (short side, bilinear) + crop vs torchvision:\n");
    // torchvision CenterCrop: int(round((size - crop) / 2)), half to even.
    static const int oc[][3] = {{10, 10, 0}, {11, 10, 0}, {13, 10, 2}, {15, 10, 2}, {17, 10, 4}, {12, 10, 1},
                                {71, 48, 12}, {73, 48, 12}, {75, 48, 14}};
    int ok = 1;
    for (size_t i = 0; i < sizeof oc / sizeof *oc; i++) ok &= image_center_offset(oc[i][0], oc[i][1]) == oc[i][2];
    check_true(t, ok, "centre offsets follow Python round (half to even)");
    int w, h;
    image_short_side_size(97, 61, 48, &w, &h);
    check_true(t, w == 76 && h == 48, "short side 97x61 @48 -> %dx%d (int(48*97/61) = 76)", w, h);
    image_short_side_size(61, 90, 48, &w, &h);
    check_true(t, w == 48 && h == 70, "short side 61x90 @48 -> %dx%d", w, h);

    Image src, tall, out;
    SdcError err = {0};
    if (image_read(&src, DIR "src97x61.png", 3, &err) || image_read(&tall, DIR "tall61x90.png", 3, &err)) {
        check_true(t, 0, "%s", err.msg);
        return;
    }
    if (!image_resize_crop(&src, &out, 48, IMAGE_BILINEAR, -1, -1, &err)) {
        compare_ref(t, &out, "db.center48", 1, "97x61 -> 48 centre crop");
        image_free(&out);
    } else check_true(t, 0, "%s", err.msg);
    if (!image_resize_crop(&src, &out, 48, IMAGE_BILINEAR, 9, 0, &err)) {
        compare_ref(t, &out, "db.crop48_x9", 1, "97x61 -> 48 crop at (9, 0)");
        image_free(&out);
    } else check_true(t, 0, "%s", err.msg);
    if (!image_resize_crop(&tall, &out, 48, IMAGE_BILINEAR, -1, -1, &err)) {
        compare_ref(t, &out, "db.tall_center48", 1, "61x90 -> 48 centre crop (odd margin)");
        image_free(&out);
    } else check_true(t, 0, "%s", err.msg);
    int rc = image_resize_crop(&src, &out, 48, IMAGE_BILINEAR, 29, 0, &err);
    check_true(t, rc && strstr(err.msg, "0 to 28"), "crop offset 29 of 76-48 refused: %s", rc ? err.msg : "ACCEPTED");
    rc = image_crop(&src, &out, 90, 0, 8, 8, &err);
    check_true(t, rc != 0, "crop outside the image refused: %s", rc ? err.msg : "ACCEPTED");
    image_free(&src), image_free(&tall);
}

// ----------------------------------------------------------------------------
// (5) tensors

static void test_tensors(TestCtx *t) {
    printf("image / mask tensors vs diffusers VaeImageProcessor and torch interpolate:\n");
    Image img, mask;
    SdcError err = {0};
    if (image_read(&img, DIR "img24x16.png", 3, &err) || image_read(&mask, DIR "mask24x16.png", 1, &err)) {
        check_true(t, 0, "%s", err.msg);
        return;
    }
    const size_t plane = 24 * 16;
    float *ti = malloc(sizeof(float) * 3 * plane), *tm = malloc(sizeof(float) * plane);
    float *masked = malloc(sizeof(float) * 3 * plane), *lat = malloc(sizeof(float) * 40 * 50);
    const float *r;
    if (!image_to_tensor(&img, ti, &err) && (r = ref_f32(t, "t.image", 3 * plane)))
        check_true(t, max_abs_diff(ti, r, 3 * plane) == 0, "image tensor (3, 16, 24) = x/255*2-1 exactly "
                   "(max|diff| %.3g)", max_abs_diff(ti, r, 3 * plane));
    if (!mask_to_tensor(&mask, tm, &err) && (r = ref_f32(t, "t.mask", plane)))
        check_true(t, max_abs_diff(tm, r, plane) == 0, "mask binarised at 0.5 (127 -> 0, 128 -> 1): %g %g", tm[2 * 24 + 2],
                   tm[3 * 24 + 3]);
    // The same mask as RGB gives the same binarisation.
    Image mrgb;
    if (!image_convert(&mask, &mrgb, 3, &err)) {
        float *tm3 = malloc(sizeof(float) * plane);
        mask_to_tensor(&mrgb, tm3, &err);
        check_true(t, max_abs_diff(tm3, tm, plane) == 0, "RGB mask -> L -> same binary mask");
        free(tm3), image_free(&mrgb);
    }
    static const int sizes[][2] = {{2, 3}, {5, 7}, {16, 24}, {40, 50}};
    for (int i = 0; i < 4; i++) {
        char name[64];
        int h = sizes[i][0], w = sizes[i][1];
        snprintf(name, sizeof name, "t.mask_latent.%dx%d", h, w);
        mask_downsample(tm, 16, 24, lat, h, w);
        if ((r = ref_f32(t, name, (size_t)h * w)))
            check_true(t, max_abs_diff(lat, r, (size_t)h * w) == 0, "mask 24x16 -> %dx%d nearest = torch interpolate",
                       w, h);
    }
    image_mask_out(ti, tm, 16, 24, masked);
    if ((r = ref_f32(t, "t.masked", 3 * plane)))
        check_true(t, max_abs_diff(masked, r, 3 * plane) == 0, "masked image = image * (mask < 0.5)");
    int rc = image_to_tensor(&mask, ti, &err);
    check_true(t, rc != 0, "image_to_tensor of a gray image refused: %s", rc ? err.msg : "ACCEPTED");
    rc = image_check_same_size(&mask, "mask m.png", &mask, "image i.png", &err);
    check_true(t, rc == 0, "same size accepted");
    Image other;
    if (!image_alloc(&other, 64, 48, 3, &err)) {
        rc = image_check_same_size(&mask, "mask m.png", &other, "image i.png", &err);
        check_true(t, rc && strstr(err.msg, "mask m.png is 24x16") && strstr(err.msg, "image i.png is 64x48"),
                   "size mismatch names both: %s", rc ? err.msg : "ACCEPTED");
        image_free(&other);
    }
    free(ti), free(tm), free(masked), free(lat);
    image_free(&img), image_free(&mask);
}

// ----------------------------------------------------------------------------
// (6) outpainting canvas

static void test_outpaint(TestCtx *t) {
    printf("outpainting canvas and mask:\n");
    Image src, canvas, mask;
    SdcError err = {0};
    if (image_read(&src, DIR "rgb.png", 3, &err)) { // 33x21
        check_true(t, 0, "%s", err.msg);
        return;
    }
    // 33 + 7 + 0 = 40, 21 + 3 + 8 = 32.
    int rc = image_outpaint_canvas(&src, 7, 3, 0, 8, 0, &canvas, &mask, &err);
    if (!check_true(t, !rc && canvas.width == 40 && canvas.height == 32 && mask.channels == 1,
                    "33x21 + (l7, t3, r0, b8) -> 40x32 canvas: %s", rc ? err.msg : "ok")) {
        image_free(&src);
        return;
    }
    int paste = 1, fill = 1, mk = 1;
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 40; x++) {
            int in = x >= 7 && y >= 3 && y < 24;
            int sx = x < 7 ? 0 : x - 7, sy = y < 3 ? 0 : y >= 24 ? 20 : y - 3;
            const uint8_t *c = canvas.data + ((size_t)y * 40 + x) * 3, *s = src.data + ((size_t)sy * 33 + sx) * 3;
            if (in) paste &= !memcmp(c, s, 3);
            else fill &= !memcmp(c, s, 3);
            mk &= mask.data[y * 40 + x] == (in ? 0 : 255);
        }
    check_true(t, paste, "original pasted at (7, 3) unchanged");
    check_true(t, fill, "new area = nearest original pixel (edge replication)");
    check_true(t, mk, "mask 255 over the new area, 0 over the original");
    image_free(&canvas), image_free(&mask);
    // Overlap 4: ramp 255, 191, 128, 64 into the original from each extended side.
    rc = image_outpaint_canvas(&src, 7, 3, 0, 8, 4, &canvas, &mask, &err);
    if (!rc) {
        const uint8_t *row = mask.data + 12 * 40; // a middle row: left side extended
        const uint8_t *col = mask.data + 20;      // column 20: top and bottom extended
        check_true(t, row[6] == 255 && row[7] == 255 && row[8] == 191 && row[9] == 128 && row[10] == 64 &&
                          row[11] == 0 && row[39] == 0,
                   "overlap 4 ramps left: %d %d %d %d %d %d, right side (not extended) %d", row[7], row[8], row[9],
                   row[10], row[11], row[12], row[39]);
        check_true(t, col[2 * 40] == 255 && col[3 * 40] == 255 && col[4 * 40] == 191 && col[23 * 40] == 255 &&
                          col[22 * 40] == 191 && col[12 * 40] == 0,
                   "overlap 4 ramps top and bottom");
        image_free(&canvas), image_free(&mask);
    } else check_true(t, 0, "overlap: %s", err.msg);
    rc = image_outpaint_canvas(&src, 8, 0, 0, 0, 0, &canvas, &mask, &err);
    check_true(t, rc && strstr(err.msg, "multiples of 8"), "41x21 canvas refused: %s", rc ? err.msg : "ACCEPTED");
    rc = image_outpaint_canvas(&src, -8, 0, 0, 0, 0, &canvas, &mask, &err);
    check_true(t, rc != 0, "negative extension refused");
    image_free(&src);
}

// ----------------------------------------------------------------------------
// (7) bad input

static void expect_fail(TestCtx *t, const char *path, const char *want) {
    Image im;
    SdcError err = {0};
    int rc = image_read(&im, path, 3, &err);
    int named = rc && strstr(err.msg, path) != NULL;
    int ok = rc && (!want || strstr(err.msg, want) != NULL);
    check_true(t, ok && named && im.data == NULL, "%-36s rejected (want \"%s\"): %s", path + strlen(DIR) * (strncmp(path, DIR, strlen(DIR)) == 0),
               want ? want : "", rc ? err.msg : "ACCEPTED");
    if (!rc) image_free(&im);
}

static void test_bad(TestCtx *t) {
    printf("bad input:\n");
    expect_fail(t, DIR "bad_truncated.png", "truncated");
    expect_fail(t, DIR "bad_truncated.jpg", "truncated");
    expect_fail(t, DIR "bad_text.png", "not a PNG or JPEG");
    expect_fail(t, DIR "bad_empty.png", "empty file");
    expect_fail(t, DIR "no_such_file.png", "cannot open");
    expect_fail(t, DIR "bad_zero.png", "PNG");
    expect_fail(t, DIR "bad_huge.png", "exceeds sdc's limit");
    expect_fail(t, DIR "bad_huge.jpg", "exceeds sdc's limit");
    expect_fail(t, DIR, NULL); // a folder
    Image im;
    SdcError err = {0};
    int rc = image_read(&im, DIR "rgb.png", 2, &err);
    check_true(t, rc && strstr(err.msg, "want_channels 2"), "want_channels 2 refused: %s", rc ? err.msg : "ACCEPTED");
    rc = image_read_mem(&im, (const uint8_t *)"", 0, NULL, 3, 0, &err);
    check_true(t, rc != 0, "empty buffer from memory refused");
    // The pixel limit of image_read_mem: 33x21 = 693 pixels.
    size_t n = 0;
    char *buf = slurp(DIR "rgb.png", &n);
    rc = buf ? image_read_mem(&im, (uint8_t *)buf, n, "rgb.png", 3, 600, &err) : -1;
    check_true(t, rc == SDC_ERR_UNSUPPORTED && strstr(err.msg, "600 pixels"), "max_pixels 600 refuses 33x21: %s",
               rc ? err.msg : "ACCEPTED");
    // Every proper prefix of a PNG and a JPEG (and a few damaged bytes): an
    // error, never a crash. A JPEG missing only its EOI marker still decodes.
    static const char *whole[] = {DIR "rgb.png", DIR "interlaced.png", DIR "rgb420.jpg", DIR "progressive.jpg",
                                  DIR "cmyk.jpg", DIR "exif_6.jpg"};
    for (int f = 0; f < 6; f++) {
        free(buf);
        buf = slurp(whole[f], &n);
        if (!buf) {
            check_true(t, 0, "cannot read %s", whole[f]);
            continue;
        }
        int jpg = strstr(whole[f], ".jpg") != NULL, refused = 0, wrong = 0;
        size_t must_fail = jpg ? n - 2 : n;
        for (size_t k = 0; k < must_fail; k++) {
            rc = image_read_mem(&im, (uint8_t *)buf, k, whole[f], 3, 0, &err);
            if (rc) refused++, wrong += strstr(err.msg, whole[f]) == NULL;
            else image_free(&im);
        }
        check_true(t, refused == (int)must_fail && !wrong, "%-36s all %zu prefixes refused, naming the file (%d)",
                   whole[f] + strlen(DIR), must_fail, refused);
        // Flip each byte in turn: must not crash (decoding may succeed).
        int dec = 0;
        for (size_t k = 0; k < n; k++) {
            buf[k] ^= 0x55;
            if (!image_read_mem(&im, (uint8_t *)buf, n, whole[f], 3, 0, &err)) dec++, image_free(&im);
            buf[k] ^= 0x55;
        }
        check_true(t, 1, "%-36s %zu one-byte corruptions survived (%d still decode)", whole[f] + strlen(DIR), n, dec);
    }
    free(buf);
}

// ----------------------------------------------------------------------------
// (8) write -> read

static void test_roundtrip(TestCtx *t) {
    printf("image_write_png -> image_read:\n");
    Image src, back;
    SdcError err = {0};
    if (image_read(&src, DIR "src97x61.png", 3, &err)) {
        check_true(t, 0, "%s", err.msg);
        return;
    }
    char path[] = "/tmp/sdc_test_image_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    int rc = image_write_png(path, src.data, src.width, src.height, "a red fox\nSteps: 3", &err);
    if (!rc) rc = image_read(&back, path, 3, &err);
    check_true(t, !rc && back.width == 97 && back.height == 61 && !memcmp(back.data, src.data, 97 * 61 * 3),
               "97x61 written and read back identically: %s", rc ? err.msg : "ok");
    if (!rc) image_free(&back);
    remove(path);
    image_free(&src);
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    if (st_open(&g_refs, DIR "refs.safetensors", &err)) {
        fprintf(stderr, "%s\n---> run python3 tools/make_image_fixture.py\n", err.msg);
        return 1;
    }
    test_decode(&t);
    test_exif(&t);
    test_resize(&t);
    test_dreambooth(&t);
    test_tensors(&t);
    test_outpaint(&t);
    test_bad(&t);
    test_roundtrip(&t);
    st_close(&g_refs);
    return test_summary(&t);
}
