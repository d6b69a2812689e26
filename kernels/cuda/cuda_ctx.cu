// cuda_ctx.cu: device discovery, the CudaCtx (stream, cuBLAS handle,
// workspace, scratch, the lazily made cuDNN handle, the kernel choices read
// from the environment once) and memory moves. Setup failures come back as a code
// and a message with a hint; a failed call later (a copy, a launch) is
// recorded in the context (cuda_fault) and taken by the backend's status.
#include "cuda_common.cuh"

#include <stdarg.h>
#include <string.h>

#ifndef SDC_CUDA_ARCHS
#define SDC_CUDA_ARCHS "?"
#endif

// The cause in words, with what a user can do about it.
static void describe_setup_error(cudaError_t e, const char *what, char *msg, size_t n) {
    const char *hint = "";
    switch (e) {
    case cudaErrorNoDevice: hint = "no CUDA-capable GPU is visible (check CUDA_VISIBLE_DEVICES)"; break;
    case cudaErrorInsufficientDriver:
        hint = "no NVIDIA driver is loaded, or it is older than this CUDA runtime needs (install/update the driver)";
        break;
    case cudaErrorInvalidDevice: hint = "no GPU with that index"; break;
    case cudaErrorMemoryAllocation: hint = "out of GPU memory"; break;
    case cudaErrorInitializationError:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
        hint = "the CUDA driver failed to initialise (driver/library mismatch?)";
        break;
    default: hint = "the CUDA runtime could not use the GPU"; break;
    }
    snprintf(msg, n, "%s failed: %s (%s): %s ---> use --device cpu", what, cudaGetErrorName(e),
             cudaGetErrorString(e), hint);
}

extern "C" int cuda_device_count(int *count, char *msg, size_t msg_n) {
    *count = 0;
    int c = 0;
    cudaError_t e = cudaGetDeviceCount(&c);
    if (e != cudaSuccess) {
        describe_setup_error(e, "cudaGetDeviceCount", msg, msg_n);
        cudaGetLastError(); // clear, so a later call does not see it
        return CUDA_ERR_NO_DEVICE;
    }
    *count = c;
    return CUDA_OK;
}

// launched never: cudaFuncGetAttributes on it tells whether the binary has
// code this GPU can run
__global__ void arch_probe_kernel(int *x) {
    if (x) *x = 1;
}

extern "C" int cuda_ctx_create(CudaCtx **out, int device, int allow_tf32, char *msg, size_t msg_n) {
    *out = NULL;
    int count = 0;
    int rc = cuda_device_count(&count, msg, msg_n);
    if (rc) return rc;
    if (count == 0) {
        snprintf(msg, msg_n, "no CUDA device found (cudaGetDeviceCount = 0) ---> use --device cpu");
        return CUDA_ERR_NO_DEVICE;
    }
    if (device < 0 || device >= count) {
        snprintf(msg, msg_n, "CUDA device %d requested but only %d present ---> pick 0..%d or use --device cpu",
                 device, count, count - 1);
        return CUDA_ERR_NO_DEVICE;
    }
    CudaCtx *c = (CudaCtx *)calloc(1, sizeof *c);
    if (!c) {
        snprintf(msg, msg_n, "out of host memory creating the CUDA context");
        return CUDA_ERR_OOM;
    }
    c->device = device;
    c->allow_tf32 = allow_tf32;
    // Kernel choices, read once: the new paths stay opt-in until they have
    // passed tests/test_conv_cuda on a GPU.
    const char *conv = getenv("SDC_CUDA_CONV");
    c->conv_algo = !conv                          ? CUDA_CONV_IM2COL
                   : !strcmp(conv, "cudnn")       ? CUDA_CONV_CUDNN
                   : !strcmp(conv, "cudnn-find")  ? CUDA_CONV_CUDNN_FIND
                                                  : CUDA_CONV_IM2COL;
    const char *gn = getenv("SDC_CUDA_GN");
    c->gn_fast = gn && !strcmp(gn, "fast");
    cudaError_t e;
    cudaDeviceProp prop;
    if ((e = cudaSetDevice(device)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) {
        describe_setup_error(e, "cudaSetDevice", msg, msg_n);
        free(c);
        return CUDA_ERR_NO_DEVICE;
    }
    // A binary without code for this GPU's architecture fails at the first
    // kernel launch; find out now, with a message that says what to rebuild.
    cudaFuncAttributes fa;
    if ((e = cudaFuncGetAttributes(&fa, arch_probe_kernel)) != cudaSuccess) {
        cudaGetLastError();
        snprintf(msg, msg_n, "the %s is sm_%d%d, but this sdc's CUDA kernels were built for sm_%s only (%s) ---> "
                 "rebuild with cmake -DCMAKE_CUDA_ARCHITECTURES=%d%d (tools/build.sh passes CMake options on), or "
                 "use --device cpu", prop.name, prop.major, prop.minor, SDC_CUDA_ARCHS, cudaGetErrorName(e),
                 prop.major, prop.minor);
        free(c);
        return CUDA_ERR_NO_DEVICE;
    }
    snprintf(c->name, sizeof c->name, "%s", prop.name);
    c->cc_major = prop.major;
    c->cc_minor = prop.minor;
    c->sm_count = prop.multiProcessorCount;
    c->total_mem = prop.totalGlobalMem;
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        describe_setup_error(e, "cudaStreamCreate", msg, msg_n);
        free(c);
        return CUDA_ERR_NO_DEVICE;
    }
    if ((e = cudaMalloc(&c->cublas_ws, CUDA_CUBLAS_WS)) != cudaSuccess ||
        (e = cudaMalloc((void **)&c->scratch, CUDA_SCRATCH_BYTES)) != cudaSuccess) {
        describe_setup_error(e, "cudaMalloc (workspace)", msg, msg_n);
        cuda_ctx_destroy(c);
        return e == cudaErrorMemoryAllocation ? CUDA_ERR_OOM : CUDA_ERR_NO_DEVICE;
    }
    cublasStatus_t s = cublasCreate(&c->cublas);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetStream(c->cublas, c->stream);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetWorkspace(c->cublas, c->cublas_ws, CUDA_CUBLAS_WS);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetMathMode(c->cublas, CUBLAS_DEFAULT_MATH);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(msg, msg_n, "cuBLAS setup failed: %s: %s ---> check the cuBLAS install, or use --device cpu",
                 cublasGetStatusName(s), cublasGetStatusString(s));
        cuda_ctx_destroy(c);
        return CUDA_ERR_LIB;
    }
    *out = c;
    return CUDA_OK;
}

