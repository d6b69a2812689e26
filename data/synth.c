// synth.c: the procedural captioned images of `sdc dataset synth` and their
// scorer (see synth.h). Geometry is in unit coordinates: u right, v down, the
// image [0, 1)^2; a shape is centred at (cx, cy) with scale s (a fraction of
// the side), its outline given in local coordinates p = (u - cx, v - cy) / s.
#include "data/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const synth_shape_names[SYNTH_N_SHAPES] = {"circle", "square", "triangle", "star", "cross", "diamond"};
const char *const synth_colour_names[SYNTH_N_COLOURS] = {"red",  "orange", "yellow", "green",
                                                         "blue", "purple", "white",  "black"};
const char *const synth_size_names[SYNTH_N_SIZES] = {"small", "large"};
const char *const synth_position_names[SYNTH_N_POSITIONS] = {"center", "left", "right", "top", "bottom"};
const char *const synth_texture_names[SYNTH_N_TEXTURES] = {"plain", "striped", "dotted", "checkered"};

// Base colours, and the second colour of a textured background (the base
// mixed with white; white's and black's chosen far from each other).
static const float PALETTE[SYNTH_N_COLOURS][3] = {
    {215, 45, 45}, {240, 135, 25}, {235, 210, 40}, {45, 160, 65},
    {45, 85, 215}, {135, 60, 185}, {240, 240, 240}, {30, 30, 30},
};

static void tint_of(const float c[3], int colour, float out[3]) {
    for (int k = 0; k < 3; k++) {
        if (colour == 6) out[k] = c[k] * 0.75f + 30.0f * 0.25f;        // white: light grey
        else if (colour == 7) out[k] = c[k] * 0.65f + 255.0f * 0.35f;  // black: dark grey
        else out[k] = c[k] * 0.45f + 255.0f * 0.55f;
    }
}

// Scales: small / large, and the centre's offset for left, right, top, bottom.
static const double SIZE_SCALE[SYNTH_N_SIZES] = {0.15, 0.27};
static const double SIZE_OFFSET[SYNTH_N_SIZES] = {0.24, 0.08};
static const int POS_DIR[SYNTH_N_POSITIONS][2] = {{0, 0}, {-1, 0}, {1, 0}, {0, -1}, {0, 1}};
#define TEXTURE_PERIOD 0.125

// Area of each outline in units of s^2 (circle pi; square 1.7^2; triangle of
// circumradius 1.15; star 5 R r sin 36 with R 1.15, r 0.47; cross 2 (0.72 x
// 2) - 0.72^2; diamond 2 x 1.15^2).
// The subject's heart: (X^2 + Y^2 - 1)^3 <= X^2 Y^3 with X = x / 0.9 and Y =
// 0.29347 - y / 0.9 (up, moved so its centroid is the origin), area 3.66013
// x 0.81 (numerical).
static const double SHAPE_AREA[SYNTH_N_SHAPES + 1] = {3.14159265, 2.89, 1.71806, 1.58858, 2.3616, 2.645, 2.96471};
// The subject's stripe colours (palette indices) and stripe height (local units).
static const int SUBJECT_COLOURS[2] = {2, 5};
#define SUBJECT_STRIPE 0.5

// ----------------------------------------------------------------------------
// randomness: splitmix64 from (seed, item), so an item is the same whatever
// the rank count or the order it is drawn in

static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

typedef struct Rng {
    uint64_t s;
} Rng;

static uint64_t rng_u64(Rng *r) { return r->s = mix64(r->s); }
static double rng_unit(Rng *r) { return (double)(rng_u64(r) >> 11) * 0x1.0p-53; }
static int rng_below(Rng *r, int n) { return (int)(rng_u64(r) % (uint64_t)n); }

// two streams per item: the attributes, and the jitter of the picture
static Rng item_rng(uint64_t seed, int64_t i, uint64_t stream) {
    Rng r = {mix64(seed ^ mix64((uint64_t)i * 2 + stream + 0x5EED))};
    return r;
}

// ----------------------------------------------------------------------------
// labels and captions

