// synth.h: the procedural captioned image set of `sdc dataset synth` (issue
// 16): a coloured shape on a coloured, textured background, with its caption
// ("a small red star on a blue striped background, on the left"), drawn
// deterministically from (seed, item); and the scorer that reads the shape,
// its colour and the background colour back from an image (a generated one,
// to measure what a model learnt).
//
// The held-out split is a fixed set of (shape, colour, background colour)
// triples that the train split never draws: every shape, colour and
// background is seen in training, those combinations are not. It does not
// depend on the seed, so a model trained on one seed's train split is
// scored on any seed's held-out split.
//
// Not a benchmark of image quality: the scorer only checks what the caption
// says, with fixed rules (palette distances, shape templates).
#ifndef SDC_SYNTH_H
#define SDC_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#define SYNTH_N_SHAPES 6
#define SYNTH_N_COLOURS 8
#define SYNTH_N_SIZES 2
#define SYNTH_N_POSITIONS 5
#define SYNTH_N_TEXTURES 4
#define SYNTH_CAPTION_MAX 128

// DreamBooth's subject (issue 16 part 5): a shape and a pattern that no
// split above ever draws, a heart in yellow and purple horizontal stripes,
// named by the rare identifier "sks" with the class noun "shape" ("a large
// sks shape on a plain blue background, in the center"). The subject split
// draws it in new contexts (any size, position and texture, on green, blue,
// white or black). A prompt with "sks shape" asks for the subject; one with
// "shape" and no shape name is a class prompt (prior preservation, and the
// language-drift measure: does "a shape ..." still draw the six shapes).
#define SYNTH_SUBJECT 6 // the subject's shape index in SynthLabel / SynthGuess
#define SYNTH_CLASS 7   // a class prompt's shape ("a shape on ...": any of the six)

// The varied split (for a VAE: pictures of more kinds than the UNet's data):
// the train split's items with the shape itself patterned in two colours
// (horizontal, vertical or diagonal stripes of any width, dots or checks) in
// two of every three; never the subject's heart, never yellow with purple.
typedef enum SynthSplit {
    SYNTH_TRAIN = 0, SYNTH_HELDOUT = 1, SYNTH_ALL = 2, SYNTH_SUBJECT_SPLIT = 3, SYNTH_VARIED = 4
} SynthSplit;

extern const char *const synth_shape_names[SYNTH_N_SHAPES];       // circle, square, triangle, star, cross, diamond
extern const char *const synth_colour_names[SYNTH_N_COLOURS];     // red, orange, yellow, green, blue, purple, white, black
extern const char *const synth_size_names[SYNTH_N_SIZES];         // small, large
extern const char *const synth_position_names[SYNTH_N_POSITIONS]; // center, left, right, top, bottom
extern const char *const synth_texture_names[SYNTH_N_TEXTURES];   // plain, striped, dotted, checkered

// One item's attributes (indices into the name tables; shape SYNTH_SUBJECT:
// the subject, its colour yellow (its stripes' first colour)); bg != colour.
typedef struct SynthLabel {
    int shape, colour, size, position, bg, texture;
    // the varied split's pattern on the shape: 0 none, 1 horizontal, 2
    // vertical, 3 diagonal stripes, 4 dots, 5 checks; in colour2 (!= colour)
    // with a period of `period` local units (not in captions or /labels)
    int pattern, colour2;
    double period;
} SynthLabel;

// 1 when the (shape, colour, bg) triple belongs to the held-out split.
int synth_is_heldout(int shape, int colour, int bg);
// "train", "heldout", "all", "subject" or "varied"; 0, or -1 for anything else.
int synth_split_parse(const char *s, SynthSplit *out);
const char *synth_split_name(SynthSplit s);

// Item i of the split: attributes uniform over the split's combinations.
void synth_label(uint64_t seed, int64_t i, SynthSplit split, SynthLabel *l);
// Its picture, (res, res, 3) u8 RGB, 4x4 supersampled; jitter (size,
// position, colour, texture phase) from (seed, i).
void synth_render(uint64_t seed, int64_t i, const SynthLabel *l, int res, uint8_t *rgb);
// Its caption; the number of bytes written (< n), as snprintf.
int synth_caption(const SynthLabel *l, char *buf, size_t n);

// What a prompt asks for: the shape (a shape word), its colour (the colour
// word just before it), the background colour (the first colour word after
// "on a" or "on an"), the texture (plain when none is named), the size (small unless
// "large") and the position (center unless left / right / top / bottom). Other
// words (a DreamBooth identifier, "photo of") are ignored. -1 when the prompt
// names no shape, or no colour for it or its background.
int synth_parse_caption(const char *caption, SynthLabel *l);

// ----------------------------------------------------------------------------
// scoring an image

typedef struct SynthGuess {
    int shape, colour, bg;  // -1 when no shape was found
    int size, position;     // as the labels
    int textured;           // 0 plain background, 1 striped / dotted / checkered
    double shape_iou;       // the best template's IoU with the shape's mask
    double fg_fraction;     // the shape's share of the pixels
    // the subject: its heart outline fits the shape better than the six
    // outlines do, and both its stripe colours cover >= 20 % of the shape
    int subject;
    double subject_iou;     // the heart template's IoU
} SynthGuess;

// Reads an (h, w, 3) u8 image. Allocates a w*h scratch mask; returns -1 when
// out of memory, else 0.
int synth_score(const uint8_t *rgb, int w, int h, SynthGuess *g);

#endif
