// dreambooth.h: the DreamBooth trainer, with the objective diffusers'
// examples/dreambooth/train_dreambooth.py defines (and its LoRA variant).
//
// One optimizer step (global_step k):
//   for each of grad_accum batches (b items of the shuffled dataset):
//       samples = the b instance latents [+ the b class latents (prior preservation)]
//       per sample j: noise ~ N(0, 1) (+ offset_noise * N(0, 1) per channel),
//                     t ~ U{0..999}, noisy = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise
//       pred = unet(noisy, t, text_encoder(prompt_j))
//       target = noise (epsilon) or sqrt(ab_t) noise - sqrt(1 - ab_t) x0 (v_prediction)
//       loss = mean_inst(w_j * mse_j) + prior_loss_weight * mean_class(w_j * mse_j)
//              with w_j = 1, or the min-SNR weight min(snr_t, gamma) / snr_t
//              (+ 1 for v_prediction) of each half's own timesteps (diffusers
//              pairs the weights of all 2b timesteps with the b instance
//              predictions; sdc does not)
//       backward of loss / grad_accum (accelerate), gradients add up
//   all-reduce the gradients (data parallel), clip to max_grad_norm, AdamW
//   with the scheduled lr, zero the gradients.
// Each sample's noise and timestep come from its own generator seeded from
// (seed, epoch, batch in epoch, index in the global batch), and the epoch's
// order from (seed, epoch): a run gives the same result on any number of
// ranks, and a resumed run continues the same sequence.
//
// Text-to-image (`sdc train text-to-image`, diffusers' train_text_to_image.py)
// is the same step on a dataset: every item has its own caption (DbData's
// item_ids, encoded per batch), no class half, and the script's options:
// latents sampled from the VAE's distribution each step, random flips,
// input perturbation, empty captions with a probability, min-SNR with its
// v-prediction rule, and an EMA of the UNet (train/ema.h) updated after
// every optimizer step. DreamBooth with --use-captions (kohya's captioned
// DreamBooth) takes item_ids for the instance images and class_item_ids for
// the class half.
//
// Layout: world = stages x replicas. Each replica (a pipeline of `stages`
// ranks, each holding a contiguous slice of the UNet's blocks) takes a
// contiguous share of every batch and runs it as micro-batches (GPipe or
// 1F1B through mpi/pp_train.h; one rank runs them in order itself). The text
// encoder lives on stage 0: it encodes the share's prompts once, stage 0
// sends each micro-batch's context along, the gradients of the context come
// back and its backward runs once. The loss is the last stage's. The
// gradients of a stage are averaged over its replicas; clipping uses the
// norm of every stage's tensors in one order, so any layout computes what
// one process does with the same micro-batches (bit for bit: the stages'
// arithmetic is the one process's), up to the replicas' reduction order.
//
// The trainer knows nothing of files, MPI or HDF5: the job runner gives it
// the latents, the collective operations, the pipeline and the checkpoint
// writer as hooks. Every tensor it computes on lives on the models' backend.
#ifndef SDC_DREAMBOOTH_H
#define SDC_DREAMBOOTH_H

#include <stdint.h>
#include <stdio.h>

#include "core/backend.h"
#include "core/error.h"
#include "models/clip.h"
#include "models/unet.h"
#include "pipeline/sd.h"
#include "train/ema.h"
#include "train/lr_schedule.h"
#include "train/optim.h"