int synth_is_heldout(int shape, int colour, int bg) {
    uint64_t key = ((uint64_t)shape * SYNTH_N_COLOURS + (uint64_t)colour) * SYNTH_N_COLOURS + (uint64_t)bg;
    return mix64(key ^ 0x48454C444F5554ull) % 10 == 0;
}

int synth_split_parse(const char *s, SynthSplit *out) {
    if (!strcmp(s, "train")) *out = SYNTH_TRAIN;
    else if (!strcmp(s, "heldout")) *out = SYNTH_HELDOUT;
    else if (!strcmp(s, "all")) *out = SYNTH_ALL;
    else if (!strcmp(s, "subject")) *out = SYNTH_SUBJECT_SPLIT;
    else if (!strcmp(s, "varied")) *out = SYNTH_VARIED;
    else return -1;
    return 0;
}

const char *synth_split_name(SynthSplit s) {
    return s == SYNTH_TRAIN ? "train" : s == SYNTH_HELDOUT ? "heldout" : s == SYNTH_SUBJECT_SPLIT ? "subject"
           : s == SYNTH_VARIED ? "varied" : "all";
}

void synth_label(uint64_t seed, int64_t i, SynthSplit split, SynthLabel *l) {
    Rng r = item_rng(seed, i, 0);
    memset(l, 0, sizeof *l);
    if (split == SYNTH_SUBJECT_SPLIT) { // the subject in a context: a background far from its stripes and their
        // blend (red's and orange's tints are near a yellow-purple mix: the scorer would cut the heart at its seams)
        static const int BG[4] = {3, 4, 6, 7};
        l->shape = SYNTH_SUBJECT, l->colour = SUBJECT_COLOURS[0];
        l->bg = BG[rng_below(&r, 4)];
        l->size = rng_below(&r, SYNTH_N_SIZES);
        l->position = rng_below(&r, SYNTH_N_POSITIONS);
        l->texture = rng_below(&r, SYNTH_N_TEXTURES);
        return;
    }
    for (;;) { // about 1 in 10 triples is held out: a few draws at most
        l->shape = rng_below(&r, SYNTH_N_SHAPES);
        l->colour = rng_below(&r, SYNTH_N_COLOURS);
        l->bg = rng_below(&r, SYNTH_N_COLOURS - 1);
        if (l->bg >= l->colour) l->bg++; // never the shape's colour
        if (split == SYNTH_ALL || synth_is_heldout(l->shape, l->colour, l->bg) == (split == SYNTH_HELDOUT)) break;
    }
    l->size = rng_below(&r, SYNTH_N_SIZES);
    l->position = rng_below(&r, SYNTH_N_POSITIONS);
    l->texture = rng_below(&r, SYNTH_N_TEXTURES);
    if (split == SYNTH_VARIED) { // (a stream of its own: the attributes above are the train split's item i)
        Rng q = item_rng(seed, i, 2);
        l->pattern = rng_below(&q, 3) ? 1 + rng_below(&q, 5) : 0;
        do l->colour2 = rng_below(&q, SYNTH_N_COLOURS);
        while (l->colour2 == l->colour || (l->colour == SUBJECT_COLOURS[0] && l->colour2 == SUBJECT_COLOURS[1]) ||
               (l->colour == SUBJECT_COLOURS[1] && l->colour2 == SUBJECT_COLOURS[0]));
        l->period = 0.35 + 0.9 * rng_unit(&q); // local units: 0.7x to 2.5x the subject's stripe height
    }
}

int synth_caption(const SynthLabel *l, char *buf, size_t n) {
    static const char *const where[SYNTH_N_POSITIONS] = {"in the center", "on the left", "on the right", "at the top",
                                                         "at the bottom"};
    // "on a plain blue background", "on a blue striped background", "on an orange dotted background"
    const char *first = l->texture == 0 ? "plain" : synth_colour_names[l->bg];
    const char *second = l->texture == 0 ? synth_colour_names[l->bg] : synth_texture_names[l->texture];
    if (l->shape == SYNTH_SUBJECT)
        return snprintf(buf, n, "a %s sks shape on %s %s %s background, %s", synth_size_names[l->size],
                        first[0] == 'o' ? "an" : "a", first, second, where[l->position]);
    return snprintf(buf, n, "a %s %s %s on %s %s %s background, %s", synth_size_names[l->size],
                    synth_colour_names[l->colour], synth_shape_names[l->shape], first[0] == 'o' ? "an" : "a", first,
                    second, where[l->position]);
}

