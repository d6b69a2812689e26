// synth_score.h: scoring a generation output against its synth prompts
// (`sdc dataset score`, data/synth.h).
#ifndef SDC_SYNTH_SCORE_H
#define SDC_SYNTH_SCORE_H

#include <stdint.h>
#include <stdio.h>

#include "core/error.h"
#include "data/h5util.h"
#include "data/synth.h"

// shape, colour, background, size, position, texture (plain or not)
#define SYNTH_SCORE_N 6
extern const char *const synth_score_names[SYNTH_SCORE_N];

typedef struct SynthScore {
    int64_t items, not_done, unparsed, scored, heldout; // heldout: scored items whose triple is held out
    int64_t hit[SYNTH_SCORE_N], heldout_hit[SYNTH_SCORE_N];
    // DreamBooth (synth.h's subject): prompts with the identifier ("a sks
    // shape ..."): the subject found (subject fidelity), the background as
    // prompted (prompt fidelity); class prompts ("a shape ..."): drawn as the
    // subject (language drift), one of the six shapes found, the background
    // as prompted. Not in `scored`.
    int64_t subject_items, subject_found, subject_bg;
    int64_t class_items, class_as_subject, class_shape, class_bg;
} SynthScore;

// Adds the items of one generation output (.h5) to *s; with items != NULL,
// one tab-separated line per scored item (file, index, held out, the shape,
// colour and background found, the shape's IoU, the prompt).
int synth_score_file(const char *path, SynthScore *s, FILE *items, SdcError *err);

#endif
