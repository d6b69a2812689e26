// dataset.c: `sdc dataset import` and the dataset reader (see dataset.h; the
// file layout is in data/README.md).
//
// Import order is the sorted candidate list, independent of the rank count:
// candidates are taken in rounds of R * BATCH; in a round rank r decodes the
// candidates i with i % R == r, the ranks agree which of them succeeded, and
// each rank writes its successes at their positions among all successes so
// far, collectively (deflate needs collective writes in HDF5 1.10). A rank
// with nothing to write still takes part (H5Sselect_none). Strings (captions,
// sources) are written by rank 0 after the parallel phase: HDF5 1.10 cannot
// write variable-length strings in parallel.
#include "data/dataset.h"
#include "data/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/backend.h"
#include "io/image.h"
#include "io/weights.h"
#include "models/vae.h"

#define IMPORT_BATCH 4 // candidates per rank per round
#define DEFLATE_LEVEL 3

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ----------------------------------------------------------------------------
// candidates and captions

typedef struct Cands {
    char **path;
    int64_t n, cap;
} Cands;

static int cands_add(Cands *c, const char *p, SdcError *err) {
    if (c->n == c->cap) {
        int64_t cap = c->cap ? c->cap * 2 : 64;
        char **np = realloc(c->path, (size_t)cap * sizeof(char *));
        if (!np) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory listing the images", p);
        c->path = np;
        c->cap = cap;
    }
    if (!(c->path[c->n] = strdup(p))) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory listing the images", p);
    c->n++;
    return 0;
}