typedef struct DbConfig {
    int train_batch_size;       // b: instance items per micro-batch (global, over all ranks)
    int grad_accum;             // gradient_accumulation_steps
    int64_t max_train_steps;    // optimizer steps
    double learning_rate;       // 5e-6
    LrScheduleKind lr_scheduler;
    int64_t lr_warmup_steps;
    int lr_num_cycles;          // cosine_with_restarts (1)
    double lr_power;            // polynomial (1.0)
    double max_grad_norm;       // 1.0
    AdamWConfig adam;
    int with_prior_preservation;
    double prior_loss_weight;   // 1.0
    int train_text_encoder;     // SD: the text encoder; SDXL: both (LoRA or every weight)
    // The text encoders' param groups (torch's per-group "lr", "weight_decay";
    // train_dreambooth_lora_sdxl.py's --text_encoder_lr and
    // --adam_weight_decay_text_encoder): their lr follows the same schedule
    // from text_encoder_lr instead of learning_rate (0: learning_rate), their
    // decoupled weight decay is te_weight_decay when has_te_weight_decay
    // (else adam.weight_decay).
    double text_encoder_lr;
    int has_te_weight_decay;
    double te_weight_decay;
    int gradient_checkpointing;
    int lora_rank;              // 0: full fine-tuning
    float lora_alpha;           // 0: = rank
    float offset_noise;         // 0: off (diffusers' --offset_noise adds 0.1)
    float snr_gamma;            // 0: off (min-SNR weighting, 5.0 recommended)
    uint64_t seed;
    int micro_batches;          // each replica's share of a batch runs as this many micro-batches (0: 1)
    // text-to-image (diffusers' examples/text_to_image/train_text_to_image.py)
    float input_perturbation;   // 0: off; noisy latents from noise + p * randn, the target stays noise
    float proportion_empty;     // a caption is replaced by "" with this probability (SDXL script's flag)
    int snr_v_plus_one;         // min-SNR for v-prediction as train_text_to_image.py: min(snr+1, g) / (snr+1)
                                // (0: the DreamBooth scripts' min(snr, g) / snr + 1)
    int use_ema;                // keep an EMA of the trained UNet tensors (EMAModel); t->ema
    EmaConfig ema;
    // Test hook (SDC_FAULT_STEP=N, jobs/train_runner.c): this rank's step N
    // fails as out of memory after its forwards and backwards, before the
    // gradients are reduced (0: never), as a device running out would.
    int64_t fault_step;
} DbConfig;

// What the runner gives: latents already multiplied by the VAE's scaling
// factor, and token ids of the two prompts.
typedef struct DbData {
    int n_inst, n_class;
    const float *inst_latents;  // (n_inst, 4, h, w)
    const float *class_latents; // (n_class, 4, h, w), or NULL without prior preservation
    int lat_h, lat_w;
    const char *instance_prompt; // "a photo of sks dog"
    const char *class_prompt;    // "a photo of dog" (prior preservation)
    // SDXL: each instance image's six time ids (original height, width, crop
    // top, left, target height, width), (n_inst, 6). A class sample takes the
    // ids of the instance it is paired with in the batch, as diffusers'
    // train_dreambooth_lora_sdxl.py's collate_fn does.
    const float *inst_time_ids;
    // Text-to-image: each item's own caption as token ids, (n_inst, L) (the
    // text encoder's max_positions); NULL: instance_prompt for every item.
    const int32_t *item_ids;
    // DreamBooth --use-captions with prior preservation: each class image's
    // caption as token ids, (n_class, L); NULL: class_prompt for every one.
    const int32_t *class_item_ids;
    // The latent distribution's std x scaling factor, (n_inst, 4, h, w): each
    // sample is then inst_latents + std * randn (diffusers' latent_dist.sample()
    // every step); NULL: inst_latents as they are (cached means).
    const float *inst_std;
    // --random_flip: the latents (and std) of each image mirrored left-right,
    // (n_inst, 4, h, w), taken for a sample with probability 1/2; NULL: off.
    const float *flip_latents, *flip_std;
    // In place of inst_latents / inst_std / flip_latents / flip_std (then
    // NULL): a reader of one instance item's rows, the latent distribution's
    // mean and std x scaling factor (4 * h * w floats each; flip: its mirror
    // image's, when has_flip), called as each batch is prepared, so memory
    // does not grow with the dataset (sdc train text-to-image
    // --cache-latents-to-disk reads them from the cache file). The same rows
    // train the same bits as the arrays would.
    int (*read_latents)(void *user, int64_t item, int flip, float *mean, float *std, SdcError *err);
    void *read_user;
    int has_flip;
} DbData;

// The trainer's state that a checkpoint stores and a resume restores.
typedef struct DbState {
    int64_t global_step;  // optimizer steps done
    int64_t epoch;        // current epoch
    int64_t batch_in_epoch; // next micro-batch of the epoch
    double last_loss;
} DbState;

typedef struct DbStepInfo {
    int64_t step;     // optimizer steps done (1 after the first)
    int64_t max_steps;
    double loss;      // mean over the step's micro-batches (all ranks)
    double loss_prior;// its prior part (0 without prior preservation)
    double lr;
    double grad_norm; // before clipping
    double items_per_s;
    double seconds;   // this step
} DbStepInfo;

struct DbTrainer;

