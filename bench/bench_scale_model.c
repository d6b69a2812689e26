// bench_scale_model.c: the scaling model of pipeline x data-parallel DreamBooth
// (mpi/pp_train.h): from a per-block profile (bench_blocks: forward and
// backward seconds, kept activations, the cut entering each block,
// parameters, FLOPs) and the links (latency, bandwidth), it predicts a step's
// time, the efficiency and the memory per device of every P x D layout, and
// picks the fastest one that fits.
//
//   bench_scale_model --profile T=FILE.csv [--profile T=FILE.csv ...] --check MEASURED.csv
//               [--p2p-lat-us X --p2p-gbps Y --ar-lat-us X --ar-gbps Y] [--adam-ns X]
//       predicts the CPU layouts measured on this machine (one profile per
//       thread count; MEASURED rows: P,D,M,mb,schedule,threads,step_s,latent)
//       and prints each prediction's error
//   bench_scale_model --profile 0=FILE.csv --cluster h100 [--gpus 8,64,512]
//               [--batches 64,256,1024,2048] [--svg OUT.svg] [--markdown]
//       a GPU cluster (published link figures, the H100's measured UNet rates,
//       docs/gpu.md): the best layout per GPU count and global batch
//
// The step, one optimizer step of `batch` rows over D replicas of P stages:
//   - the cut: the blocks in P ranges of near-equal forward + backward time,
//     as sdc cuts them (pp_partition_costs);
//   - the pipeline: M = batch / (D mb) micro-batches of mb rows, the schedule
//     (GPipe or 1F1B) simulated op by op: a stage runs its forwards and
//     backwards in schedule order, each starting when the stage is free and
//     its input has arrived (the previous stage's forward or the next one's
//     backward, plus the transfer of the cut: latency + bytes / bandwidth);
//   - the data-parallel all-reduce of each stage's gradients (ring: 2 (D-1)/D
//     of the bytes over the link, 2 (D-1) latencies), of which the last
//     backward hides all but one bucket;
//   - AdamW over the stage's parameters (ns per parameter);
//   the step is the pipeline's end plus the slowest stage's reduction and
//   optimizer. Memory per device: parameters, gradients, AdamW moments (and
//   the bf16 copy on GPUs), the activations of the micro-batches the
//   schedule holds (1F1B: min(P - s, M) on stage s), one block's backward
//   scratch.
// A model, not a measurement: its inputs are measured (bench_blocks,
// bench_mpi_link) or published (NVLink, InfiniBand), and --check says how
// far it is from runs here.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "mpi/pp.h"

#define MAX_BLOCKS 256
#define MAX_PROFILES 8

typedef struct Profile {
    int threads, rows, latent;
    double adam_ns; // the optimizer's part of a step, per parameter (0: not measured)
    int n;
    char kind[MAX_BLOCKS][32];
    double params[MAX_BLOCKS], fwd[MAX_BLOCKS], bwd[MAX_BLOCKS], keep[MAX_BLOCKS], cut[MAX_BLOCKS],
        flops[MAX_BLOCKS]; // per profiled rows
} Profile;

typedef struct Link {
    double lat_s, bytes_per_s;
} Link;

typedef struct Machine {
    const char *name;
    Link p2p_in, p2p_out;  // pipeline link inside / across nodes
    Link ar_in, ar_out;    // all-reduce inside / across nodes (per device)
    int per_node;          // devices per node (the grid fills nodes with consecutive ranks)
    double mem_bytes;      // per device
    double adam_s_per_param;
    double bytes_per_param; // parameters + gradients + moments (+ the compute copy)
    double act_scale;       // activation bytes relative to the profile's fp32
    double peak_flops;      // for the utilisation: the device's measured matmul rate
    int gpu;                // per-block times from FLOPs and rate_of(mb), not the profile's seconds
} Machine;

// ---------------------------------------------------------------------------
// inputs
// ---------------------------------------------------------------------------

