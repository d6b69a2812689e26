// convert.h: `sdc convert`: a model from any layout sdc reads (original
// single-file .safetensors, diffusers folder, sdc checkpoint .h5) to any of:
//   OUT.h5           sdc checkpoint (diffusers names; data/README.md)
//   OUT.safetensors  single file with the ORIGINAL (CompVis/Stability) names,
//                    as A1111 / ComfyUI load it
//   OUT/             diffusers folder that StableDiffusionPipeline.from_pretrained
//                    opens as it is: config.json files written from the model's
//                    architecture, model_index.json, the scheduler config sdc
//                    samples the model with (the source's file, else SD's
//                    original one), and tokenizer/ (the source's, else the
//                    shipped CLIP vocab with SD 1.x's or 2.x's special tokens:
//                    the tokenizer sdc uses for the model)
// optionally casting float tensors to f32 / f16 / bf16. Tensors are copied
// byte for byte when no cast is asked, so round trips are bit-exact.
// SDXL (base, and its 9-channel inpainting UNet) converts the same way with
// its second text encoder: conditioner.embedders.0/1 in a single file,
// /text_encoder_2 in a checkpoint, text_encoder_2/ and tokenizer_2/ in a
// folder whose model_index.json names StableDiffusionXL(Inpaint)Pipeline.
#ifndef SDC_CONVERT_H
#define SDC_CONVERT_H

#include "core/error.h"
#include "core/tensor.h"

typedef struct ConvertOpts {
    const char *model;    // source: .safetensors, diffusers folder or .h5 checkpoint
    const char *config;   // diffusers folder with the architecture of a single file (optional)
    const char *output;   // .h5, .safetensors, or a folder
    int dtype;            // -1: keep; else DT_F32 / DT_F16 / DT_BF16
    const char *manifest; // the job manifest (text format) stored in a checkpoint; may be NULL
    int quiet;
    // A diffusers folder whose tokenizer/ (and SDXL's tokenizer_2/) the
    // output takes when it has them (the export of a training run names the
    // model it was trained from); NULL or without them: the source's own (a
    // folder's, a single file's config folder's, an .h5's /tokenizer), else
    // the shipped vocab.
    const char *tokenizer_from;
    // A training checkpoint (checkpoint-N.h5 of a full fine-tuning run)
    // holds the trained weights only, without configs or frozen parts: the
    // model is then `base` (any layout; base_config: the config folder of a
    // single file) with the checkpoint's weights in place (the UNet's EMA
    // weights when it has them). NULL for any other source.
    const char *base, *base_config;
} ConvertOpts;

int convert_run(const ConvertOpts *o, SdcError *err);

// Whether the .h5 at path is a training checkpoint holding trained weights
// only (convert it with ConvertOpts.base): then *manifest (malloc'd) is the
// text manifest of the job that wrote it, whose model is the base; NULL for
// a complete model checkpoint. Returns 0, or an error (err set) for a file
// that is neither (not an sdc checkpoint, damaged).
int convert_train_ckpt(const char *path, char **manifest, SdcError *err);

// Copies src_dir/SUB/ (a diffusers folder's tokenizer/ or tokenizer_2/: the
// files transformers reads, those present) into out/SUB/, made if needed.
int convert_copy_tokenizer(const char *src_dir, const char *sub, const char *out, SdcError *err);

#endif
