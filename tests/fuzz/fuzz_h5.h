// fuzz_h5.h: what the HDF5 fuzz targets (fuzz_h5_dataset.c, fuzz_h5_ckpt.c,
// fuzz_h5_genout.c) and their seed writer (make_fuzz_seeds.c) agree on: the
// generation sweep a genout file holds and the training-state spec a
// DreamBooth checkpoint is loaded with, so that a seed written by sdc's real
// writers is accepted whole by the real readers and its mutations reach
// every check past the file's kind.
#ifndef SDC_FUZZ_H5_H
#define SDC_FUZZ_H5_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <signal.h>
#include <sys/time.h>

#include <hdf5.h>

#include "data/genout.h"
#include "data/train_ckpt.h"

// ---- a CPU limit per input, below libFuzzer's 1-second granularity ---------
// libFuzzer's -timeout counts whole seconds and sees a hang 1 to 2 s after the
// input began; the byte-level h5 campaigns meet one of libhdf5's own loops on
// a damaged heap every few hundred inputs (`H5HG_read`, `H5C_protect`:
// docs/fuzzing.md), so most of a fork campaign's time went to those waits
// (h5_dataset, session 13: 541 timeouts in 1300 s). FUZZ_H5_SLOW_MS=N in the
// environment (tools/fuzz.sh sets 100 for the h5_* targets) ends an input
// after N ms of the process's CPU time (ITIMER_PROF): a message, then
// abort(), which libFuzzer reports as a crash and keeps the input of
// (crash-*, not timeout-*: replay it to tell a hang from a crash). Unset or
// 0: no limit (the CTest replays, a binary run by hand). Armed as an input's
// file is written, disarmed when the harness returns. The byte-level targets
// only: the structure-aware ones build files HDF5 reads whole.
static int fuzz_h5_slow_ms;

static void fuzz_h5_slow(int sig) {
    (void)sig;
    static const char msg[] = "fuzz_h5: the input used more CPU than FUZZ_H5_SLOW_MS (a loop in libhdf5?)\n";
    if (write(2, msg, sizeof msg - 1) < 0) abort();
    abort();
}

static inline void fuzz_h5_set_timer(int ms) {
    struct itimerval it = {.it_value = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000}};
    setitimer(ITIMER_PROF, &it, NULL);
}

static inline void fuzz_h5_arm(void) {
    if (fuzz_h5_slow_ms > 0) fuzz_h5_set_timer(fuzz_h5_slow_ms);
}

static inline void fuzz_h5_disarm(void) {
    if (fuzz_h5_slow_ms > 0) fuzz_h5_set_timer(0);
}

// ---- the input as the file at path --------------------------------------------
// Its bytes (the byte-level targets fuzz_h5_*), or, built with FUZZ_H5_STRUCT
// (the structure-aware targets fuzz_h5s_*), the file its program builds
// through HDF5's API (fuzz_h5_build.h). Needs fuzz_util.h first.
#ifdef FUZZ_H5_STRUCT
#include "fuzz_h5_build.h"
#define FUZZ_H5_INPUT(path, data, size)                                       \
    do {                                                                      \
        if (fuzz_h5_build(path, data, size)) {                                \
            fprintf(stderr, "%s: HDF5 cannot create the file (%zd ids open, "  \
                    "errno %d); HDF5 says:\n", path,                          \
                    H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), errno);       \
            H5Eprint2(H5E_DEFAULT, stderr);                                   \
            abort();                                                          \
        }                                                                     \
    } while (0)
#else
// FUZZ_H5_KEEP_PREV=1 in the environment: the previous input's file stays
// beside it as <path>.prev, so that a finding that needs the state an earlier
// input left in libhdf5 can be replayed as the pair (tests/fuzz/hdf5-bugs/).
#define FUZZ_H5_INPUT(path, data, size)                                       \
    do {                                                                      \
        if (getenv("FUZZ_H5_KEEP_PREV")) {                                    \
            char prev_[700];                                                  \
            snprintf(prev_, sizeof prev_, "%s.prev", path);                   \
            rename(path, prev_);                                              \
        }                                                                     \
        fuzz_write(path, data, size);                                         \
        fuzz_h5_arm();                                                        \
    } while (0)
#endif

// ---- the library, once per process ------------------------------------------
// HDF5 quiet (sdc reports its errors itself), and its free lists without
// limits: each H5Fopen allocates a metadata cache of more than 512 KiB
// (H5C_create; its hash table alone has 64 Ki slots), which HDF5 hands back
// to the C heap past its default free-list limits; under ASan each such block
// is then a fresh mmap, faulted in and zeroed page by page (half the time of
// an input). Kept on HDF5's own list it is reused: what HDF5 allocates, reads
// and checks is the same. FUZZ_H5_FREE_LIST_LIMITS=1 in the environment keeps
// HDF5's defaults (to measure the difference: 4x exec/s for h5_dataset).
static inline void fuzz_h5_start(void) {
    const char *ms = getenv("FUZZ_H5_SLOW_MS");
    fuzz_h5_slow_ms = ms ? atoi(ms) : 0;
    if (fuzz_h5_slow_ms > 0) {
        struct sigaction sa = {.sa_handler = fuzz_h5_slow};
        sigaction(SIGPROF, &sa, NULL);
    }
    h5_lib_start();
    h5_quiet();
    if (!getenv("FUZZ_H5_FREE_LIST_LIMITS")) H5set_free_list_limits(-1, -1, -1, -1, -1, -1);
}