static int word_index(const char *const *names, int n, const char *w) {
    for (int k = 0; k < n; k++)
        if (!strcmp(names[k], w)) return k;
    return -1;
}

int synth_parse_caption(const char *caption, SynthLabel *l) {
    char words[48][16];
    int nw = 0;
    for (const char *p = caption; *p && nw < 48;) {
        while (*p && !((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))) p++;
        int k = 0;
        while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')) {
            if (k < 15) words[nw][k++] = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
            p++;
        }
        if (k) words[nw][k] = 0, nw++;
    }
    *l = (SynthLabel){.shape = -1, .colour = -1, .bg = -1};
    int on = -1, sks = 0, noun = -1;
    for (int i = 0; i < nw; i++) {
        if (!strcmp(words[i], "sks") && i + 1 < nw && !strcmp(words[i + 1], "shape")) sks = 1;
        if (!strcmp(words[i], "shape") && noun < 0) noun = i;
        int s = word_index(synth_shape_names, SYNTH_N_SHAPES, words[i]);
        if (s >= 0 && l->shape < 0) {
            l->shape = s;
            if (i > 0) l->colour = word_index(synth_colour_names, SYNTH_N_COLOURS, words[i - 1]);
        }
        if (!strcmp(words[i], "on") && i + 1 < nw && (!strcmp(words[i + 1], "a") || !strcmp(words[i + 1], "an")) &&
            on < 0)
            on = i;
        if (!strcmp(words[i], "large")) l->size = 1;
        int t = word_index(synth_texture_names, SYNTH_N_TEXTURES, words[i]);
        if (t > 0) l->texture = t;
        int q = word_index(synth_position_names, SYNTH_N_POSITIONS, words[i]);
        if (q > 0) l->position = q;
    }
    for (int i = on + 2; on >= 0 && i < nw && l->bg < 0; i++)
        l->bg = word_index(synth_colour_names, SYNTH_N_COLOURS, words[i]);
    if (sks) // "sks shape": the subject, whatever shape word the prompt also has
        l->shape = SYNTH_SUBJECT, l->colour = SUBJECT_COLOURS[0];
    else if (l->shape < 0 && noun >= 0) // a class prompt: its colour when it names one
        l->shape = SYNTH_CLASS, l->colour = noun > 0 ? word_index(synth_colour_names, SYNTH_N_COLOURS, words[noun - 1])
                                                     : -1;
    if (l->shape >= SYNTH_SUBJECT) return l->bg >= 0 ? 0 : -1;
    return l->shape >= 0 && l->colour >= 0 && l->bg >= 0 ? 0 : -1;
}

// ----------------------------------------------------------------------------
// outlines

static int in_polygon(const double (*pt)[2], int n, double x, double y) {
    int in = 0;
    for (int a = 0, b = n - 1; a < n; b = a++) {
        if ((pt[a][1] > y) != (pt[b][1] > y) &&
            x < (pt[b][0] - pt[a][0]) * (y - pt[a][1]) / (pt[b][1] - pt[a][1]) + pt[a][0])
            in = !in;
    }
    return in;
}

// 1 when local point (x, y) is inside shape k
static int shape_inside(int k, double x, double y) {
    static const double TRI[3][2] = {{0, -1.15}, {0.995929, 0.575}, {-0.995929, 0.575}};
    // five points of radius 1.15, the inner corners at 0.47, the first up
    static const double STAR[10][2] = {
        {0.000000000, -1.150000000}, {0.276259069, -0.380237987},  {1.093714994, -0.355369544},
        {0.446996563, 0.145237987},  {0.675953040, 0.930369544},   {0.000000000, 0.470000000},
        {-0.675953040, 0.930369544}, {-0.446996563, 0.145237987},  {-1.093714994, -0.355369544},
        {-0.276259069, -0.380237987}};
    switch (k) {
    case 0: return x * x + y * y <= 1.0;
    case 1: return fabs(x) <= 0.85 && fabs(y) <= 0.85;
    case 2: return in_polygon(TRI, 3, x, y);
    case 3: return in_polygon(STAR, 10, x, y);
    case 4: return (fabs(x) <= 0.36 && fabs(y) <= 1.0) || (fabs(y) <= 0.36 && fabs(x) <= 1.0);
    case 5: return fabs(x) + fabs(y) <= 1.15;
    default: { // SYNTH_SUBJECT: the heart
        const double X = x / 0.9, Y = 0.29347 - y / 0.9, q = X * X + Y * Y - 1.0;
        return q * q * q <= X * X * Y * Y * Y;
    }
    }
}