static void cands_free(Cands *c) {
    h5_free_strings(c->path, c->n);
    memset(c, 0, sizeof *c);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Folders give their JPEG/PNG files (sorted, not recursive, hidden files
// skipped); files are taken as given, whatever their extension.
static int list_sources(const DatasetImportOpts *o, Cands *c, SdcError *err) {
    for (int s = 0; s < o->n_sources; s++) {
        const char *src = o->sources[s];
        struct stat st;
        if (stat(src, &st) != 0)
            return sdc_err(err, SDC_ERR_IO, "%s: no such file or folder ---> pass image folders or JPEG/PNG files",
                           src);
        if (!S_ISDIR(st.st_mode)) {
            SDC_TRY(cands_add(c, src, err));
            continue;
        }
        DIR *d = opendir(src);
        if (!d) return sdc_err(err, SDC_ERR_IO, "%s: cannot list the folder", src);
        int64_t first = c->n;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.' || !fs_is_image_name(e->d_name)) continue;
            char p[PATH_MAX];
            int len = snprintf(p, sizeof p, "%s%s%s", src, src[strlen(src) - 1] == '/' ? "" : "/", e->d_name);
            if (len >= (int)sizeof p) {
                closedir(d);
                return sdc_err(err, SDC_ERR_ARG, "%s/%s: path too long", src, e->d_name);
            }
            if (cands_add(c, p, err)) {
                closedir(d);
                return err->code;
            }
        }
        closedir(d);
        qsort(c->path + first, (size_t)(c->n - first), sizeof(char *), cmp_str);
        if (c->n == first && !o->quiet) fprintf(stderr, "sdc: warning: %s has no .jpg/.jpeg/.png files\n", src);
    }
    if (!c->n) return sdc_err(err, SDC_ERR_ARG, "no images found in the sources ---> pass folders of JPEG/PNG files");
    return 0;
}

// `sdc dataset synth`: item i's source names the split, seed and item, from
// which synth.c draws it again (what a reader needs to reproduce it).
static int list_synth(const DatasetImportOpts *o, Cands *c, SdcError *err) {
    if (o->n_sources)
        return sdc_err(err, SDC_ERR_ARG, "sdc dataset synth takes no sources (%s) ---> to import photos, use "
                       "sdc dataset import", o->sources[0]);
    if (o->synth_count > ((int64_t)1 << 31))
        return sdc_err(err, SDC_ERR_ARG, "--count %lld: at most 2^31 items", (long long)o->synth_count);
    for (int64_t i = 0; i < o->synth_count; i++) {
        char name[96];
        snprintf(name, sizeof name, "synth:%s:%llu:%lld", synth_split_name(o->synth_split),
                 (unsigned long long)o->seed, (long long)i);
        SDC_TRY(cands_add(c, name, err));
    }
    return 0;
}

// kohya convention: dir/name.jpg -> dir/name.txt, UTF-8, surrounding
// whitespace dropped. The caption file must be valid UTF-8.
// fallback: the caption of an image without one (NULL: FILE.txt required).
static int read_caption(const char *img, const char *fallback, char **out, SdcError *err) {
    char p[PATH_MAX];
    const char *dot = strrchr(img, '.'), *slash = strrchr(img, '/');
    size_t stem = dot && (!slash || dot > slash) ? (size_t)(dot - img) : strlen(img);
    if (stem + 5 > sizeof p) return sdc_err(err, SDC_ERR_ARG, "%s: path too long", img);
    memcpy(p, img, stem);
    memcpy(p + stem, ".txt", 5);
    FILE *f = fopen(p, "rb");
    if (!f && errno == ENOENT && fallback)
        return (*out = strdup(fallback)) ? 0 : sdc_err(err, SDC_ERR_OOM, "%s: out of memory for its caption", img);
    if (!f)
        return sdc_err(err, SDC_ERR_IO, "%s: no caption file %s (captions come from FILE.txt beside each image)\n"
                       "---> write it, or give one caption for all images with --prompt \"a photo of sks dog\"",
                       img, p);
    char *buf = malloc(65537);
    if (!buf) {
        fclose(f);
        return sdc_err(err, SDC_ERR_OOM, "%s: out of memory reading the caption", p);
    }
    size_t n = fread(buf, 1, 65537, f);
    fclose(f);
    if (n > 65536) {
        free(buf);
        return sdc_err(err, SDC_ERR_FORMAT, "%s: caption longer than 64 KiB ---> is this really a caption file?", p);
    }
    size_t bad = 0;
    size_t skip = n >= 3 && !memcmp(buf, "\xEF\xBB\xBF", 3) ? 3 : 0; // UTF-8 byte order mark
    if (!h5_utf8_valid(buf + skip, n - skip, &bad) || memchr(buf, 0, n)) {
        unsigned b0 = (unsigned char)buf[skip + bad];
        free(buf);
        return sdc_err(err, SDC_ERR_FORMAT, "%s: caption is not valid UTF-8 (bad byte 0x%02x at offset %zu)\n"
                       "---> re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)", p, b0, skip + bad);
    }
    size_t a = skip, b = n;
    while (a < b && (buf[a] == ' ' || buf[a] == '\t' || buf[a] == '\r' || buf[a] == '\n')) a++;
    while (b > a && (buf[b - 1] == ' ' || buf[b - 1] == '\t' || buf[b - 1] == '\r' || buf[b - 1] == '\n')) b--;
    memmove(buf, buf + a, b - a);
    buf[b - a] = 0;
    *out = buf;
    return 0;
}

// The output must not land inside a source folder: importing never modifies
// the sources.
static int check_output_outside(const DatasetImportOpts *o, SdcError *err) {
    char out_dir[PATH_MAX], tmp[PATH_MAX], real_out[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", o->output);
    char *slash = strrchr(tmp, '/');
    if (slash) *slash = 0;
    else snprintf(tmp, sizeof tmp, ".");
    if (!realpath(tmp[0] ? tmp : "/", real_out))
        return sdc_err(err, SDC_ERR_IO, "%s: the output's folder %s does not exist", o->output, tmp);
    snprintf(out_dir, sizeof out_dir, "%s", real_out);
    for (int s = 0; s < o->n_sources; s++) {
        struct stat st;
        char rs[PATH_MAX];
        if (stat(o->sources[s], &st) || !realpath(o->sources[s], rs)) continue;
        if (!S_ISDIR(st.st_mode)) {
            if (!strcmp(rs, real_out)) continue;
            char *sl = strrchr(rs, '/');
            if (sl) *sl = 0;
        }
        if (S_ISDIR(st.st_mode) && !strcmp(rs, out_dir))
            return sdc_err(err, SDC_ERR_ARG, "%s: the output would be written inside the source folder %s\n---> "
                           "sdc never modifies a source folder; write the dataset elsewhere", o->output,
                           o->sources[s]);
    }
    return 0;
}

// splitmix64: the random crop offset of candidate i depends on (seed, i)
// only, so it is the same on any number of ranks.
static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// ----------------------------------------------------------------------------
// per-item work: decode, resize + crop, encode

typedef struct Worker {
    const DatasetImportOpts *o;
    Backend *be;
    ModelFiles *mf;
    Vae *vae;
    float scaling;
    int lat_c, lat_h, lat_w;
    float *pix;  // (3, res, res)
    float *logv; // (lat_c, lat_h, lat_w)
} Worker;

static int encode_latent(Worker *w, const Image *out, void *latent, const char *path, SdcError *err);

// 0 = item written; 1 = skipped (reported); < 0 never. Other codes are errors.
// geom (4) int32: the image's original height, width and the crop's top, left
// in the resized image (SDXL's micro-conditioning; diffusers' original_size,
// crop_top_left).
static int process_one(Worker *w, const char *path, int64_t idx, uint8_t *rgb, void *latent, int32_t *geom,
                       int *upscaled, SdcError *err) {
    const DatasetImportOpts *o = w->o;
    const int res = o->resolution;
    Image im = {0}, out = {0};
    int rc = 0;
    if (o->synth_count > 0) {
        SynthLabel l;
        synth_label(o->seed, idx, o->synth_split, &l);
        synth_render(o->seed, idx, &l, res, rgb);
        geom[0] = geom[1] = res, geom[2] = geom[3] = 0; // drawn at the resolution, not cropped
        Image view = {res, res, 3, rgb};
        return encode_latent(w, &view, latent, path, err);
    }
    SdcError e2 = {0};
    const int rrc = image_read(&im, path, 3, &e2);
    if (rrc == SDC_ERR_OOM) // not the image's fault: skipping it would make a smaller dataset silently
        return sdc_err(err, rrc, "%s", e2.msg);
    if (rrc) {
        fprintf(stderr, "sdc: skipped %s: %s\n", path, e2.msg);
        return 1;
    }
    int short_side = im.width < im.height ? im.width : im.height;
    if (short_side < res) {
        if (o->no_upscale) {
            fprintf(stderr, "sdc: skipped %s: %dx%d is smaller than --resolution %d (--no-upscale)\n", path,
                    im.width, im.height, res);
            image_free(&im);
            return 1;
        }
        fprintf(stderr, "sdc: warning: %s: %dx%d is smaller than --resolution %d; upscaled\n", path, im.width,
                im.height, res);
        *upscaled = 1;
    }
    int rw, rh, x = -1, y = -1;
    image_short_side_size(im.width, im.height, res, &rw, &rh);
    if (!o->center_crop) {
        uint64_t r = mix64(o->seed ^ mix64((uint64_t)idx));
        x = (int)(r % (uint64_t)(rw - res + 1));
        y = (int)(mix64(r) % (uint64_t)(rh - res + 1));
    }
    geom[0] = im.height, geom[1] = im.width;
    geom[2] = y >= 0 ? y : image_center_offset(rh, res), geom[3] = x >= 0 ? x : image_center_offset(rw, res);
    rc = image_resize_crop(&im, &out, res, IMAGE_BILINEAR, x, y, err);
    image_free(&im);
    if (rc) return sdc_err_wrap(err, "%s", path);
    if (o->random_flip && (mix64(o->seed ^ mix64((uint64_t)idx ^ 0xF11Bull)) & 1)) {
        // EXIF's orientation 2 is the left-right mirror; the crop's left edge (SDXL's crop_top_left) mirrors too
        if ((rc = image_orient(&out, 2, err))) {
            image_free(&out);
            return sdc_err_wrap(err, "%s", path);
        }
        geom[3] = rw - res - geom[3];
    }
    memcpy(rgb, out.data, (size_t)res * res * 3);
    rc = encode_latent(w, &out, latent, path, err);
    image_free(&out);
    return rc;
}

// The VAE latent of one item (mean x scaling_factor) when the import caches
// latents; 0 without a VAE.
static int encode_latent(Worker *w, const Image *out, void *latent, const char *path, SdcError *err) {
    const DatasetImportOpts *o = w->o;
    const int res = o->resolution;
    int rc = 0;
    if (w->vae) {
        int64_t ish[4] = {1, 3, res, res}, lsh[4] = {1, w->lat_c, w->lat_h, w->lat_w};
        size_t nl = (size_t)w->lat_c * w->lat_h * w->lat_w;
        float *mean = o->latents_dtype == DT_F32 ? latent : malloc(nl * sizeof(float));
        if (!mean) return sdc_err(err, SDC_ERR_OOM, "encoding %s: out of memory for its latents", path);
        rc = image_to_tensor(out, w->pix, err);
        Tensor ti = tensor_f32(w->pix, 4, ish), tm = tensor_f32(mean, 4, lsh), tl = tensor_f32(w->logv, 4, lsh);
        if (!rc) rc = vae_encode(w->vae, &ti, &tm, &tl, err);
        // the latent distribution's mean times scaling_factor: what the UNet trains on
        for (size_t k = 0; !rc && k < nl; k++) mean[k] *= w->scaling;
        if (!rc && o->latents_dtype == DT_F16) convert_from_f32(latent, DT_F16, mean, nl);
        if (mean != latent) free(mean);
        if (rc) sdc_err_wrap(err, "encoding %s", path);
    }
    return rc;
}

static void worker_free(Worker *w) {
    vae_free(w->vae);
    model_files_close(w->mf);
    if (w->be) backend_destroy(w->be);
    free(w->pix);
    free(w->logv);
}

static int worker_init(Worker *w, const DatasetImportOpts *o, SdcError *err) {
    memset(w, 0, sizeof *w);
    w->o = o;
    if (!o->cache_latents_model) return 0;
    if (o->resolution % 8)
        return sdc_err(err, SDC_ERR_ARG, "--resolution %d: must be a multiple of 8 with --cache-latents",
                       o->resolution);
    SDC_TRY(backend_cpu_create(&w->be, o->threads, err));
    SDC_TRY(model_files_open(&w->mf, o->cache_latents_model, NULL, -1, err));
    SDC_TRY(vae_load(&w->vae, w->mf, w->be, err));
    const VaeConfig *vc = vae_config(w->vae);
    int down = 1 << (vc->n_levels - 1);
    if (o->resolution % down)
        return sdc_err(err, SDC_ERR_ARG, "--resolution %d: the VAE of %s needs a multiple of %d", o->resolution,
                       o->cache_latents_model, down);
    w->scaling = vc->scaling_factor;
    w->lat_c = vc->latent_channels;
    w->lat_h = w->lat_w = o->resolution / down;
    SDC_TRY(vae_reserve(w->vae, 1, o->resolution, o->resolution, err));
    w->pix = malloc((size_t)3 * o->resolution * o->resolution * sizeof(float));
    w->logv = malloc((size_t)w->lat_c * w->lat_h * w->lat_w * sizeof(float));
    if (!w->pix || !w->logv) return sdc_err(err, SDC_ERR_OOM, "VAE buffers");
    return 0;
}

// ----------------------------------------------------------------------------
// the file

// A chunked (1, ...) per item dataset of n items, growable; deflate when asked.
static hid_t create_items(hid_t f, const char *name, hid_t type, int rank, const hsize_t *item, int64_t n,
                          int deflate, const char *path, SdcError *err) {
    hsize_t dims[5], maxd[5], chunk[5];
    dims[0] = (hsize_t)n, maxd[0] = H5S_UNLIMITED, chunk[0] = 1;
    for (int k = 0; k < rank; k++) dims[k + 1] = maxd[k + 1] = chunk[k + 1] = item[k];
    hid_t sp = -1, dcpl = -1, d = -1;
    H5_TRY(sp = H5Screate_simple(rank + 1, dims, maxd), "%s: dataset %s", path, name);
    H5_TRY(dcpl = H5Pcreate(H5P_DATASET_CREATE), "%s: dataset %s", path, name);
    H5_TRY(H5Pset_chunk(dcpl, rank + 1, chunk), "%s: dataset %s chunks", path, name);
    if (deflate) H5_TRY(H5Pset_deflate(dcpl, DEFLATE_LEVEL), "%s: dataset %s deflate", path, name);
    H5_TRY(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER), "%s: dataset %s", path, name);
    H5_TRY(d = H5Dcreate2(f, name, type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT), "%s: creating dataset %s", path, name);
fail:
    if (dcpl >= 0) H5Pclose(dcpl);
    if (sp >= 0) H5Sclose(sp);
    return d;
}

static int set_rows(hid_t d, int64_t n, const char *path, const char *name, SdcError *err) {
    hid_t fs = -1;
    hsize_t dims[5];
    H5_TRY(fs = H5Dget_space(d), "%s: dataset %s", path, name);
    H5Sget_simple_extent_dims(fs, dims, NULL);
    H5Sclose(fs);
    dims[0] = (hsize_t)n;
    H5_TRY(H5Dset_extent(d, dims), "%s: resizing dataset %s to %lld items", path, name, (long long)n);
    return 0;
fail:
    return err->code;
}

static void progress(const DatasetImportOpts *o, const H5Par *p, int64_t done, int64_t total, double t0) {
    if (o->quiet || p->rank != 0) return;
    double el = mono_s() - t0, rate = done / (el > 1e-9 ? el : 1e-9);
    if (isatty(2)) {
        char bar[31];
        int fill = (int)(done * 30 / (total ? total : 1));
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '-';
        bar[30] = 0;
        fprintf(stderr, "\r  import |%s| %lld/%lld  %.1f img/s ", bar, (long long)done, (long long)total, rate);
        if (done == total) fputc('\n', stderr);
    }
}

// `sdc dataset synth`: /labels (n, 6) i32, the attributes of each item as
// indices into the names stored beside them (data/README.md).
static int write_synth_labels(hid_t f, const DatasetImportOpts *o, int64_t n, const char *tmp, SdcError *err) {
    static const char *const COLS[6] = {"shape", "colour", "size", "position", "background", "texture"};
    const char *const *names[6] = {synth_shape_names,    synth_colour_names, synth_size_names,
                                   synth_position_names, synth_colour_names, synth_texture_names};
    const int counts[6] = {SYNTH_N_SHAPES,    SYNTH_N_COLOURS, SYNTH_N_SIZES,
                           SYNTH_N_POSITIONS, SYNTH_N_COLOURS, SYNTH_N_TEXTURES};
    int32_t *v = malloc((size_t)n * 6 * sizeof *v); // (n, 6)
    if (!v) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory for the labels", tmp);
    for (int64_t i = 0; i < n; i++) {
        SynthLabel l;
        synth_label(o->seed, i, o->synth_split, &l);
        const int32_t row[6] = {l.shape, l.colour, l.size, l.position, l.bg, l.texture};
        memcpy(v + i * 6, row, sizeof row);
    }
    hid_t sp = -1, d = -1;
    hsize_t dims[2] = {(hsize_t)n, 6};
    int rc = 0;
    H5_TRY(sp = H5Screate_simple(2, dims, NULL), "%s: labels", tmp);
    H5_TRY(d = H5Dcreate2(f, "labels", H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "%s: labels", tmp);
    H5_TRY(H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, v), "%s: writing labels", tmp);
    for (int k = 0; k < 6 && !rc; k++) {
        char joined[256] = "";
        for (int j = 0; j < counts[k]; j++) {
            strcat(joined, j ? "," : "");
            strcat(joined, names[k][j]);
        }
        rc = h5_attr_str(d, COLS[k], joined, tmp, err);
    }
    if (!rc) rc = h5_attr_str(d, "columns", "shape,colour,size,position,background,texture", tmp, err);
    if (!rc) rc = h5_attr_str(f, "synth_split", synth_split_name(o->synth_split), tmp, err);
    if (!rc) rc = h5_attr_i64(f, "synth_seed", (int64_t)o->seed, tmp, err);
    goto out;
fail:
    rc = err->code ? err->code : SDC_ERR_IO;
out:
    if (d >= 0) H5Dclose(d);
    if (sp >= 0) H5Sclose(sp);
    free(v);
    return rc;
}

// Rank 0, serially, after the parallel phase: strings and attributes, then
// fsync + rename. ok[i]: candidate i is in the file.
static int finish_file(const DatasetImportOpts *o, const char *tmp, const Cands *c, const uint8_t *ok, int64_t n,
                       const Worker *w, SdcError *err) {
    hid_t f = -1;
    char **caps = calloc((size_t)n + 1, sizeof(char *));
    const char **srcs = calloc((size_t)n + 1, sizeof(char *));
    int64_t j = 0;
    int rc = caps && srcs ? 0 : sdc_err(err, SDC_ERR_OOM, "%s: out of memory for %lld captions", tmp, (long long)n);
    for (int64_t i = 0; i < c->n && !rc; i++) {
        if (!ok[i]) continue;
        srcs[j] = c->path[i];
        if (o->synth_count > 0) {
            SynthLabel l;
            char cap[SYNTH_CAPTION_MAX];
            synth_label(o->seed, i, o->synth_split, &l);
            synth_caption(&l, cap, sizeof cap);
            if (!(caps[j] = strdup(cap))) rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory for the captions", tmp);
        } else if (o->prompt) {
            if (!(caps[j] = strdup(o->prompt))) rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory for the captions", tmp);
        } else rc = read_caption(c->path[i], o->caption_fallback, &caps[j], err);
        j++;
    }
    if (rc) goto fail;
    H5_TRY(f = H5Fopen(tmp, H5F_ACC_RDWR, H5P_DEFAULT), "%s: reopening", tmp);
    if ((rc = h5_write_strings(f, "captions", (const char *const *)caps, n, tmp, err)) ||
        (rc = h5_write_strings(f, "sources", srcs, n, tmp, err)) ||
        (rc = h5_attr_i64(f, "resolution", o->resolution, tmp, err)) ||
        (rc = h5_attr_i64(f, "center_crop", o->center_crop, tmp, err)) ||
        (rc = h5_attr_i64(f, "random_flip", o->random_flip, tmp, err)) ||
        (rc = h5_attr_i64(f, "crop_seed", (int64_t)o->seed, tmp, err)) ||
        (rc = h5_attr_str(f, "resize_filter", o->synth_count > 0 ? "none" : "bilinear", tmp, err)) ||
        (rc = h5_attr_i64(f, "count", n, tmp, err)))
        goto fail;
    if (w->vae) {
        hid_t d = -1;
        H5_TRY(d = H5Dopen2(f, "latents", H5P_DEFAULT), "%s: latents", tmp);
        rc = h5_attr_f64(d, "scaling_factor", w->scaling, tmp, err);
        if (!rc) rc = h5_attr_i64(d, "scaling_factor_applied", 1, tmp, err);
        if (!rc) rc = h5_attr_str(d, "distribution", "mean", tmp, err);
        if (!rc) rc = h5_attr_str(d, "model", o->cache_latents_model, tmp, err);
        if (!rc) rc = h5_attr_str(d, "dtype", h5_dtype_tag(o->latents_dtype), tmp, err);
        H5Dclose(d);
        if (rc) goto fail;
    }
    if (o->synth_count > 0 && (rc = write_synth_labels(f, o, n, tmp, err))) goto fail;
    if ((rc = h5_attr_str(f, "created_by", o->synth_count > 0 ? "sdc " SDC_VERSION " dataset synth"
                                                              : "sdc " SDC_VERSION " dataset import", tmp, err)) ||
        (rc = h5_set_kind(f, tmp, "dataset", err)))
        goto fail;
    H5_TRY(H5Fflush(f, H5F_SCOPE_GLOBAL), "%s: flush", tmp);
    if ((rc = h5_close_file(&f, tmp, err))) goto fail;
    {
        FILE *fp = fopen(tmp, "rb+");
        if (!fp || fsync(fileno(fp))) {
            rc = sdc_err(err, SDC_ERR_IO, "%s: fsync failed (%s) ---> is the disk full?", tmp, strerror(errno));
            if (fp) fclose(fp);
            goto fail;
        }
        fclose(fp);
    }
    if (rename(tmp, o->output)) {
        rc = sdc_err(err, SDC_ERR_IO, "%s: cannot rename to %s (%s)", tmp, o->output, strerror(errno));
        goto fail;
    }
    h5_free_strings(caps, n);
    free(srcs);
    return 0;
fail:
    if (f >= 0) H5Fclose(f);
    h5_free_strings(caps, n);
    free(srcs);
    return err->code ? err->code : SDC_ERR_IO;
}

int dataset_import(const DatasetImportOpts *o, const H5Par *p, DatasetImportStats *st, SdcError *err) {
    h5_quiet();
    memset(st, 0, sizeof *st);
    const double t0 = mono_s();
    const int res = o->resolution;
    if (res < 8 || res > 8192) return sdc_err(err, SDC_ERR_ARG, "--resolution %d: expected 8..8192", res);
    if (o->latents_dtype != DT_F32 && o->latents_dtype != DT_F16)
        return sdc_err(err, SDC_ERR_ARG, "latents dtype: expected f32 or f16");
    Cands c = {0};
    Worker w;
    memset(&w, 0, sizeof w);
    uint8_t *ok = NULL, *rgb = NULL, *lat = NULL;
    int32_t geom[IMPORT_BATCH][4];
    hid_t f = -1, dimg = -1, dlat = -1, dgeom = -1, fapl = -1, ltype = -1;
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp", o->output);
    // every rank lists the same sources and checks every caption first, so
    // all fail together and before anything is written
    int rc = check_output_outside(o, err);
    if (!rc) rc = o->synth_count > 0 ? list_synth(o, &c, err) : list_sources(o, &c, err);
    for (int64_t i = 0; !rc && !o->prompt && !o->synth_count && i < c.n; i++) {
        char *cap = NULL;
        if (!fs_is_image_name(c.path[i]) && access(c.path[i], R_OK)) continue;
        rc = read_caption(c.path[i], o->caption_fallback, &cap, err);
        free(cap);
    }
    if (!rc) rc = worker_init(&w, o, err);
    if ((rc = h5_par_agree(p, rc, err))) goto out;
    st->candidates = c.n;
    const size_t img_bytes = (size_t)res * res * 3;
    const size_t lat_bytes = w.vae ? (size_t)w.lat_c * w.lat_h * w.lat_w * dtype_size(o->latents_dtype) : 0;
    ok = calloc((size_t)c.n, 1);
    rgb = malloc(IMPORT_BATCH * img_bytes);
    lat = lat_bytes ? malloc(IMPORT_BATCH * lat_bytes) : NULL;
    if (!ok || !rgb || (lat_bytes && !lat)) {
        rc = sdc_err(err, SDC_ERR_OOM, "import buffers");
        goto out;
    }

    if (p->rank == 0) unlink(tmp);
    h5_par_barrier(p);
    {
        hsize_t item[3] = {(hsize_t)res, (hsize_t)res, 3};
        H5_TRY(fapl = h5_fapl(p), "%s: file access list", tmp);
        H5_TRY(f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl), "%s: cannot create ---> is the folder writable?",
               tmp);
        H5_TRY(dimg = create_items(f, "images", H5T_STD_U8LE, 3, item, c.n, 1, tmp, err), "%s: images", tmp);
        hsize_t gi[1] = {4};
        H5_TRY(dgeom = create_items(f, "size_crop", H5T_STD_I32LE, 1, gi, c.n, 0, tmp, err), "%s: size_crop", tmp);
        if (w.vae) {
            hsize_t li[3] = {(hsize_t)w.lat_c, (hsize_t)w.lat_h, (hsize_t)w.lat_w};
            H5_TRY(ltype = h5_type_for(o->latents_dtype), "%s: latents type", tmp);
            H5_TRY(dlat = create_items(f, "latents", ltype, 3, li, c.n, 0, tmp, err), "%s: latents", tmp);
        }
    }
    int64_t written = 0, upscaled = 0;
    const int64_t round_n = (int64_t)p->size * IMPORT_BATCH;
    for (int64_t base = 0; base < c.n; base += round_n) {
        const int64_t end = base + round_n < c.n ? base + round_n : c.n;
        int k = 0, lrc = 0;
        int64_t mine[IMPORT_BATCH];
        for (int64_t i = base + p->rank; i < end && !lrc; i += p->size) {
            int up = 0;
            lrc = process_one(&w, c.path[i], i, rgb + (size_t)k * img_bytes, lat ? lat + (size_t)k * lat_bytes : NULL,
                              geom[k], &up, err);
            if (lrc == 1) lrc = 0; // skipped
            else if (!lrc) ok[i] = 1, mine[k++] = i, upscaled += up;
        }
        if ((rc = h5_par_agree(p, lrc, err))) goto fail_close;
        h5_par_max_bytes(p, ok + base, (int)(end - base));
        int64_t rows[IMPORT_BATCH], pos = written;
        for (int64_t i = base, j = 0; i < end; i++) {
            if (!ok[i]) continue;
            if (j < k && mine[j] == i) rows[j++] = pos;
            pos++;
        }
        if ((rc = h5_write_rows(dimg, H5T_NATIVE_UINT8, p, rows, k, rgb, tmp, "images", err))) goto fail_close;
        if (dlat >= 0 && (rc = h5_write_rows(dlat, ltype, p, rows, k, lat, tmp, "latents", err))) goto fail_close;
        if ((rc = h5_write_rows(dgeom, H5T_NATIVE_INT32, p, rows, k, geom, tmp, "size_crop", err))) goto fail_close;
        written = pos;
        progress(o, p, end, c.n, t0);
    }
    if ((rc = set_rows(dimg, written, tmp, "images", err))) goto fail_close;
    if (dlat >= 0 && (rc = set_rows(dlat, written, tmp, "latents", err))) goto fail_close;
    if ((rc = set_rows(dgeom, written, tmp, "size_crop", err))) goto fail_close;
    H5Dclose(dimg), dimg = -1;
    H5Dclose(dgeom), dgeom = -1;
    if (dlat >= 0) H5Dclose(dlat), dlat = -1;
    if ((rc = h5_close_file(&f, tmp, err))) goto fail_close;
    h5_close_plist(fapl);
    fapl = -1;
    if (written == 0) rc = sdc_err(err, SDC_ERR_FORMAT, "none of the %lld images could be read ---> see the messages "
                                   "above", (long long)c.n);
    else if (p->rank == 0) rc = finish_file(o, tmp, &c, ok, written, &w, err);
    if (rc && p->rank == 0) unlink(tmp);
    rc = h5_par_agree(p, rc, err);
    st->written = written;
    st->skipped = c.n - written;
    st->upscaled = h5_par_sum(p, upscaled);
    st->seconds = mono_s() - t0;
    goto out;

fail:
    rc = err->code ? err->code : SDC_ERR_IO;
fail_close:
    if (dimg >= 0) H5Dclose(dimg);
    if (dgeom >= 0) H5Dclose(dgeom);
    if (dlat >= 0) H5Dclose(dlat);
    if (f >= 0) H5Fclose(f);
    if (p->rank == 0) unlink(tmp);
out:
    if (ltype >= 0) H5Tclose(ltype);
    h5_close_plist(fapl);
    worker_free(&w);
    free(ok);
    free(rgb);
    free(lat);
    cands_free(&c);
    return rc;
}

