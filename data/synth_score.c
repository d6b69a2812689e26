// synth_score.c: `sdc dataset score`: reads the images of a generation
// output (sdc generate --output-h5) whose prompts are synth captions, and
// counts how often the scorer (synth.h) finds what each prompt asked for:
// the measure of what a model trained on `sdc dataset synth` learnt
// (issue 16). Items not yet done, and prompts that name no shape, colour or
// background, are counted apart, never scored.
#include "data/synth_score.h"

#include <stdlib.h>
#include <string.h>

// Dataset name, n u8 values (its extent must be exactly (n): a damaged file's
// longer one must not overflow out).
static int read_u8s(hid_t f, const char *name, int64_t n, uint8_t *out, const char *path, SdcError *err) {
    hid_t d = -1, sp = -1;
    hsize_t dims[1] = {0};
    H5_TRY(d = H5Dopen2(f, name, H5P_DEFAULT), "%s: no dataset %s ---> is this an sdc generation output?", path,
           name);
    H5_TRY(sp = H5Dget_space(d), "%s: %s", path, name);
    if (H5Sget_simple_extent_ndims(sp) != 1 || H5Sget_simple_extent_dims(sp, dims, NULL) != 1 ||
        dims[0] != (hsize_t)n) {
        sdc_err(err, SDC_ERR_FORMAT, "%s: dataset %s is not (%lld) (one value per item) ---> the file is damaged", path,
                name, (long long)n);
        goto fail;
    }
    H5Sclose(sp), sp = -1;
    if (h5_check_stored(d, 0, -1, name, path, err)) goto fail;
    H5_TRY(H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, out), "%s: reading %s (%lld items)", path,
           name, (long long)n);
    H5Dclose(d);
    return 0;
fail:
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    return err->code ? err->code : SDC_ERR_IO;
}

int synth_score_file(const char *path, SynthScore *s, FILE *items, SdcError *err) {
    h5_quiet();
    const H5Par par = h5_par_serial();
    hid_t f = -1, d = -1, sp = -1, ms = -1;
    char **prompt = NULL;
    int64_t n = 0;
    uint8_t *done = NULL, *rgb = NULL;
    SDC_TRY(h5_open_kind(path, "generation", 0, &par, &f, err));
    int rc = h5_read_strings(f, "prompt", -1, &prompt, &n, path, err);
    if (rc) goto out;
    hsize_t dims[4];
    H5_TRY(d = H5Dopen2(f, "images", H5P_DEFAULT), "%s: no dataset images", path);
    H5_TRY(sp = H5Dget_space(d), "%s: images", path);
    if (H5Sget_simple_extent_ndims(sp) != 4 || H5Sget_simple_extent_dims(sp, dims, NULL) != 4 ||
        dims[0] != (hsize_t)n || dims[3] != 3 || dims[1] < 8 || dims[2] < 8 || dims[1] > 16384 || dims[2] > 16384) {
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: images are not (%lld, H, W, 3) ---> is this an sdc generation output?",
                     path, (long long)n);
        goto out;
    }
    const int H = (int)dims[1], W = (int)dims[2];
    done = malloc(n ? (size_t)n : 1);
    rgb = malloc((size_t)H * W * 3);
    if (!done || !rgb) {
        rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
        goto out;
    }
    if ((rc = read_u8s(f, "done", n, done, path, err))) goto out;
    hsize_t one[4] = {1, (hsize_t)H, (hsize_t)W, 3};
    H5_TRY(ms = H5Screate_simple(4, one, NULL), "%s: images", path);
    for (int64_t i = 0; i < n; i++) {
        s->items++;
        if (!done[i]) {
            s->not_done++;
            continue;
        }
        SynthLabel want;
        if (synth_parse_caption(prompt[i], &want)) {
            s->unparsed++;
            continue;
        }
        hsize_t start[4] = {(hsize_t)i, 0, 0, 0};
        if ((rc = h5_check_stored(d, i, 1, "images", path, err))) goto out;
        H5_TRY(H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, one, NULL), "%s: images", path);
        H5_TRY(H5Dread(d, H5T_NATIVE_UINT8, ms, sp, H5P_DEFAULT, rgb), "%s: reading image %lld", path, (long long)i);
        SynthGuess g;
        if (synth_score(rgb, W, H, &g)) {
            rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory scoring image %lld", path, (long long)i);
            goto out;
        }
        if (want.shape == SYNTH_SUBJECT) {
            s->subject_items++, s->subject_found += g.subject, s->subject_bg += g.bg == want.bg;
        } else if (want.shape == SYNTH_CLASS) {
            s->class_items++, s->class_as_subject += g.subject, s->class_bg += g.bg == want.bg;
            s->class_shape += g.shape >= 0 && !g.subject;
        }
        if (want.shape >= SYNTH_SUBJECT) {
            if (items)
                fprintf(items, "%s\t%lld\t-\t%s\t%s\t%s\t%.3f\t%s\n", path, (long long)i,
                        g.subject ? "sks" : g.shape >= 0 ? synth_shape_names[g.shape] : "-",
                        g.colour >= 0 ? synth_colour_names[g.colour] : "-", synth_colour_names[g.bg],
                        g.subject ? g.subject_iou : g.shape_iou, prompt[i]);
            continue;
        }
        const int hit[SYNTH_SCORE_N] = {g.shape == want.shape,       g.colour == want.colour,
                                        g.bg == want.bg,             g.size == want.size,
                                        g.position == want.position, g.textured == (want.texture != 0)};
        const int held = synth_is_heldout(want.shape, want.colour, want.bg);
        s->scored++;
        s->heldout += held;
        for (int k = 0; k < SYNTH_SCORE_N; k++) s->hit[k] += hit[k], s->heldout_hit[k] += held && hit[k];
        if (items)
            fprintf(items, "%s\t%lld\t%d\t%s\t%s\t%s\t%.3f\t%s\n", path, (long long)i, held,
                    g.shape >= 0 ? synth_shape_names[g.shape] : "-", g.colour >= 0 ? synth_colour_names[g.colour] : "-",
                    synth_colour_names[g.bg], g.shape_iou, prompt[i]);
    }
    goto out;
fail:
    rc = err->code ? err->code : SDC_ERR_IO;
out:
    if (ms >= 0) H5Sclose(ms);
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    if (f >= 0) H5Fclose(f);
    h5_free_strings(prompt, n);
    free(done);
    free(rgb);
    return rc;
}

const char *const synth_score_names[SYNTH_SCORE_N] = {"shape", "colour", "background", "size", "position", "texture"};
