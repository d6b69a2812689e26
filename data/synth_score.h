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
} SynthScore;

// Adds the items of one generation output (.h5) to *s; with items != NULL,
// one tab-separated line per scored item (file, index, held out, the shape,
// colour and background found, the shape's IoU, the prompt).
int synth_score_file(const char *path, SynthScore *s, FILE *items, SdcError *err);

#endif