// ----------------------------------------------------------------------------
// reader

int dataset_captions_current(const Dataset *d, const char *fallback) {
    for (int64_t i = 0; i < d->n; i++) {
        char *cap = NULL;
        SdcError e = {0};
        if (!d->sources || !d->sources[i] || read_caption(d->sources[i], fallback, &cap, &e)) return 0;
        const int same = d->captions && d->captions[i] && !strcmp(cap, d->captions[i]);
        free(cap);
        if (!same) return 0;
    }
    return 1;
}

void dataset_close(Dataset *d) {
    if (d->images >= 0) H5Dclose(d->images);
    if (d->size_crop >= 0) H5Dclose(d->size_crop);
    if (d->latents >= 0) H5Dclose(d->latents);
    if (d->file >= 0) H5Fclose(d->file);
    h5_free_strings(d->captions, d->n);
    h5_free_strings(d->sources, d->n);
    free(d->checked);
    d->images = d->latents = d->file = d->size_crop = -1;
    d->captions = d->sources = NULL;
    d->checked = NULL;
}

// Opens dataset `name` and checks its type class/size and its shape: dims[0]
// any (returned in *n) when n_known < 0, else n_known; other dims as given.
static int open_checked(hid_t f, const char *path, const char *name, int rank, const int64_t *dims, int64_t n_known,
                        int64_t *n, int *dims_out, hid_t *out, hid_t *type_out, SdcError *err) {
    hid_t d = -1, sp = -1;
    if (!h5_has_link(f, name))
        return sdc_err(err, SDC_ERR_FORMAT, "%s: dataset %s is missing\n---> is the file complete? (layouts: "
                       "data/README.md)", path, name);
    H5_TRY(d = H5Dopen2(f, name, H5P_DEFAULT), "%s: dataset %s", path, name);
    H5_TRY(sp = H5Dget_space(d), "%s: dataset %s", path, name);
    H5_TRY(*type_out = H5Dget_type(d), "%s: dataset %s", path, name);
    hsize_t got[5] = {0};
    int r = H5Sget_simple_extent_ndims(sp);
    if (r == rank) H5Sget_simple_extent_dims(sp, got, NULL);
    int bad = r != rank || (n_known >= 0 && (int64_t)got[0] != n_known);
    for (int k = 1; k < rank && !bad; k++) bad = dims[k] > 0 && (int64_t)got[k] != dims[k];
    if (bad) {
        char want[128] = "";
        for (int k = 0; k < rank; k++) {
            long long v = k == 0 ? n_known : dims[k];
            snprintf(want + strlen(want), sizeof want - strlen(want), v >= 0 && (k == 0 || v > 0) ? "%s%lld" : "%s*",
                     k ? ", " : "", v);
        }
        sdc_err(err, SDC_ERR_SHAPE, "%s: dataset %s has %d dims (%lld, %lld, %lld, %lld), expected (%s)%s\n---> "
                "layouts: data/README.md", path, name, r, (long long)got[0], (long long)got[1], (long long)got[2],
                (long long)got[3], want, n_known >= 0 ? ": one row per image" : "");
        H5Tclose(*type_out);
        goto fail;
    }
    if (n) *n = (int64_t)got[0];
    for (int k = 0; k < rank && dims_out; k++) dims_out[k] = (int)got[k];
    H5Sclose(sp);
    *out = d;
    return 0;
fail:
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    return err->code;
}

