// checkpoint.h: the sdc checkpoint file (sdc_kind "checkpoint", layout in
// data/README.md): model parameters under their diffusers names, one dataset
// each in a group per component (/unet, /vae, /text_encoder, SDXL's /text_encoder_2; /extra for
// original-layout tensors with no diffusers name), optimizer moments under
// /optimizer, training state as attributes of /state, configs and the job
// manifest as string attributes, a CRC32 per tensor checked on load.
//
// Crash safety: a checkpoint is written to path.tmp, flushed, fsync'd, closed
// and renamed over path; /state's `step` attribute is written last, and a
// file without it is refused as incomplete. A killed writer leaves the
// previous checkpoint at path untouched.
#ifndef SDC_CHECKPOINT_H
#define SDC_CHECKPOINT_H

#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"
#include "data/h5util.h"

#define CKPT_GROUP_MAX 128
#define CKPT_NAME_MAX 256

typedef struct CkptState {
    int64_t step;
    uint64_t rng[4];            // the trainer's generator state
    const int64_t *data_order;  // (n_order,) sample order of the current epoch; may be NULL
    int64_t n_order;
} CkptState;

typedef struct CkptWriter {
    char path[1024], tmp[1040];
    hid_t file;
    int64_t n_tensors, bytes;
} CkptWriter;

// Starts path.tmp (replacing a stale one).
int ckpt_begin(CkptWriter *w, const char *path, SdcError *err);
// One parameter: group "unet" / "vae" / "text_encoder" / "extra", or a
// nested group such as "optimizer/exp_avg/unet"; name as diffusers names it
// ("down_blocks.0.resnets.0.conv1.weight": dots stay in the dataset name).
// F32 / F16 / BF16 / I32 / I64 / U8 CPU tensors, stored as they are.
int ckpt_put(CkptWriter *w, const char *group, const char *name, const Tensor *t, SdcError *err);
// A string attribute on a group ("" or "/" = the root), e.g. the configs.
int ckpt_set_attr(CkptWriter *w, const char *group, const char *key, const char *value, SdcError *err);
// Writes /state (step last), flushes, fsyncs, closes and renames to path.
int ckpt_commit(CkptWriter *w, const CkptState *st, SdcError *err);
// Drops path.tmp.
void ckpt_abort(CkptWriter *w);
// Pipeline stages write one file in turn: ckpt_pause flushes and closes
// path.tmp, keeping it; ckpt_resume opens the path.tmp another writer paused
// (by another process) to go on writing into it.
int ckpt_pause(CkptWriter *w, SdcError *err);
int ckpt_resume(CkptWriter *w, const char *path, SdcError *err);

// ----------------------------------------------------------------------------
// reading

typedef struct CkptTensor {
    char group[CKPT_GROUP_MAX];
    char name[CKPT_NAME_MAX];
    DType dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    size_t nbytes;
    uint32_t crc32;
} CkptTensor;

typedef struct Ckpt {
    char path[1024];
    hid_t file;
    CkptTensor *t; // parameters of /text_encoder, /unet, /vae, /extra, /text_encoder_2 (SDXL) (in that order, names sorted)
    int n;
    int64_t step;
    uint64_t rng[4];
    int64_t *data_order, n_order;
} Ckpt;

// Opens and validates (kind, version, complete /state, every tensor's dtype
// and crc32 attribute present). Tensors are read on demand.
int ckpt_open(Ckpt *c, const char *path, SdcError *err);
// Raw bytes of tensor i into buf (t[i].nbytes); verify: check the CRC32.
int ckpt_read(const Ckpt *c, int i, void *buf, int verify, SdcError *err);
// A string attribute of a group ("" = root); *out malloc'd.
int ckpt_get_attr(const Ckpt *c, const char *group, const char *key, char **out, SdcError *err);
int ckpt_find(const Ckpt *c, const char *group, const char *name); // index or -1
// Adds the tensors of another group (a nested path such as "unet_lora" or
// "optimizer/exp_avg/unet") to c->t with ckpt_open's checks; a group the file
// does not have adds nothing. Indices of the tensors already listed stay.
int ckpt_list_group(Ckpt *c, const char *group, SdcError *err);
void ckpt_close(Ckpt *c);

// CRC32 (zlib's polynomial) of n bytes.
uint32_t ckpt_crc32(const void *p, size_t n);

#endif