static int load_profile(Profile *p, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "bench_scale_model: cannot open %s\n", path);
        return -1;
    }
    char line[1024];
    memset(p, 0, sizeof *p);
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') {
            const char *r = strstr(line, "rows="), *l = strstr(line, "latent="), *t = strstr(line, "threads=");
            if (r) p->rows = atoi(r + 5);
            if (l) p->latent = atoi(l + 7);
            if (t) p->threads = atoi(t + 8);
            const char *an = strstr(line, "adam_ns=");
            if (an) p->adam_ns = atof(an + 8);
            continue;
        }
        if (!strncmp(line, "block,", 6)) continue;
        int b;
        char kind[32], name[128];
        double prm, fw, bw, kp, ct, fl;
        if (sscanf(line, "%d,%31[^,],%127[^,],%lf,%lf,%lf,%lf,%lf,%lf", &b, kind, name, &prm, &fw, &bw, &kp, &ct,
                   &fl) != 9 || b != p->n || p->n >= MAX_BLOCKS)
            continue;
        snprintf(p->kind[b], sizeof p->kind[b], "%s", kind);
        p->params[b] = prm, p->fwd[b] = fw, p->bwd[b] = bw, p->keep[b] = kp, p->cut[b] = ct, p->flops[b] = fl;
        p->n++;
    }
    fclose(f);
    if (!p->n || !p->rows) {
        fprintf(stderr, "bench_scale_model: %s is not a bench_blocks profile\n", path);
        return -1;
    }
    return 0;
}

// The H100's measured forward rate of the SD 1.5 UNet by batch rows
// (docs/gpu.md: diffusers, bf16, 64x64 latent: 29.2 TFLOP/s at 1, 55.1 at 2,
// 194 at 8), log-interpolated; held at 194 above 8 (not measured there).
static double h100_rate(double mb) {
    static const double x[3] = {1, 2, 8}, y[3] = {29.2e12, 55.1e12, 194e12};
    if (mb <= 1) return y[0];
    if (mb >= 8) return y[2];
    const int k = mb < 2 ? 0 : 1;
    const double t = (log(mb) - log(x[k])) / (log(x[k + 1]) - log(x[k]));
    return exp(log(y[k]) + t * (log(y[k + 1]) - log(y[k])));
}

// ---------------------------------------------------------------------------
// one layout
// ---------------------------------------------------------------------------

typedef struct Layout {
    int P, D, M, mb, gpipe;
} Layout;

typedef struct Prediction {
    double step_s, pipe_s, reduce_s, adam_s;
    double mem_bytes;       // the largest stage's
    double util;            // model FLOPs / (devices x peak x step)
    int bounds[MAX_BLOCKS + 1];
} Prediction;

static double xfer(const Link *l, double bytes) { return bytes > 0 ? l->lat_s + bytes / l->bytes_per_s : 0; }

// Block b's forward / backward seconds for mb rows.
static double blk_time(const Profile *p, const Machine *m, int b, double mb, int bwd) {
    if (m->gpu) {
        const double f = p->flops[b] / p->rows * mb / h100_rate(mb);
        return bwd ? 2 * f : f;
    }
    return (bwd ? p->bwd[b] : p->fwd[b]) / p->rows * mb;
}