int dataset_open(Dataset *d, const char *path, SdcError *err) {
    memset(d, 0, sizeof *d);
    d->file = d->images = d->latents = d->size_crop = -1;
    snprintf(d->path, sizeof d->path, "%s", path);
    H5Par ser = h5_par_serial();
    SDC_TRY(h5_open_kind(path, "dataset", 0, &ser, &d->file, err));
    int64_t res = 0, cnt = 0;
    hid_t t = -1;
    int dims[5];
    int rc = h5_attr_get_i64(d->file, "resolution", &res, path, err);
    if (!rc && (res < 1 || res > 16384)) // image.c's limit for a side
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: attribute resolution is %lld, expected 1 to 16384\n---> the file is "
                     "damaged; import the images again", path, (long long)res);
    if (!rc) {
        int64_t want[4] = {-1, res, res, 3};
        rc = open_checked(d->file, path, "images", 4, want, -1, &d->n, dims, &d->images, &t, err);
    }
    if (!rc) {
        if (H5Tget_class(t) != H5T_INTEGER || H5Tget_size(t) != 1 || H5Tget_sign(t) != H5T_SGN_NONE)
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: dataset images must be u8", path);
        H5Tclose(t);
    }
    int64_t flip = 0;
    if (!rc && H5Aexists(d->file, "random_flip") > 0 && !h5_attr_get_i64(d->file, "random_flip", &flip, path, err))
        d->random_flip = flip != 0;
    if (!rc && !h5_attr_get_i64(d->file, "count", &cnt, path, err) && cnt != d->n)
        rc = sdc_err(err, SDC_ERR_SHAPE, "%s: attribute count is %lld but images has %lld rows ---> the file is "
                     "incomplete", path, (long long)cnt, (long long)d->n);
    else if (!rc && err->code) rc = err->code;
    d->resolution = (int)res;
    int64_t nn = 0;
    if (!rc) rc = h5_read_strings(d->file, "captions", d->n, &d->captions, &nn, path, err);
    if (!rc) rc = h5_read_strings(d->file, "sources", d->n, &d->sources, &nn, path, err);
    if (!rc && !(d->checked = calloc((size_t)d->n + 1, 1)))
        rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory for %lld items", path, (long long)d->n);
    if (!rc && h5_has_link(d->file, "latents") && res % 8)
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: latents of %lld px images: the VAE needs a multiple of 8\n---> the "
                     "file is damaged; import the images again", path, (long long)res);
    if (!rc && h5_has_link(d->file, "latents")) {
        int64_t want[4] = {-1, 4, 0, 0}; // the VAE's (4, R/f, R/f), f = 8 (SD) or 4 (a 3-level VAE)
        rc = open_checked(d->file, path, "latents", 4, want, d->n, NULL, dims, &d->latents, &t, err);
        if (!rc && (dims[2] != dims[3] || (res != (int64_t)dims[2] * 8 && res != (int64_t)dims[2] * 4))) {
            rc = sdc_err(err, SDC_ERR_SHAPE, "%s: latents of (%d, %d, %d) for %lld px images; a VAE makes (4, %lld, "
                         "%lld) (SD's) or (4, %lld, %lld) (3 levels)\n---> the file is damaged; import the images "
                         "again", path, dims[1], dims[2], dims[3], (long long)res, (long long)res / 8,
                         (long long)res / 8, (long long)res / 4, (long long)res / 4);
            H5Tclose(t);
        }
        if (!rc) {
            d->latent_shape[0] = dims[1], d->latent_shape[1] = dims[2], d->latent_shape[2] = dims[3];
            size_t sz = H5Tget_size(t);
            if (H5Tget_class(t) != H5T_FLOAT || (sz != 4 && sz != 2))
                rc = sdc_err(err, SDC_ERR_FORMAT, "%s: dataset latents must be f32 or f16", path);
            d->latents_dtype = sz == 2 ? DT_F16 : DT_F32;
            H5Tclose(t);
        }
        if (!rc) rc = h5_attr_get_f64(d->latents, "scaling_factor", &d->latents_scaling, path, err);
    }
    if (!rc && h5_has_link(d->file, "size_crop")) { // absent in files of sdc before SDXL training
        int64_t want[2] = {-1, 4};
        rc = open_checked(d->file, path, "size_crop", 2, want, d->n, NULL, dims, &d->size_crop, &t, err);
        if (!rc) {
            if (H5Tget_class(t) != H5T_INTEGER || H5Tget_size(t) != 4)
                rc = sdc_err(err, SDC_ERR_FORMAT, "%s: dataset size_crop must be int32", path);
            H5Tclose(t);
        }
    }
    if (rc) dataset_close(d);
    return rc;
}

