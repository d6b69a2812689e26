// lora.h: LoRA files as users have them (diffusers / PEFT and kohya sd-scripts
// / A1111 .safetensors), resolved against a model, merged into its weights at
// load, and written back in either format.
//
// A LoRA adds to a base weight W (out, in) or (out, in, kh, kw) the low-rank
// update  W' = W + weight * scale * up @ down,  down (rank, in[, kh, kw]),
// up (out, rank[, 1, 1]), scale = alpha / rank (alpha absent: rank, i.e.
// scale 1; rsLoRA: alpha / sqrt(rank)). `weight` is the user's multiplier
// (--lora FILE:0.7). The merge runs in f32 at load, inside the parameter
// loader (models/params.h), so a LoRA'd model runs at the speed of the base.
//
// Names. diffusers / PEFT: `unet.<module>.lora.down.weight` / `.lora.up.weight`
// (also `.lora_A.weight` / `.lora_B.weight`, `.lora_linear_layer.down/up`,
// the old `...attn1.processor.to_q_lora.down.weight`), `text_encoder.<module>`
// for the text encoder, alpha from the `lora_adapter_metadata` JSON of the
// header (`unet.lora_alpha`, `unet.alpha_pattern`, `unet.use_rslora`) or a
// `<module>.alpha` tensor. kohya: `lora_unet_<module with . as _>.lora_down.weight`,
// `.lora_up.weight`, `.alpha` (scalar); `lora_te_<...>` (text encoder, the
// module path from `text_model.`). The underscore names are resolved against
// the modules the model actually has (diffusers names, and the original
// `input_blocks_1_1_...` names, via namemap.c), so splitting is never guessed.
// Targets: every Linear / conv of the UNet's transformers (proj_in, proj_out,
// attn1/attn2 to_q to_k to_v to_out.0, ff.net.0.proj, ff.net.2) and resnets
// (conv1, conv2, conv_shortcut, time_emb_proj, up/downsamplers: LoCon), and
// the text encoder's attention (q/k/v/out_proj) and MLP (fc1, fc2).
//
// SDXL: kohya's lora_te1_ / lora_te2_ and diffusers' text_encoder_2. name
// the second text encoder (COMP_TEXT_ENCODER_2); kohya's SDXL UNet names are
// the original layout's (lora_unet_input_blocks_4_1_...), resolved as above.
// Not handled (a clear error): LyCORIS LoHa / LoKr / Tucker (lora_mid), DoRA,
// LoRA biases; a second-text-encoder LoRA on a model without one.
#ifndef SDC_LORA_H
#define SDC_LORA_H

#include <stddef.h>

#include "core/error.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/params.h"

typedef enum { LORA_FORMAT_DIFFUSERS = 0, LORA_FORMAT_KOHYA = 1 } LoraFormat;

#define LORA_NAME_MAX 192

// One low-rank update of one base weight, as read from a file.
typedef struct LoraEntry {
    Component comp;              // COMP_UNET, COMP_TEXT_ENCODER or COMP_TEXT_ENCODER_2
    char target[LORA_NAME_MAX];  // diffusers name of the base weight, e.g.
                                 // "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    char key[LORA_NAME_MAX];     // its name in the file, for messages ("lora_unet_..._to_q")
    Tensor down;                 // (rank, in) or (rank, in, kh, kw): a view into the file (F32/F16/BF16)
    Tensor up;                   // (out, rank) or (out, rank, 1, 1)
    int rank;
    float alpha;                 // as stored (or rank when absent)
    float scale;                 // alpha / rank (alpha / sqrt(rank) for rsLoRA)
} LoraEntry;

typedef struct LoraFile {
    char path[1024];
    float weight;                // the user's multiplier
    LoraFormat format;           // of its first LoRA tensor
    StFile st;
    LoraEntry *e;                // sorted by (comp, target)
    int n;
} LoraFile;

// The LoRAs a model is loaded with (ModelLoadOpts.lora).
typedef struct LoraSet {
    LoraFile *files;
    int n;
} LoraSet;

// One --lora argument: "path" or "path:weight" (weight default 1.0; a
// suffix after the last ':' that is not a number belongs to the path).
typedef struct LoraSpec {
    char path[1024];
    float weight;
} LoraSpec;

int lora_spec_parse(const char *arg, LoraSpec *out, SdcError *err);

// Reads a LoRA file and resolves every tensor against the model's files:
// errors for a key that is not a LoRA tensor, down/up ranks that disagree, a
// down without its up, and a target the model does not have. Shapes against
// the base weights are checked when the model loads (lora_merge).
int lora_open(LoraFile *f, const char *path, float weight, const ModelFiles *mf, SdcError *err);
void lora_close(LoraFile *f);
// The entry of f that updates base weight `name` of component c, or NULL.
const LoraEntry *lora_find(const LoraFile *f, Component c, const char *name);

int lora_set_open(LoraSet *s, const LoraSpec *specs, int n, const ModelFiles *mf, SdcError *err);
void lora_set_free(LoraSet *s);
// 1 if some LoRA of s updates base weight `name` of component c.
int lora_set_targets(const LoraSet *s, Component c, const char *name);
// Checks every update of base weight `name` (shape `shape`, ndim dims)
// against it: the error names the LoRA tensor and both shapes. With w
// non-NULL (the base weight as f32, numel(shape) values) it also adds
// weight * scale * up @ down into w. Updates of weight 0 are checked, never added.
int lora_merge(const LoraSet *s, Component c, const char *name, int ndim, const int64_t *shape, float *w,
               SdcError *err);

// ----------------------------------------------------------------------------
// writing

// A trained LoRA of one module, as the trainer holds it.
typedef struct LoraTensor {
    Component comp;      // COMP_UNET, COMP_TEXT_ENCODER or COMP_TEXT_ENCODER_2 (SDXL)
    const char *module;  // diffusers module name (".weight" optional): "down_blocks.0.attentions.0.
                         // transformer_blocks.0.attn1.to_q", "text_model.encoder.layers.0.self_attn.q_proj"
    Tensor down;         // CPU F32/F16/BF16 (rank, in), or (rank, in, 1, 1) for a 1x1 conv
    Tensor up;           // CPU (out, rank), or (out, rank, 1, 1)
    float alpha;         // scale = alpha / rank; alpha == rank: no scaling
} LoraTensor;

// Writes a LoRA file readable by diffusers' load_lora_weights (diffusers
// format: unet.<module>.lora.down/up.weight, text_encoder[_2].<module>.
// lora_linear_layer.down/up.weight, no alpha when alpha == rank, else the
// `lora_adapter_metadata` header entry diffusers reads: r, lora_alpha,
// rank/alpha patterns, target_modules) or by kohya / A1111 / ComfyUI (kohya
// format: lora_unet_... / lora_te_... (with a second encoder, SDXL:
// lora_te1_... / lora_te2_...), lora_down/lora_up, an F32 scalar .alpha per
// module, ss_network_module / ss_network_dim / ss_network_alpha metadata).
int lora_save(const char *path, LoraFormat format, const LoraTensor *t, int n, SdcError *err);

// Pairs the "<module>.lora.down.weight" / "<module>.lora.up.weight" entries of
// a trainer's table (unet_train_table) into LoraTensors of component c with
// one alpha; *out (malloc'd, free it) points into the table's names and tensors.
int lora_tensors_from_table(const ParamTable *t, Component c, float alpha, LoraTensor **out, int *n,
                            SdcError *err);

#endif