// The rank grid and its collectives (mpi/grid.h makes them), so the trainer
// knows no MPI. World = stages x replicas: the ranks of one replica form a
// pipeline (stage 0 .. stages-1), the ranks of one stage across replicas
// its data-parallel group.
typedef struct DbHooks {
    void *user;
    int rank, world;         // in the whole job: rank 0 writes checkpoints, metrics and images
    int replica, replicas;   // this rank's pipeline among the data-parallel replicas (0, 1 alone)
    int stage, stages;       // this rank's pipeline stage (0, 1 without stages)
    // In-place mean of n floats over the replicas of this stage (NULL with one replica).
    int (*allreduce_mean)(void *user, float *buf, size_t n, SdcError *err);
    // In-place sum of n doubles over the replicas of this stage (NULL with one replica).
    int (*dp_sum)(void *user, double *v, int n, SdcError *err);
    // In-place sum of n doubles over every rank (NULL with one rank).
    int (*allreduce_sum)(void *user, double *v, int n, SdcError *err);
    // Stages: every stage's n doubles, concatenated in stage order, to every
    // stage of this pipeline (*n_all of them, at most cap); and n doubles
    // from stage `root` to the others. NULL without stages.
    int (*stage_allgather)(void *user, const double *mine, int n, double *all, int cap, int *n_all, SdcError *err);
    int (*stage_bcast)(void *user, double *v, int n, int root, SdcError *err);
    // Stages: runs the UNet over the stages for a batch's share of `rows`
    // rows (mpi/pp_train.h: GPipe or 1F1B over micro-batches), calling back
    // db_stage_inputs on stage 0, db_stage_loss on the last stage and
    // db_stage_dctx on stage 0. NULL: this rank holds every block and runs
    // the micro-batches itself.
    int (*pipeline)(void *user, struct DbTrainer *t, int rows, SdcError *err);
    int tapes; // micro-batches whose activations the pipeline holds at once on this stage (0: 1)
    // Overlap (replicas > 1 without ZeRO-1; NULL: the all-reduce after the
    // backward): the UNet's gradient mean runs during the step's last
    // backward (mpi/dp.h dp_overlap_*): begin on the flat buffer before it,
    // ready(lo) as blocks finish (elements [lo, n) final), end after it.
    int (*overlap_begin)(void *user, float *buf, size_t n, SdcError *err);
    int (*overlap_ready)(void *user, size_t lo, SdcError *err);
    int (*overlap_end)(void *user, SdcError *err);
    // After every optimizer step; nonzero return stops training with that error.
    int (*on_step)(void *user, const DbStepInfo *s, SdcError *err);
    // ZeRO-1 (zero != 0 with replicas > 1): every replica keeps the AdamW
    // moments of one contiguous slice of this stage's parameters, gradients
    // are reduce-scattered instead of all-reduced and the updated slices
    // all-gathered, over the replicas of this stage (mpi/dp.h:
    // dp_hook_reduce_scatter_mean, dp_hook_allgather, dp_hook_gather).
    int zero;
    int (*reduce_scatter_mean)(void *user, float *buf, const int *counts, const int *displs, SdcError *err);
    int (*allgather)(void *user, float *buf, const int *counts, const int *displs, SdcError *err);
    int (*gather)(void *user, const float *mine, float *all, const int *counts, const int *displs, SdcError *err);
    // More than one rank (NULL with one): this rank's step failed (err) where
    // the others cannot learn of it: they wait on it in a pipeline receive or
    // in one of the step's collectives, so no agreement reaches them. Ends
    // the job, err named; does not return. (The failures every rank sees
    // alike, a non-finite loss or gradient norm and a stop on a signal, are
    // returned as usual.)
    void (*failed_alone)(void *user, const SdcError *err);
} DbHooks;

// The optimizer's param groups: 0 the UNet, 1 the text encoder, 2 SDXL's
// text_encoder_2 (groups 1 and 2 with --train-text-encoder, on stage 0).
#define DB_MAX_GROUPS 3

// ZeRO-1 bookkeeping of one parameter group (the UNet's, a text encoder's).
typedef struct DbShard {
    int *counts, *displs;      // (world) each rank's block of the flat parameter / gradient buffer
    int *mv_counts, *mv_displs; // (world) each rank's slice of the group's moments, tensors concatenated
    int *piece_tensor;         // (pieces) which table tensor each of this rank's optimizer pieces is part of
    int n_tensors;             // tensors in the group's table
} DbShard;