// The schedule of P stages and M micro-batches, simulated op by op (the op
// order of mpi/pp_train.c); returns the time the last backward ends.
static double simulate(const Layout *L, const double *F, const double *B, const double *cf, const double *cb) {
    const int P = L->P, M = L->M;
    double *fend = calloc((size_t)P * M, sizeof *fend), *bend = calloc((size_t)P * M, sizeof *bend);
    double *free_at = calloc((size_t)P, sizeof *free_at);
    int *next = calloc((size_t)P, sizeof *next), *op = calloc((size_t)P * 2 * M, sizeof *op);
    char *done = calloc((size_t)P * M * 2, 1);
    for (int s = 0; s < P; s++) { // op k of stage s: micro-batch j, backward when >= M (encoded j + M)
        int *o = &op[s * 2 * M], k = 0;
        if (L->gpipe) {
            for (int j = 0; j < M; j++) o[k++] = j;
            for (int j = 0; j < M; j++) o[k++] = M + j;
        } else {
            const int warm = P - s - 1 < M ? P - s - 1 : M;
            int f = 0, b = 0;
            for (; f < warm; f++) o[k++] = f;
            for (; f < M; f++, b++) o[k++] = f, o[k++] = M + b;
            for (; b < M; b++) o[k++] = M + b;
        }
    }
    int left = 2 * M * P, progressed = 1;
    while (left > 0 && progressed) {
        progressed = 0;
        for (int s = 0; s < P; s++) {
            while (next[s] < 2 * M) {
                const int code = op[s * 2 * M + next[s]], bw = code >= M, j = bw ? code - M : code;
                double ready;
                if (!bw) {
                    if (s > 0 && !done[((s - 1) * M + j) * 2]) break;
                    ready = s > 0 ? fend[(s - 1) * M + j] + cf[s] : 0;
                } else {
                    if (s < P - 1 && !done[((s + 1) * M + j) * 2 + 1]) break;
                    ready = s < P - 1 ? bend[(s + 1) * M + j] + cb[s + 1] : fend[s * M + j];
                }
                const double start = ready > free_at[s] ? ready : free_at[s], end = start + (bw ? B[s] : F[s]);
                if (bw) bend[s * M + j] = end;
                else fend[s * M + j] = end;
                done[(s * M + j) * 2 + bw] = 1;
                free_at[s] = end;
                next[s]++, left--, progressed = 1;
            }
        }
    }
    double t = 0;
    for (int s = 0; s < P; s++) t = free_at[s] > t ? free_at[s] : t;
    free(fend), free(bend), free(free_at), free(next), free(op), free(done);
    return left ? INFINITY : t;
}

static int predict(const Profile *p, const Machine *m, const Layout *L, Prediction *out) {
    const int P = L->P, D = L->D, nb = p->n;
    const double mb = L->mb;
    double cost[MAX_BLOCKS];
    for (int b = 0; b < nb; b++) cost[b] = blk_time(p, m, b, 1, 0) + blk_time(p, m, b, 1, 1);
    SdcError err;
    if (P > nb || pp_partition_costs(cost, nb, P, out->bounds, &err)) return -1;
    const int in_node = P <= m->per_node; // consecutive ranks: a pipeline on one node when it fits
    const Link *pl = in_node ? &m->p2p_in : &m->p2p_out;
    const Link *al = P * D <= m->per_node ? &m->ar_in : &m->ar_out;
    double F[MAX_BLOCKS], B[MAX_BLOCKS], cf[MAX_BLOCKS], cb[MAX_BLOCKS], worst_tail = 0, worst_mem = 0, flops = 0;
    double pipe_bytes_s = 0;
    for (int s = 0; s < P; s++) {
        double f = 0, bw = 0, prm = 0, keep = 0, scratch = 0;
        for (int b = out->bounds[s]; b < out->bounds[s + 1]; b++) {
            f += blk_time(p, m, b, mb, 0), bw += blk_time(p, m, b, mb, 1);
            prm += p->params[b];
            keep += p->keep[b] / p->rows * mb * m->act_scale;
            const double sc = 2 * p->keep[b] / p->rows * mb * m->act_scale; // ~ a block's backward temporaries
            scratch = sc > scratch ? sc : scratch;
            flops += p->flops[b] / p->rows;
        }
        F[s] = f, B[s] = bw;
        // the cut entering stage s: activations forward, their gradients back
        cf[s] = cb[s] = s > 0 ? xfer(pl, p->cut[out->bounds[s]] / p->rows * mb * m->act_scale) : 0;
        pipe_bytes_s += s > 0 ? p->cut[out->bounds[s]] / p->rows * mb : 0;
        const double grad_bytes = 4 * prm;
        double ar = 0;
        if (D > 1) {
            ar = 2.0 * (D - 1) / D * grad_bytes / al->bytes_per_s + 2.0 * (D - 1) * al->lat_s;
            const double bucket = 25.0 * 1048576 / al->bytes_per_s; // the last bucket goes out after the backward
            ar = ar > bw ? ar - bw + (bucket < ar ? bucket : ar) : (bucket < ar ? bucket : ar);
        }
        // the optimizer: the profile's measured rate on the CPU, the device's memory bandwidth on GPUs
        const double adam = prm * (!m->gpu && p->adam_ns > 0 ? p->adam_ns * 1e-9 : m->adam_s_per_param);
        const double tail = ar + adam;
        if (tail > worst_tail) worst_tail = tail, out->reduce_s = ar, out->adam_s = adam;
        const int tapes = L->gpipe ? L->M : (P - s < L->M ? P - s : L->M);
        const double mem = prm * m->bytes_per_param + tapes * keep + scratch;
        worst_mem = mem > worst_mem ? mem : worst_mem;
    }
    (void)pipe_bytes_s;
    out->pipe_s = simulate(L, F, B, cf, cb);
    out->step_s = out->pipe_s + worst_tail;
    out->mem_bytes = worst_mem;
    const double step_flops = 3.0 * flops * mb * L->M * D; // forward + backward (2x): the whole global batch
    out->util = m->peak_flops > 0 ? step_flops / (P * D * m->peak_flops * out->step_s) : 0;
    return 0;
}