// Row i of dataset ds (bit `bit` of d->checked) into out as mtype.
static int read_row(const Dataset *d, hid_t ds, uint8_t bit, hid_t mtype, int64_t i, void *out, const char *name,
                    SdcError *err) {
    const char *path = d->path;
    hid_t fs = -1, ms = -1;
    hsize_t dims[5], start[5] = {0}, count[5];
    H5_TRY(fs = H5Dget_space(ds), "%s: %s", path, name);
    int r = H5Sget_simple_extent_ndims(fs);
    H5Sget_simple_extent_dims(fs, dims, NULL);
    if (i < 0 || (hsize_t)i >= dims[0]) {
        H5Sclose(fs);
        return sdc_err(err, SDC_ERR_ARG, "%s: %s item %lld out of range (0..%llu)", path, name, (long long)i,
                       (unsigned long long)dims[0]);
    }
    if (!(d->checked[i] & bit)) {
        if (h5_check_stored(ds, i, 1, name, path, err)) goto fail;
        d->checked[i] |= bit;
    }
    memcpy(count, dims, sizeof dims);
    count[0] = 1;
    start[0] = (hsize_t)i;
    H5_TRY(H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL), "%s: %s", path, name);
    H5_TRY(ms = H5Screate_simple(r, count, NULL), "%s: %s", path, name);
    H5_TRY(H5Dread(ds, mtype, ms, fs, H5P_DEFAULT, out), "%s: reading %s item %lld", path, name, (long long)i);
    H5Sclose(ms);
    H5Sclose(fs);
    return 0;
fail:
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    return err->code;
}

int dataset_read_size_crop(const Dataset *d, int64_t i, int32_t geom[4], SdcError *err) {
    if (d->size_crop < 0)
        return sdc_err(err, SDC_ERR_ARG, "%s: no image sizes and crops (a dataset of an older sdc)\n---> import the "
                       "images again (sdc dataset import) for SDXL's micro-conditioning", d->path);
    return read_row(d, d->size_crop, 4, H5T_NATIVE_INT32, i, geom, "size_crop", err);
}

int dataset_read_image(const Dataset *d, int64_t i, uint8_t *rgb, SdcError *err) {
    return read_row(d, d->images, 1, H5T_NATIVE_UINT8, i, rgb, "images", err);
}

int dataset_read_latent(const Dataset *d, int64_t i, float *out, SdcError *err) {
    if (d->latents < 0)
        return sdc_err(err, SDC_ERR_ARG, "%s: no cached latents ---> import with --cache-latents -m MODEL", d->path);
    return read_row(d, d->latents, 2, H5T_NATIVE_FLOAT, i, out, "latents", err);
}
