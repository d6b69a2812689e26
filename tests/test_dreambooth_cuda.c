// test_dreambooth_cuda.c: test_dreambooth's cases (DreamBooth full and LoRA,
// prior preservation, text encoder, SDXL, text-to-image with EMA) on the
// CUDA backend in fp32, against the same torch fixtures and tolerances as on
// the CPU (loss, gradient norm and lr per step within 1e-5, every trained
// value) (issue 12, part 5). The trainer reaches compute only through the
// backend table, so this is the whole training step on the GPU with the
// latents given. Written without a GPU: not run yet. Without a GPU it exits
// 77 (CTest: skipped), unless SDC_REQUIRE_GPU=1 (tests/gpu/run.sh).
#define TEST_DB_CUDA 1
#include "test_dreambooth.c"