// ---------------------------------------------------------------------------
// the two modes
// ---------------------------------------------------------------------------

static int check_measured(Profile *prof, int n_prof, Machine *m, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "bench_scale_model: cannot open %s\n", path);
        return 1;
    }
    char line[512];
    int worst_ok = 1, n = 0;
    double worst = 0;
    printf("| layout | schedule | micro-batches x rows | threads/rank | measured s/step | predicted s/step | "
           "error |\n|---|---|---|---|---|---|---|\n");
    while (fgets(line, sizeof line, f)) {
        Layout L = {0};
        char sched[16];
        int threads, latent;
        double meas;
        if (sscanf(line, "%d,%d,%d,%d,%15[^,],%d,%lf,%d", &L.P, &L.D, &L.M, &L.mb, sched, &threads, &meas, &latent) !=
            8)
            continue;
        L.gpipe = !strcmp(sched, "gpipe");
        const Profile *p = NULL;
        for (int i = 0; i < n_prof; i++)
            if (prof[i].threads == threads && prof[i].latent == latent) p = &prof[i];
        if (!p) {
            fprintf(stderr, "bench_scale_model: no profile for %d threads at latent %d\n", threads, latent);
            continue;
        }
        Prediction pr;
        if (predict(p, m, &L, &pr)) continue;
        const double e = (pr.step_s - meas) / meas;
        printf("| %d x %d | %s | %d x %d | %d | %.3f | %.3f | %+.1f%% |\n", L.P, L.D, sched, L.M, L.mb, threads, meas,
               pr.step_s, 100 * e);
        if (fabs(e) > worst) worst = fabs(e);
        worst_ok &= fabs(e) <= 0.15;
        n++;
    }
    fclose(f);
    printf("\n%d layouts; worst error %.1f%% (%s the 15%% target)\n", n, 100 * worst, worst_ok ? "within" : "OUTSIDE");
    return 0;
}

static int parse_list(const char *s, int *v, int cap) {
    int n = 0;
    while (s && *s && n < cap) {
        v[n++] = atoi(s);
        s = strchr(s, ',');
        if (s) s++;
    }
    return n;
}

typedef struct Best {
    Layout L;
    Prediction pr;
    int found;
} Best;

static Best best_layout(const Profile *p, const Machine *m, int gpus, int batch) {
    Best best = {0};
    for (int P = 1; P <= gpus && P <= p->n; P *= 2) {
        if (gpus % P) continue;
        const int D = gpus / P;
        for (int mb = 1; mb <= 64; mb *= 2) {
            if (batch % (D * mb)) continue;
            for (int sched = 0; sched < 2; sched++) {
                Layout L = {.P = P, .D = D, .mb = mb, .M = batch / (D * mb), .gpipe = sched};
                Prediction pr;
                if (predict(p, m, &L, &pr) || pr.mem_bytes > m->mem_bytes) continue;
                if (!best.found || pr.step_s < best.pr.step_s) best = (Best){L, pr, 1};
            }
        }
    }
    return best;
}

