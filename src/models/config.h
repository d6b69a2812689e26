// config.h: the architecture of each model, as numbers. Read from a diffusers
// config.json or inferred from tensor shapes (src/io/weights.c), so tiny test
// models and real SD 1.x / 2.x run the same code.
#ifndef SDC_CONFIG_H
#define SDC_CONFIG_H

#define SDC_MAX_LEVELS 6

typedef enum { ACT_QUICK_GELU = 0, ACT_GELU = 1 } ClipAct;
typedef enum { PRED_EPSILON = 0, PRED_V = 1 } PredictionType;
// SD_FAMILY_XL: SDXL base (two text encoders, the text_time added embedding).
typedef enum { SD_FAMILY_UNKNOWN = 0, SD_FAMILY_1 = 1, SD_FAMILY_2 = 2, SD_FAMILY_XL = 3 } SdFamily;

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
    // CLIPTextModelWithProjection (SDXL's second encoder): the pooled output
    // (final_ln of the last layer at the EOS position) times text_projection
    // (projection_dim, hidden); 0 = no projection (CLIPTextModel).
    int projection_dim;
    // Where the pooled output is taken: transformers' legacy rule when the
    // config's eos_token_id is 2 (the argmax of the ids), else the first
    // position of eos_token.
    int pool_argmax;
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
    // SDXL's added embedding (addition_embed_type "text_time"): the pooled
    // text embedding (add_text_dim) and n_time_ids micro-conditioning numbers,
    // each through the time sinusoid of add_time_dim channels, concatenated
    // (add_in_dim = pooled width + n_time_ids * add_time_dim) through
    // add_embedding's MLP and added to the time embedding. add_time_dim 0: none.
    int add_time_dim;      // 256 (addition_time_embed_dim)
    int add_in_dim;        // 2816 (projection_class_embeddings_input_dim)
    int n_time_ids;        // 6 (base), 5 (refiner): from add_in_dim and the pooled width
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
