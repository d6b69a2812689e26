// bench_stage_memory.c: the memory of each pipeline stage of a UNet cut
// into P stages (mpi/pp.h), for generation, without running a pass: each
// stage's blocks are loaded as a stage rank loads them (ModelLoadOpts
// first_block / end_block), and its activation arena planned as the rank's
// unet_reserve plans it (the measuring backend: shapes only, no compute).
//
//   bench_stage_memory MODEL [--stages 1,2,4] [--latent 128] [--rows 2] [--cut B1,B2,...]
//
// MODEL: a single .safetensors file or a diffusers folder (e.g. the
// real-shape SDXL of `python3 tools/make_sdxl_full.py PATH`). The cut is the
// FLOP model's (pp_partition: near-equal FLOPs per stage at this latent);
// `sdc generate --pipeline-stages P` cuts by measured block time instead,
// which moves the cut toward the low-resolution blocks, and takes a
// --pipeline-cut as given (--cut here: one P only). --rows 2 is one image
// with classifier-free guidance. Per stage: its blocks, their parameters
// (MiB at the backend's dtype, f32 on the CPU: an F16 file is widened),
// the resident memory its loading added (private: RssAnon, and the pages
// of the mapped file it read: RssFile; each stage loads in a child process
// of its own), the planned activation arena, the cut it receives per
// micro-batch, and the sum. Lines:
//   stage_memory stages=P stage=s blocks=a-b params=N param_mib=X anon_load_mib=Y file_load_mib=F act_mib=Z
//                cut_in_mib=C total_mib=T gflop=G (share) load_s=S
// total = parameters + activation arena + cut received (one micro-batch).
// A benchmark, not a test: nothing is checked.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/backend.h"
#include "io/weights.h"
#include "models/params.h"
#include "models/unet.h"
#include "mpi/pp.h"

#include "benchutil.h"

static double mib(size_t b) { return (double)b / 1048576.0; }

// MiB of /proc/self/status's field (VmRSS, RssAnon: private memory, RssFile: mapped file pages)
static double status_mib(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double v = 0;
    const size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') v = atof(line + n + 1) / 1024.0;
    if (f) fclose(f);
    return v;
}

int main(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: bench_stage_memory MODEL [--stages 1,2,4] [--latent 128] [--rows 2] "
                        "[--cut B1,B2,...]\n");
        return 2;
    }
    const char *stages_s = "1,2,4", *cut = NULL;
    int latent = 128, rows = 2;
    const int L = 77;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--stages") && i + 1 < argc) stages_s = argv[++i];
        else if (!strcmp(argv[i], "--latent") && i + 1 < argc) latent = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cut") && i + 1 < argc) cut = argv[++i];
        else {
            fprintf(stderr, "bench_stage_memory: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    SdcError err = {0};
    Backend *be = NULL;
    ModelFiles *mf = NULL;
    Unet *u = NULL;
    int rc = backend_cpu_create(&be, 1, &err);
    if (!rc) rc = model_files_open(&mf, argv[1], NULL, -1, &err);
    // the layout and the FLOP model: the time block alone loaded
    if (!rc) rc = unet_load_opts(&u, mf, be, &(ModelLoadOpts){.first_block = 0, .end_block = 1}, &err);
    if (rc) {
        fprintf(stderr, "bench_stage_memory: %s\n", err.msg);
        return 1;
    }
    const int nb = unet_block_count(u);
    printf("# model=%s blocks=%d latent=%d (%d px) rows=%d ctx=%d\n", argv[1], nb, latent, latent * 8, rows, L);
    unet_free(u);
    u = NULL;
    for (const char *s = stages_s; *s && !rc;) {
        const int P = atoi(s);
        const char *comma = strchr(s, ',');
        s = comma ? comma + 1 : s + strlen(s);
        if (P < 1 || P > 16) continue;
        int bounds[17];
        Unet *full = NULL;
        rc = unet_load_opts(&full, mf, be, &(ModelLoadOpts){.first_block = 0, .end_block = 1}, &err);
        if (!rc) rc = cut && P > 1 ? pp_cut_parse(cut, nb, P, bounds, &err) : pp_partition(full, P, latent, latent, L, bounds, &err);
        double flops_all = 0, fl[17] = {0};
        for (int i = 0; !rc && i < nb; i++) {
            const double f = unet_block_flops(full, i, rows, latent, latent, L);
            flops_all += f;
            for (int st = 0; st < P; st++)
                if (i >= bounds[st] && i < bounds[st + 1]) fl[st] += f;
        }
        unet_free(full);
        fflush(stdout);
        for (int st = 0; st < P && !rc; st++) {
            const pid_t pid = fork(); // a fresh process per stage: the resident memory of its load alone
            if (pid < 0) {
                rc = sdc_err(&err, SDC_ERR_IO, "fork failed");
                break;
            }
            if (pid > 0) {
                int status = 0;
                waitpid(pid, &status, 0);
                if (!WIFEXITED(status) || WEXITSTATUS(status)) rc = sdc_err(&err, SDC_ERR_IO, "stage %d failed", st);
                continue;
            }
            const double a0 = status_mib("RssAnon"), f0 = status_mib("RssFile");
            double t0 = now_sec();
            rc = unet_load_opts(&u, mf, be, &(ModelLoadOpts){.first_block = bounds[st], .end_block = bounds[st + 1]},
                                &err);
            if (rc) {
                fprintf(stderr, "bench_stage_memory: stage %d: %s\n", st, err.msg);
                _exit(1);
            }
            const double t_load = now_sec() - t0, a1 = status_mib("RssAnon"), f1 = status_mib("RssFile");
            size_t act = 0;
            if (unet_plan_bytes(u, rows, latent, latent, L, &act, &err)) {
                fprintf(stderr, "bench_stage_memory: stage %d: %s\n", st, err.msg);
                _exit(1);
            }
            const size_t cut_in = bounds[st] > 0 ? unet_cut_bytes(u, bounds[st], rows, latent, latent, L) : 0;
            const size_t pb = unet_param_bytes(u);
            const double tot = mib(pb) + mib(act) + mib(cut_in);
            printf("stage_memory stages=%d stage=%d blocks=%d-%d (%s .. %s) params=%zu param_mib=%.1f anon_load_mib=%.1f file_load_mib=%.1f "
                   "act_mib=%.1f cut_in_mib=%.1f total_mib=%.1f gflop=%.1f (%.1f%%) load_s=%.1f\n",
                   P, st, bounds[st], bounds[st + 1] - 1, unet_block_info(u, bounds[st])->name,
                   unet_block_info(u, bounds[st + 1] - 1)->name, unet_param_count(u), mib(pb), a1 - a0, f1 - f0, mib(act),
                   mib(cut_in), tot, fl[st] * 1e-9, 100.0 * fl[st] / flops_all, t_load);
            fflush(stdout);
            _exit(0);
        }
    }
    if (rc) fprintf(stderr, "bench_stage_memory: %s\n", err.msg);
    unet_free(u);
    model_files_close(mf);
    backend_destroy(be);
    return rc ? 1 : 0;
}