static void write_svg(const char *path, const Profile *p, const Machine *m, const int *gpus, int ng, const int *batches,
                      int nbt) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    const double W = 720, H = 440, x0 = 70, y0 = 30, pw = 600, ph = 340;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
               "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H);
    fprintf(f, "<text x=\"%.0f\" y=\"18\">SD 1.5 512 px DreamBooth on %s: predicted images/s of the best layout "
               "(log-log)</text>\n", x0, m->name);
    // axes: x = log2 GPUs, y = log10 images/s
    const double lx0 = log2(gpus[0]), lx1 = log2(gpus[ng - 1]);
    double ymin = 1e30, ymax = 0;
    double ips[16][16];
    for (int b = 0; b < nbt; b++)
        for (int g = 0; g < ng; g++) {
            Best bl = best_layout(p, m, gpus[g], batches[b]);
            ips[b][g] = bl.found ? batches[b] / bl.pr.step_s : 0;
            if (ips[b][g] > 0) ymin = fmin(ymin, ips[b][g]), ymax = fmax(ymax, ips[b][g]);
        }
    const double ly0 = floor(log10(ymin)), ly1 = ceil(log10(ymax));
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"black\"/>\n", x0, y0,
            pw, ph);
    for (int g = 0; g < ng; g++) {
        const double x = x0 + (log2(gpus[g]) - lx0) / (lx1 - lx0 > 0 ? lx1 - lx0 : 1) * pw;
        fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">%d</text>\n", x, y0 + ph + 16, gpus[g]);
    }
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">GPUs</text>\n", x0 + pw / 2, y0 + ph + 34);
    for (double e = ly0; e <= ly1; e++) {
        const double y = y0 + ph - (e - ly0) / (ly1 - ly0 > 0 ? ly1 - ly0 : 1) * ph;
        fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">1e%.0f</text>\n", x0 - 6, y + 4, e);
        fprintf(f, "<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.0f\" y2=\"%.0f\" stroke=\"#ddd\"/>\n", x0, x0 + pw, y, y);
    }
    static const char *const colors[] = {"#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"};
    for (int b = 0; b < nbt; b++) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", colors[b % 6]);
        for (int g = 0; g < ng; g++) {
            if (ips[b][g] <= 0) continue;
            const double x = x0 + (log2(gpus[g]) - lx0) / (lx1 - lx0 > 0 ? lx1 - lx0 : 1) * pw;
            const double y = y0 + ph - (log10(ips[b][g]) - ly0) / (ly1 - ly0 > 0 ? ly1 - ly0 : 1) * ph;
            fprintf(f, "%.1f,%.1f ", x, y);
        }
        fprintf(f, "\"/>\n<text x=\"%.0f\" y=\"%.0f\" fill=\"%s\">global batch %d</text>\n", x0 + 10,
                y0 + 16 + 15 * b, colors[b % 6], batches[b]);
    }
    fprintf(f, "</svg>\n");
    fclose(f);
}

