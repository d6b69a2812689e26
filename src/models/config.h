// config.h: the architecture of each model, as numbers. Read from a diffusers
// config.json or inferred from tensor shapes (src/io/weights.c), so tiny test
// models and real SD 1.x / 2.x run the same code.
#ifndef SDC_CONFIG_H
#define SDC_CONFIG_H

#define SDC_MAX_LEVELS 6

typedef enum { ACT_QUICK_GELU = 0, ACT_GELU = 1 } ClipAct;
typedef enum { PRED_EPSILON = 0, PRED_V = 1 } PredictionType;
typedef enum { SD_FAMILY_UNKNOWN = 0, SD_FAMILY_1 = 1, SD_FAMILY_2 = 2 } SdFamily;

typedef struct ClipConfig {
    int vocab_size;  // 49408
    int hidden;      // 768 (SD 1.x ViT-L/14), 1024 (SD 2.x OpenCLIP ViT-H)
    int layers;      // 12 / 23 used of 24 (SD 2.x uses the penultimate layer)
    int heads;       // 12 / 16
    int intermediate;// 3072 / 4096
    int max_positions; // 77
    ClipAct act;     // quick_gelu (SD 1.x) / gelu (SD 2.x)
    float ln_eps;    // 1e-5
    int pad_token;   // 49407 (SD 1.x pads with EOS) / 0 (SD 2.x)
    int bos_token, eos_token; // 49406, 49407
    // SD 2.x takes the hidden state of the penultimate layer, then the final
    // layer norm: default_skip = 2 there, 1 for SD 1.x. clip_skip (the user's
    // flag) overrides it: output = final_ln(hidden state after layer L - skip + 1).
    int default_skip;
} ClipConfig;

typedef struct UnetConfig {
    int in_channels;   // 4, or 9 for inpainting
    int out_channels;  // 4
    int n_levels;      // 4
    int block_out[SDC_MAX_LEVELS];   // 320, 640, 1280, 1280
    int down_attn[SDC_MAX_LEVELS];   // level has cross-attention (CrossAttnDownBlock2D)
    int up_attn[SDC_MAX_LEVELS];     // up level i (in up order) has cross-attention
    int heads[SDC_MAX_LEVELS];       // attention heads per level (SD 1.x: 8; SD 2.x: C/64)
    int transformer_layers[SDC_MAX_LEVELS]; // 1
    int layers_per_block;  // 2
    int cross_dim;         // 768 / 1024
    int use_linear_projection; // 0 for SD 1.x (conv proj_in/out), 1 for SD 2.x
    int norm_groups;       // 32
    float norm_eps;        // 1e-5
    int flip_sin_to_cos;   // 1
    float freq_shift;      // 0
    int mid_attn;          // 1 (UNetMidBlock2DCrossAttn)
    PredictionType prediction;
    int sample_size;       // latent size the model was trained at (64 / 96)
    SdFamily family;
} UnetConfig;

typedef struct VaeConfig {
    int in_channels;     // 3
    int out_channels;    // 3
    int latent_channels; // 4
    int n_levels;        // 4
    int block_out[SDC_MAX_LEVELS]; // 128, 256, 512, 512
    int layers_per_block;// 2 (the decoder has layers_per_block + 1 per level)
    int norm_groups;     // 32
    float norm_eps;      // 1e-6
    float scaling_factor;// 0.18215
    int sample_size;     // 512 / 768
} VaeConfig;

#endif