typedef struct DbTrainer {
    DbConfig cfg;
    DbData data;
    DbHooks hooks;
    SdModel *model;        // tokenizer, clip, unet (trainable), vae
    const Backend *be;     // the models' backend: every step buffer lives there
    DbState st;
    int updating;          // 1 from a step's update until its count: a failure then leaves no state to save
    AdamW opt;                 // with ZeRO-1: this rank's slice of every group
    int n_groups;              // 1, or with the text encoders trained here 2 (SD) / 3 (SDXL)
    OptimTensor *full_ot[DB_MAX_GROUPS]; // every tensor of each group, as without ZeRO (checkpoints)
    int full_n[DB_MAX_GROUPS];
    DbShard shard[DB_MAX_GROUPS];
    LrSchedule sched;
    int n_items;           // dataset length: max(n_inst, n_class) with prior, else n_inst
    int64_t batches_per_epoch;
    int64_t updates_per_epoch;
    int64_t *order;        // (n_items) this epoch's order
    int64_t order_epoch;   // epoch the order was drawn for (-1: none)
    int share_max;         // most samples a replica handles in one batch
    int n_train;           // the model's num_train_timesteps
    float ac[SCHED_MAX_TRAIN_STEPS]; // (n_train) its alphas_cumprod
    PredictionType prediction;
    int train_te;          // this rank trains the text encoder (stage 0 of --train-text-encoder)
    int per_item;          // prompts differ per sample (captions, empty prompts): a frozen encoder runs per batch
    int px_per_latent;     // the VAE's downsampling (8 for SD's 4 levels): validation image sizes
    // the batch in progress (this replica's share): host staging, prepared on every stage
    int rows, first_row;   // its rows, and the first one's index in the global batch
    int64_t batch;         // its index in the epoch
    int b_inst;            // the global batch's instance count (rows >= b_inst are class samples)
    double loss[2];        // this rank's loss terms (instance, prior), the last stage's
    float *x0, *noise, *h_noisy, *h_target; // (share_max, 4, h, w)
    float *timesteps, *k;  // (share_max): timesteps; 2 coef_j (x replicas): the loss gradient's factor
    float *coef;           // (share_max) each sample's loss weight
    float *rd_std;         // (4, h, w) one row's std, read by DbData.read_latents (allocated on first use)
    double *sq;            // (share_max) each sample's sum of squared errors
    int32_t *ids;          // (share_max, L)
    // device buffers (one arena on be)
    Arena dev;
    Tensor noisy, target;  // (share_max, 4, h, w)
    Tensor ctx, dctx;      // (share_max, L, D) the UNet's context and its gradient (text-encoder training)
    Tensor ctx_fixed;      // (2, L, D) instance / class embeddings (frozen text encoder)
    int32_t inst_ids[1024], class_ids[1024]; // (L) the two prompts' tokens
    int32_t empty_ids[1024]; // (L) the empty caption's tokens (proportion_empty)
    float *ema;            // (the UNet's flat trainable buffer) the EMA shadow (use_ema), or NULL
    // SDXL (xl): the context is [text_encoder hidden, text_encoder_2 hidden]
    // (D = D1 + D2) and the UNet's added conditioning text_encoder_2's pooled
    // embedding and each sample's six time ids
    int xl;
    int32_t inst_ids2[1024], class_ids2[1024]; // (L) the prompts through tokenizer_2
    int32_t *ids2;         // (share_max, L) host: each sample's tokenizer_2 ids (text-encoder training)
    float *time_ids;       // (share_max, 6) host
    Tensor pooled;         // (share_max, P) on the device
    Tensor pooled_fixed;   // (2, P) instance / class (frozen text encoders)
    Tensor h1_fixed, h2_fixed; // (2, L, D1), (2, L, D2) each encoder's part of ctx_fixed
    // SDXL text-encoder training: each encoder's hidden states of the batch
    // and the gradients back into them (dctx split; dpooled from the UNet's
    // added embedding)
    Tensor h1, h2, dh1, dh2; // (share_max, L, D1), (share_max, L, D2)
    Tensor dpooled;        // (share_max, P)
    // overlap of this step's UNet gradient all-reduce with its last backward
    int final_batch;       // the batch in progress ends the optimizer step
    int ov_armed;          // dp_overlap_begin done for this step
    int ov_rc;             // a failure inside the backward's hook, reported after it
    SdcError ov_err;
} DbTrainer;