int main(int argc, char **argv) {
    static Profile prof[MAX_PROFILES];
    int n_prof = 0;
    const char *check = NULL, *cluster = NULL, *svg = NULL, *gpus_s = "8,64,512", *batches_s = "64,256,1024,2048";
    Machine cpu = {.name = "this CPU machine", .per_node = 1 << 30, .mem_bytes = 1e18, .bytes_per_param = 16,
                   .act_scale = 1, .adam_s_per_param = 2e-9};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--profile") && v) {
            const char *eq = strchr(v, '=');
            if (!eq || n_prof == MAX_PROFILES || load_profile(&prof[n_prof], eq + 1)) return 2;
            n_prof++, i++;
        } else if (!strcmp(a, "--check") && v) check = v, i++;
        else if (!strcmp(a, "--cluster") && v) cluster = v, i++;
        else if (!strcmp(a, "--svg") && v) svg = v, i++;
        else if (!strcmp(a, "--gpus") && v) gpus_s = v, i++;
        else if (!strcmp(a, "--batches") && v) batches_s = v, i++;
        else if (!strcmp(a, "--p2p-lat-us") && v) cpu.p2p_in.lat_s = cpu.p2p_out.lat_s = atof(v) * 1e-6, i++;
        else if (!strcmp(a, "--p2p-gbps") && v) cpu.p2p_in.bytes_per_s = cpu.p2p_out.bytes_per_s = atof(v) * 1e9, i++;
        else if (!strcmp(a, "--ar-lat-us") && v) cpu.ar_in.lat_s = cpu.ar_out.lat_s = atof(v) * 1e-6, i++;
        else if (!strcmp(a, "--ar-gbps") && v) cpu.ar_in.bytes_per_s = cpu.ar_out.bytes_per_s = atof(v) * 1e9, i++;
        else if (!strcmp(a, "--adam-ns") && v) cpu.adam_s_per_param = atof(v) * 1e-9, i++;
        else {
            fprintf(stderr, "bench_scale_model: unknown option %s (see the top of bench/bench_scale_model.c)\n", a);
            return 2;
        }
    }
    if (!n_prof) {
        fprintf(stderr, "bench_scale_model: --profile THREADS=FILE.csv (bench_blocks) is needed\n");
        return 2;
    }
    if (check) {
        if (!cpu.p2p_in.bytes_per_s || !cpu.ar_in.bytes_per_s) {
            fprintf(stderr, "bench_scale_model: --check needs the link: --p2p-lat-us --p2p-gbps --ar-lat-us --ar-gbps "
                            "(bench_mpi_link)\n");
            return 2;
        }
        return check_measured(prof, n_prof, &cpu, check);
    }
    if (!cluster || strcmp(cluster, "h100")) {
        fprintf(stderr, "bench_scale_model: --cluster h100 (or --check MEASURED.csv)\n");
        return 2;
    }
    // DGX H100-class nodes: 8 GPUs on NVLink 4 (450 GB/s a direction, NCCL
    // all-reduce bus bandwidth ~360 GB/s), one 400 Gb/s InfiniBand NDR port
    // per GPU (50 GB/s) between nodes; 80 GB per GPU, of which 75 usable.
    // AdamW: 28 bytes per parameter moved at 3.35 TB/s (HBM3). Mixed
    // precision: fp32 master, fp32 gradients, fp32 moments, bf16 copy = 18
    // bytes per parameter; bf16 activations (half the profile's fp32).
    Machine h100 = {.name = "H100 nodes (8 x NVLink 4, InfiniBand NDR 400 Gb/s per GPU)",
                    .p2p_in = {3e-6, 450e9}, .p2p_out = {6e-6, 50e9}, .ar_in = {10e-6, 360e9}, .ar_out = {20e-6, 50e9},
                    .per_node = 8, .mem_bytes = 75e9, .adam_s_per_param = 28 / 3.35e12, .bytes_per_param = 18,
                    .act_scale = 0.5, .peak_flops = 645e12, .gpu = 1};
    int gpus[16], batches[16];
    const int ng = parse_list(gpus_s, gpus, 16), nbt = parse_list(batches_s, batches, 16);
    const Profile *p = &prof[0];
    printf("Inputs: the block profile of %s (%d blocks, latent %d: activations and cuts from it, scaled to bf16); "
           "per-block GPU time = FLOPs / the H100's measured SD 1.5 UNet rate at mb rows (29.2, 55.1, 194 TFLOP/s at "
           "1, 2, 8; docs/gpu.md), backward = 2 x forward; NVLink 4 inside a node (450 GB/s p2p, 360 GB/s "
           "all-reduce), InfiniBand NDR between nodes (50 GB/s a GPU); 75 of 80 GB; utilisation against the "
           "measured 645 TFLOP/s bf16 GEMM.\n\n",
           "the profile", p->n, p->latent);
    printf("| GPUs | global batch | best layout (P x D) | schedule | micro-batches x rows | step s | images/s | "
           "MFU | memory/GPU GB |\n|---|---|---|---|---|---|---|---|---|\n");
    for (int g = 0; g < ng; g++)
        for (int b = 0; b < nbt; b++) {
            Best bl = best_layout(p, &h100, gpus[g], batches[b]);
            if (!bl.found) {
                printf("| %d | %d | (nothing fits) | | | | | | |\n", gpus[g], batches[b]);
                continue;
            }
            printf("| %d | %d | %d x %d | %s | %d x %d | %.3f | %.0f | %.0f%% | %.1f |\n", gpus[g], batches[b], bl.L.P,
                   bl.L.D, bl.L.gpipe ? "gpipe" : "1f1b", bl.L.M, bl.L.mb, bl.pr.step_s, batches[b] / bl.pr.step_s,
                   100 * bl.pr.util, bl.pr.mem_bytes / 1e9);
        }
    if (svg) write_svg(svg, p, &h100, gpus, ng, batches, nbt);
    return 0;
}