extern "C" void cuda_ctx_destroy(CudaCtx *c) {
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    cuda_conv_cache_destroy(c);
    cuda_conv_bwd_cache_destroy(c);
    if (c->cudnn_state == 1) CUDNN_CHECK(c, cudnnDestroy(c->cudnn));
    if (c->cublas) cublasDestroy(c->cublas);
    if (c->cublas_ws) cudaFree(c->cublas_ws);
    if (c->scratch) cudaFree(c->scratch);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

extern "C" void cuda_ctx_describe(const CudaCtx *c, char *buf, size_t n) {
    snprintf(buf, n, "%s (sm_%d%d, %d SMs, %.1f GiB)", c->name, c->cc_major, c->cc_minor, c->sm_count,
             c->total_mem / 1073741824.0);
}

extern "C" void cuda_ctx_set_tf32(CudaCtx *c, int allow_tf32) { c->allow_tf32 = allow_tf32; }

void cuda_fault(CudaCtx *c, int code, const char *fmt, ...) {
    if (c->fault) return; // the first failure is the cause; later ones follow from it
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->fault_msg, sizeof c->fault_msg, fmt, ap);
    va_end(ap);
    c->fault = code;
}

extern "C" int cuda_ctx_take_fault(CudaCtx *c, char *msg, size_t msg_n) {
    const int code = c->fault;
    if (code && msg_n) snprintf(msg, msg_n, "%s", c->fault_msg);
    c->fault = 0;
    c->fault_msg[0] = 0;
    if (code == CUDA_ERR_OOM) cudaGetLastError(); // not sticky: clear it for the calls after
    return code;
}

extern "C" int cuda_ctx_faulted(const CudaCtx *c) { return c->fault != 0; }

extern "C" void cuda_ctx_set_conv_algo(CudaCtx *c, int algo) {
    CUDA_REQUIRE(algo == CUDA_CONV_IM2COL || algo == CUDA_CONV_CUDNN || algo == CUDA_CONV_CUDNN_FIND);
    c->conv_algo = algo;
}

cudnnHandle_t cuda_ctx_cudnn(CudaCtx *c) {
    if (c->cudnn_state == 0) {
        cudnnStatus_t s = cudnnCreate(&c->cudnn);
        const char *call = "cudnnCreate";
        if (s == CUDNN_STATUS_SUCCESS) {
            call = "cudnnSetStream";
            s = cudnnSetStream(c->cudnn, c->stream);
            if (s != CUDNN_STATUS_SUCCESS) cudnnDestroy(c->cudnn);
        }
        if (s != CUDNN_STATUS_SUCCESS) {
            fprintf(stderr, "sdc: cuDNN unavailable: %s: %s ---> convolutions use im2col + cuBLAS "
                            "(check that all libcudnn*.so.9 sit beside libcudnn.so)\n",
                    call, cudnnGetErrorString(s));
            c->cudnn = NULL;
            c->cudnn_state = -1;
        } else {
            c->cudnn_state = 1;
        }
    }
    return c->cudnn_state == 1 ? c->cudnn : NULL;
}

// ---- memory -----------------------------------------------------------------

extern "C" void *cuda_malloc(CudaCtx *c, size_t bytes) {
    void *p = NULL;
    CUDA_CHECK(c, cudaSetDevice(c->device));
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError(); // OOM is not sticky; clear it for later checks
        return NULL;
    }
    CUDA_CHECK(c, e);
    return p;
}

extern "C" void cuda_free(CudaCtx *c, void *p) {
    if (!p) return;
    // Ops in flight may still use p: cudaFree synchronises the device.
    CUDA_CHECK(c, cudaFree(p));
}

extern "C" void cuda_upload(CudaCtx *c, void *dst, const void *host_src, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(c, cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
}

extern "C" void cuda_download(CudaCtx *c, void *host_dst, const void *src, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(c, cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
}

extern "C" int cuda_mem_info(CudaCtx *c, size_t *free_bytes, size_t *total_bytes) {
    (void)c;
    return cudaMemGetInfo(free_bytes, total_bytes) == cudaSuccess ? 0 : -1;
}

extern "C" void cuda_memset_async(CudaCtx *c, void *dst, int byte, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(c, cudaMemsetAsync(dst, byte, bytes, c->stream));
}

extern "C" void cuda_copy_bytes(CudaCtx *c, void *dst, const void *src, size_t bytes) {
    if (!bytes || dst == src) return;
    CUDA_CHECK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
}

extern "C" void cuda_ctx_sync(CudaCtx *c) { CUDA_CHECK(c, cudaStreamSynchronize(c->stream)); }