// The seed of sample `index` (0-based in the global batch: instances, then
// class samples) of micro-batch `batch` of `epoch`: its noise (randn of the
// latent's size), offset noise (randn(4) when on) and timestep
// (int(rand() * N), N the scheduler config's num_train_timesteps) are drawn in that order from one generator seeded
// with it (tools/make_db_fixture.py replays it); then, each only when on,
// the input perturbation (randn of the latent's size), the flip (rand() <
// 0.5), the latent sample's noise (randn of the latent's size) and the empty
// caption (rand() < proportion_empty) (tools/make_t2i_fixture.py).
uint64_t db_sample_seed(uint64_t seed, int64_t epoch, int64_t batch, int64_t index);

// Loads nothing: model must hold a UNet loaded trainable (full) or frozen
// (LoRA) and a text encoder loaded trainable when cfg.train_text_encoder
// (full). Plans every buffer, the optimizer and the schedule.
int db_init(DbTrainer *t, SdModel *model, const DbConfig *cfg, const DbData *data, const DbHooks *hooks,
            SdcError *err);
void db_free(DbTrainer *t);
// The pipeline's calls back into the trainer (DbHooks.pipeline), for rows
// [r0, r0 + n) of the batch in progress:
// stage 0: fills the cut entering block 0 (in->x the noisy latents, in->ctx
// the context) and points *timesteps at the rows' timesteps.
int db_stage_inputs(DbTrainer *t, int r0, int n, UnetCut *in, const float **timesteps, SdcError *err);
// last stage: out the UNet's output; writes d loss / d out into dout (out's
// shape; may be out) and adds the rows' loss terms.
int db_stage_loss(DbTrainer *t, int r0, int n, const Tensor *out, Tensor *dout, SdcError *err);
// stage 0 with text-encoder training: d loss / d the rows' context, and
// (SDXL) dtext d loss / d the rows' pooled text embedding (the UNet's
// UnetCut.text at block 0; NULL or ndim 0 elsewhere).
int db_stage_dctx(DbTrainer *t, int r0, int n, const Tensor *dctx, const Tensor *dtext, SdcError *err);
// Before the step's last backward of the UNet (the last micro-batch of its
// last batch): starts the overlapped gradient all-reduce when the hooks
// have one (a no-op otherwise, and when already started).
int db_overlap_arm(DbTrainer *t, SdcError *err);
// The micro-batches of a replica's share of `rows` rows: micro-batch j is
// rows [start, start + count); M = min(micro_batches, rows).
int db_micro_count(const DbTrainer *t, int rows);
void db_micro_rows(int rows, int M, int j, int *start, int *count);

// Runs optimizer steps until global_step == until (<= max_train_steps).
// A loss or gradient norm that is not finite stops with SDC_ERR_NONFINITE
// naming the step; the parameters are then those of the last good step.
// Any other failure before a step's update (out of memory, a device error)
// also leaves the state of the last complete step (t->updating == 0), which
// a checkpoint can still save; one during the update sets t->updating.
int db_train(DbTrainer *t, int64_t until, SdcError *err);

// The AdamW state and the trainable tensors, for checkpoints: the UNet's
// trainables are group 0, the text encoder's group 1 and SDXL's
// text_encoder_2's group 2 (when trained).
// Renders validation images with the current weights (LoRA merged for the
// duration; with use_ema the EMA weights): n images of `prompt`, seeds
// seed..seed+n-1, into images (n, 3, H, W) in [-1, 1].
int db_validate(DbTrainer *t, const char *prompt, int n, int steps, float cfg_scale, uint64_t seed,
                float *images, SdcError *err);

// The whole AdamW state as without ZeRO-1 (what a checkpoint holds): with
// ZeRO-1 collective, gathered on rank 0 into *full (its own m / v; other
// ranks get an empty one); without, *full is a copy of t->opt's description
// sharing its m / v. Free with db_opt_full_free.
int db_opt_full(DbTrainer *t, AdamW *full, SdcError *err);
// An empty full-size AdamW (m / v allocated, zero) to load a checkpoint
// into, then db_opt_take: this rank's slice of it into t->opt (ZeRO-1), or
// nothing to do (t->opt itself was loaded).
int db_opt_full_alloc(DbTrainer *t, AdamW *full, SdcError *err);
void db_opt_take(DbTrainer *t, const AdamW *full);
void db_opt_full_free(DbTrainer *t, AdamW *full);

// use_ema: the EMA shadow as a table of the UNet train table's names and
// shapes, its tensors views into t->ema (checkpoints; free with
// param_table_free, which leaves the shadow alone).
int db_ema_table(const DbTrainer *t, ParamTable *out, SdcError *err);
// use_ema: exchanges the trained UNet tensors with the EMA shadow (twice: back).
void db_ema_swap(DbTrainer *t);

#endif