// ---- no HDF5 id left open -----------------------------------------------------
// Called when a reader has returned (its error path or its close): every file,
// group, dataset, committed datatype and attribute id it opened is closed
// (what H5Fget_obj_count counts: not dataspaces or transient datatypes). A
// leaked id is a finding in sdc: a file id keeps the file open past H5Fclose
// (HDF5's weak close degree), and a trainer or sweep that opens its files
// again and again runs out of descriptors or reads stale metadata.
static inline void fuzz_h5_no_open_ids(void) {
    ssize_t n = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (n != 0) {
        fprintf(stderr, "fuzz_h5: %zd HDF5 ids still open after the reader returned\n", n);
        __builtin_trap();
    }
}

// The end of an input, on each of a harness's returns: no id left open, the
// CPU limit disarmed.
static inline void fuzz_h5_end(void) {
    fuzz_h5_no_open_ids();
    fuzz_h5_disarm();
}

// ---- the sweep of the genout seeds: 3 items of 8x8 -------------------------
#define FUZZ_GEN_N 3
#define FUZZ_GEN_W 8
#define FUZZ_GEN_H 8
#define FUZZ_GEN_HASH "0123456789"
static const GenItem FUZZ_GEN_ITEMS[FUZZ_GEN_N] = {
    {.prompt = "a red cube", .negative_prompt = "", .sampler = "euler", .index = 0, .seed = 42, .steps = 4,
     .cfg = 7.0f, .strength = 1.0f},
    {.prompt = "a red cube", .negative_prompt = "", .sampler = "euler", .index = 1, .seed = 43, .steps = 4,
     .cfg = 7.0f, .strength = 1.0f},
    {.prompt = "caf\xc3\xa9 \xe2\x98\x95", .negative_prompt = "blurry", .sampler = "dpm++2m", .index = 2,
     .seed = -1, .steps = 20, .cfg = 1.5f, .strength = 0.5f},
};

// ---- the training state of the DreamBooth checkpoint seeds ------------------
// One LoRA of rank 2 on a width-4 linear: down (2, 4), up (4, 2), its AdamW
// moments, 4 RNG words, a data order of 3 items.
typedef struct FuzzTrainer {
    float down[8], up[8], g_down[8], g_up[8];
    TrainCkptTensor t[2];
    TrainCkptComponent comp;
    TrainCkptKey job[3];
    OptimTensor ot[2];
    AdamW opt;
    uint64_t rng[4];
    int64_t order[3];
    TrainCkptSpec spec;
    TrainCkptState st;
} FuzzTrainer;

// be: a CPU backend (backend_cpu_create). Returns 0 or an SdcError code.
static inline int fuzz_trainer_init(FuzzTrainer *f, const Backend *be, SdcError *err) {
    memset(f, 0, sizeof *f);
    for (int i = 0; i < 8; i++) f->down[i] = 0.125f * (float)(i - 4), f->up[i] = 0.0625f * (float)i;
    f->t[0] = (TrainCkptTensor){.name = "mid_block.attentions.0.proj_in.lora.down.weight", .data = f->down,
                                .ndim = 2, .shape = {2, 4}};
    f->t[1] = (TrainCkptTensor){.name = "mid_block.attentions.0.proj_in.lora.up.weight", .data = f->up, .ndim = 2,
                                .shape = {4, 2}};
    f->comp = (TrainCkptComponent){.group = "unet_lora", .tensors = f->t, .n_tensors = 2, .opt_group = 0};
    f->job[0] = (TrainCkptKey){"model", "tests/fixtures/tiny-sd1", NULL};
    f->job[1] = (TrainCkptKey){"lora_rank", "2", NULL};
    f->job[2] = (TrainCkptKey){"lora_alpha", "1", NULL}; // what train_ckpt_export_lora scales by
    f->ot[0] = (OptimTensor){f->down, f->g_down, 8};
    f->ot[1] = (OptimTensor){f->up, f->g_up, 8};
    AdamWGroupDesc gd = {.tensors = f->ot, .n_tensors = 2, .lr_scale = 1.0};
    AdamWConfig cfg = adamw_config_default();
    int rc = adamw_init(&f->opt, be, &cfg, &gd, 1, err);
    if (rc) return rc;
    f->spec = (TrainCkptSpec){.comps = &f->comp, .n_comps = 1, .opt = &f->opt, .job = f->job, .n_job = 3,
                              .manifest = "task: TASK_DREAMBOOTH\nmodel { path: \"tests/fixtures/tiny-sd1\" }\n"};
    f->st = (TrainCkptState){.rng = f->rng, .n_rng = 4, .data_order = f->order, .n_order = 3};
    return 0;
}

#endif