// ----------------------------------------------------------------------------
// rendering

static int texture_second(int texture, double u, double v, double ph_u, double ph_v) {
    const double p = TEXTURE_PERIOD;
    switch (texture) {
    case 1: { // diagonal stripes
        double t = (u + v) / p + ph_u;
        return t - floor(t) < 0.5;
    }
    case 2: { // dots on a square grid
        double a = u / p + ph_u, b = v / p + ph_v;
        a = a - floor(a) - 0.5, b = b - floor(b) - 0.5;
        return a * a + b * b <= 0.3 * 0.3;
    }
    case 3: return ((long)floor(u / p + ph_u) + (long)floor(v / p + ph_v)) & 1;
    default: return 0;
    }
}

// The varied split's pattern on the shape at local (x, y): 1 where colour2 shows.
static int shape_pattern(const SynthLabel *l, double x, double y) {
    const double p = l->period > 0 ? l->period : 1;
    switch (l->pattern) {
    case 1: return (long)floor(y / p) & 1;
    case 2: return (long)floor(x / p) & 1;
    case 3: return (long)floor((x + y) / p) & 1;
    case 4: {
        double a = x / p - floor(x / p) - 0.5, b = y / p - floor(y / p) - 0.5;
        return a * a + b * b <= 0.3 * 0.3;
    }
    case 5: return ((long)floor(x / p) + (long)floor(y / p)) & 1;
    default: return 0;
    }
}

void synth_render(uint64_t seed, int64_t i, const SynthLabel *l, int res, uint8_t *rgb) {
    Rng r = item_rng(seed, i, 1);
    const double s = SIZE_SCALE[l->size] * (1.0 + 0.16 * (rng_unit(&r) - 0.5));
    const double d = SIZE_OFFSET[l->size];
    const double cx = 0.5 + d * POS_DIR[l->position][0] + 0.04 * (rng_unit(&r) - 0.5);
    const double cy = 0.5 + d * POS_DIR[l->position][1] + 0.04 * (rng_unit(&r) - 0.5);
    const double ph_u = rng_unit(&r), ph_v = rng_unit(&r);
    float fg[3], bg[3], bg2[3], fg2[3]; // fg2: the subject's second stripe colour
    for (int k = 0; k < 3; k++) {
        fg[k] = PALETTE[l->colour][k] + (float)(20.0 * (rng_unit(&r) - 0.5));
        bg[k] = PALETTE[l->bg][k] + (float)(20.0 * (rng_unit(&r) - 0.5));
    }
    for (int k = 0; k < 3; k++) fg2[k] = PALETTE[SUBJECT_COLOURS[1]][k] + (float)(20.0 * (rng_unit(&r) - 0.5));
    if (l->pattern) // the varied split's second colour (the draws above unchanged: the same jitter as the train item)
        for (int k = 0; k < 3; k++) fg2[k] = PALETTE[l->colour2][k] + (fg2[k] - PALETTE[SUBJECT_COLOURS[1]][k]);
    const int subject = l->shape == SYNTH_SUBJECT;
    tint_of(bg, l->bg, bg2);
    const int SS = 4; // samples per pixel side
    for (int y = 0; y < res; y++)
        for (int x = 0; x < res; x++) {
            float acc[3] = {0, 0, 0};
            for (int sy = 0; sy < SS; sy++)
                for (int sx = 0; sx < SS; sx++) {
                    double u = (x + (sx + 0.5) / SS) / res, v = (y + (sy + 0.5) / SS) / res;
                    const double ly = (v - cy) / s;
                    const double lx = (u - cx) / s;
                    const float *c = shape_inside(l->shape, lx, ly)
                                         ? ((subject && ((long)floor(ly / SUBJECT_STRIPE) & 1)) ||
                                                    shape_pattern(l, lx, ly) ? fg2 : fg)
                                     : texture_second(l->texture, u, v, ph_u, ph_v) ? bg2
                                                                                      : bg;
                    for (int k = 0; k < 3; k++) acc[k] += c[k];
                }
            for (int k = 0; k < 3; k++) {
                float val = acc[k] / (SS * SS) + 0.5f;
                rgb[((size_t)y * res + x) * 3 + k] = (uint8_t)(val < 0 ? 0 : val > 255 ? 255 : val);
            }
        }
}

// ----------------------------------------------------------------------------
// scoring

static float dist2(const float *a, const float *b) {
    float d0 = a[0] - b[0], d1 = a[1] - b[1], d2 = a[2] - b[2];
    return d0 * d0 + d1 * d1 + d2 * d2;
}

// nearest of the 16 references: 0..7 base colours, 8..15 their tints
static int nearest_ref(const float (*ref)[3], const float *c) {
    int best = 0;
    float bd = dist2(ref[0], c);
    for (int k = 1; k < 2 * SYNTH_N_COLOURS; k++) {
        float dd = dist2(ref[k], c);
        if (dd < bd) bd = dd, best = k;
    }
    return best;
}

// squared distance from c to the segment [a, b]
static float seg_dist2(const float *a, const float *b, const float *c) {
    float ab[3], ac[3], den = 0, t = 0;
    for (int k = 0; k < 3; k++) ab[k] = b[k] - a[k], ac[k] = c[k] - a[k], den += ab[k] * ab[k], t += ab[k] * ac[k];
    t = den > 0 ? t / den : 0;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    float p[3] = {a[0] + t * ab[0], a[1] + t * ab[1], a[2] + t * ab[2]};
    return dist2(p, c);
}

// IoU of outline k, centred at (cx, cy) with scale s, with the pixels of
// component `id` of lab (h, w).
static double template_iou(int k, const int32_t *lab, int32_t id, int w, int h, double cx, double cy, double s) {
    int64_t inter = 0, uni = 0;
    for (size_t p = 0; p < (size_t)w * h; p++) {
        double u = ((double)(p % (size_t)w) + 0.5) / w, v = ((double)(p / (size_t)w) + 0.5) / h;
        int t = shape_inside(k, (u - cx) / s, (v - cy) / s), m = lab[p] == id;
        inter += t && m, uni += t || m;
    }
    return uni ? (double)inter / uni : 0;
}

int synth_score(const uint8_t *rgb, int w, int h, SynthGuess *g) {
    memset(g, 0, sizeof *g);
    g->shape = g->colour = g->bg = -1;
    float ref[2 * SYNTH_N_COLOURS][3];
    for (int c = 0; c < SYNTH_N_COLOURS; c++) {
        memcpy(ref[c], PALETTE[c], sizeof ref[c]);
        tint_of(PALETTE[c], c, ref[SYNTH_N_COLOURS + c]);
    }
    const size_t n = (size_t)w * h;
    uint8_t *cls = malloc(n);    // (h, w): nearest reference
    int32_t *lab = malloc(n * sizeof *lab); // (h, w): 1 foreground, then component ids
    int32_t *stack = malloc(n * sizeof *stack);
    if (!cls || !lab || !stack) {
        free(cls), free(lab), free(stack);
        return -1;
    }
    // background: the base colour most of the border ring votes for
    const int ring = w / 32 > 1 ? w / 32 : 1;
    int64_t votes[SYNTH_N_COLOURS] = {0};
    for (size_t p = 0; p < n; p++) {
        float c[3] = {rgb[p * 3], rgb[p * 3 + 1], rgb[p * 3 + 2]};
        cls[p] = (uint8_t)nearest_ref((const float(*)[3])ref, c);
        int x = (int)(p % (size_t)w), y = (int)(p / (size_t)w);
        if (x < ring || y < ring || x >= w - ring || y >= h - ring) votes[cls[p] % SYNTH_N_COLOURS]++;
    }
    int bg = 0;
    for (int c = 1; c < SYNTH_N_COLOURS; c++)
        if (votes[c] > votes[bg]) bg = c;
    g->bg = bg;
    // foreground: far from the background's colours (any mix of base and
    // tint: stripe edges) and nearest to another colour
    const float far2 = 40.0f * 40.0f;
    int64_t tinted = 0, plain_bg = 0;
    for (size_t p = 0; p < n; p++) {
        float c[3] = {rgb[p * 3], rgb[p * 3 + 1], rgb[p * 3 + 2]};
        int fgpix = cls[p] % SYNTH_N_COLOURS != bg && seg_dist2(ref[bg], ref[SYNTH_N_COLOURS + bg], c) > far2;
        lab[p] = fgpix;
        if (!fgpix) {
            if (cls[p] == SYNTH_N_COLOURS + bg) tinted++;
            else plain_bg++;
        }
    }
    g->textured = tinted > (tinted + plain_bg) / 10;
    // the largest 4-connected foreground component is the shape
    int32_t best_id = 0, next_id = 2;
    int64_t best_n = 0;
    for (size_t p0 = 0; p0 < n; p0++) {
        if (lab[p0] != 1) continue;
        int32_t id = next_id++;
        int64_t cnt = 0, top = 0;
        stack[top++] = (int32_t)p0;
        lab[p0] = id;
        while (top) {
            int32_t p = stack[--top];
            cnt++;
            int x = p % w, y = p / w;
            const int nb[4][2] = {{x - 1, y}, {x + 1, y}, {x, y - 1}, {x, y + 1}};
            for (int k = 0; k < 4; k++) {
                if (nb[k][0] < 0 || nb[k][1] < 0 || nb[k][0] >= w || nb[k][1] >= h) continue;
                int32_t q = nb[k][1] * w + nb[k][0];
                if (lab[q] == 1) lab[q] = id, stack[top++] = q;
            }
        }
        if (cnt > best_n) best_n = cnt, best_id = id;
    }
    g->fg_fraction = (double)best_n / (double)n;
    if (best_n < (int64_t)(n / 200) || best_n < 4) goto done; // no shape
    {
        int64_t cvotes[SYNTH_N_COLOURS] = {0};
        double sx = 0, sy = 0;
        for (size_t p = 0; p < n; p++) {
            if (lab[p] != best_id) continue;
            cvotes[cls[p] % SYNTH_N_COLOURS]++;
            sx += (double)(p % (size_t)w) + 0.5, sy += (double)(p / (size_t)w) + 0.5;
        }
        int col = bg == 0 ? 1 : 0;
        for (int c = 0; c < SYNTH_N_COLOURS; c++)
            if (c != bg && cvotes[c] > cvotes[col]) col = c;
        g->colour = col;
        const double cx = sx / best_n / w, cy = sy / best_n / h;
        const double area = (double)best_n / n; // in unit^2
        double best_iou = -1, best_s = 0;
        for (int k = 0; k < SYNTH_N_SHAPES; k++) {
            const double s = sqrt(area / SHAPE_AREA[k]), iou = template_iou(k, lab, best_id, w, h, cx, cy, s);
            if (iou > best_iou) best_iou = iou, best_s = s, g->shape = k;
        }
        g->shape_iou = best_iou;
        { // the subject: the heart's IoU, and its two stripe colours' shares of the shape
            const double s = sqrt(area / SHAPE_AREA[SYNTH_SUBJECT]);
            g->subject_iou = template_iou(SYNTH_SUBJECT, lab, best_id, w, h, cx, cy, s);
            g->subject = g->subject_iou > best_iou && cvotes[SUBJECT_COLOURS[0]] * 5 >= best_n &&
                         cvotes[SUBJECT_COLOURS[1]] * 5 >= best_n;
        }
        g->size = best_s < 0.5 * (SIZE_SCALE[0] + SIZE_SCALE[1]) ? 0 : 1;
        const double dx = cx - 0.5, dy = cy - 0.5, lim = 0.5 * SIZE_OFFSET[g->size];
        if (fabs(dx) < lim && fabs(dy) < lim) g->position = 0;
        else if (fabs(dx) >= fabs(dy)) g->position = dx < 0 ? 1 : 2;
        else g->position = dy < 0 ? 3 : 4;
    }
done:
    free(cls), free(lab), free(stack);
    return 0;
}
