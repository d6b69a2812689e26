// test_cli.c: the command line fills the job manifest; bad flags and bad
// manifests are refused with a message that names the flag or field.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/cli.h"
#include "jobs/manifest.h"
#include "testutil.h"

static int parse(int argc, const char **argv, Sdc__Job **job, SdcError *err) {
    CliOptions opt;
    return cli_parse(argc, (char **)argv, job, &opt, err);
}

static char *dump(const Sdc__Job *job) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    manifest_print_text(f, &job->base, 0);
    fclose(f);
    return buf;
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Sdc__Job *job = NULL;

    const char *ok[] = {"sdc", "generate", "-m", "model.safetensors", "-p", "a \"quoted\" cat", "-n", "blurry",
                        "--steps", "30", "--cfg-scale", "7.5", "-s", "1234", "-W", "768", "-H", "512", "-b", "3",
                        "--clip-skip", "2", "-o", "out.png", "-t", "2"};
    int rc = parse((int)(sizeof ok / sizeof *ok), ok, &job, &err);
    check_true(&t, rc == 0 && job, "full generate command line parses (%s)", rc ? err.msg : "ok");
    if (job) {
        Sdc__Generate *g = job->generate;
        check_true(&t, g->steps == 30 && g->cfg_scale == 7.5f && g->seed == 1234 && g->width == 768 &&
                           g->height == 512 && g->batch_count == 3 && job->model->clip_skip == 2 &&
                           job->runtime->threads == 2,
                   "numeric flags land in the manifest");
        check_true(&t, g->n_prompts == 1 && !strcmp(g->prompts[0], "a \"quoted\" cat") &&
                           !strcmp(g->negative_prompt, "blurry") && !strcmp(g->output, "out.png"),
                   "string flags land in the manifest");
        check_true(&t, manifest_validate(job, &err) == 0, "manifest validates");
        char *txt = dump(job);
        check_true(&t, strstr(txt, "task: TASK_GENERATE") && strstr(txt, "prompts: \"a \\\"quoted\\\" cat\"") &&
                           strstr(txt, "steps: 30") && strstr(txt, "path: \"model.safetensors\""),
                   "text format dump names task, escaped prompt, steps, model path");
        free(txt);
        cli_job_free(job);
    }

    // defaults
    const char *def[] = {"sdc", "generate", "-m", "m", "-p", "x"};
    job = NULL;
    rc = parse(6, def, &job, &err);
    check_true(&t, rc == 0 && job && job->generate->steps == 20 && job->generate->cfg_scale == 7.0f &&
                       job->generate->seed == 42 && !strcmp(job->generate->sampler, "euler"),
               "defaults: 20 steps, cfg 7, seed 42, euler");
    cli_job_free(job);

    // the schedule overrides (A1111's schedule options) land in the manifest
    {
        const char *a[] = {"sdc", "generate", "-m", "m", "-p", "x", "--timestep-spacing", "trailing", "--karras",
                           "--sampler", "dpm++2m"};
        job = NULL;
        rc = parse((int)(sizeof a / sizeof *a), a, &job, &err);
        char *txt = job ? dump(job) : NULL;
        check_true(&t, rc == 0 && job && !strcmp(job->generate->timestep_spacing, "trailing") &&
                           job->generate->karras && manifest_validate(job, &err) == 0 && txt &&
                           strstr(txt, "timestep_spacing: \"trailing\"") && strstr(txt, "karras: true"),
                   "--timestep-spacing trailing --karras land in the manifest and its dump");
        free(txt);
        cli_job_free(job);
        job = NULL;
        rc = parse(6, def, &job, &err);
        check_true(&t, rc == 0 && job && job->generate->timestep_spacing && !job->generate->timestep_spacing[0] &&
                           !job->generate->karras, "defaults: the model's timestep spacing, no --karras");
        cli_job_free(job);
    }

    // bad command lines
    struct {
        int argc;
        const char *argv[8];
        const char *needle;
    } bad[] = {
        {4, {"sdc", "generate", "--steps", "abc"}, "--steps"},
        {4, {"sdc", "generate", "--steps", "0"}, "--steps"},
        {3, {"sdc", "generate", "--seed"}, "needs a value"},
        {3, {"sdc", "generate", "--bogus"}, "unknown option"},
        {2, {"sdc", "paint"}, "unknown command"},
        {4, {"sdc", "generate", "-W", "5x"}, "-W"},
        {4, {"sdc", "generate", "--cfg-scale", "seven"}, "--cfg-scale"},
        {4, {"sdc", "generate", "--timestep-spacing", "even"}, "--timestep-spacing even ---> use leading"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        job = NULL;
        memset(&err, 0, sizeof err);
        rc = parse(bad[i].argc, bad[i].argv, &job, &err);
        check_true(&t, rc == SDC_ERR_ARG && !job && strstr(err.msg, bad[i].needle), "refused: %s %s -> %s",
                   bad[i].argv[2] ? bad[i].argv[2] : bad[i].argv[1], bad[i].argc > 3 ? bad[i].argv[3] : "",
                   err.msg);
    }

    // manifests the runner must refuse
    struct {
        const char *argv[10];
        int argc;
        const char *needle;
    } inval[] = {
        {{"sdc", "generate", "-p", "x"}, 4, "model.path"},
        {{"sdc", "generate", "-m", "m"}, 4, "prompts"},
        {{"sdc", "generate", "-m", "m", "-p", "x", "-W", "100"}, 8, "multiples of 8"},
        {{"sdc", "generate", "-m", "m", "-p", "x", "--device", "tpu"}, 8, "runtime.device"},
        {{"sdc", "generate", "-m", "m", "-p", "x", "--prediction-type", "x0"}, 8, "prediction_type"},
        {{"sdc", "generate", "-m", "m", "-p", "x", "--karras", "--sampler", "ddim"}, 9,
         "generate.karras with sampler ddim: diffusers' DDIMScheduler has no Karras"},
        {{"sdc", "generate", "-m", "m", "-p", "x", "--karras", "--sampler", "euler,euler_a"}, 9,
         "sampler euler_a: diffusers' EulerAncestralDiscreteScheduler"},
    };
    for (size_t i = 0; i < sizeof inval / sizeof *inval; i++) {
        job = NULL;
        memset(&err, 0, sizeof err);
        rc = parse(inval[i].argc, inval[i].argv, &job, &err);
        int vr = rc ? rc : manifest_validate(job, &err);
        check_true(&t, vr == SDC_ERR_ARG && strstr(err.msg, inval[i].needle), "invalid manifest: %s", err.msg);
        cli_job_free(job);
    }
    // text format: what --dump-manifest prints parses back to the same manifest
    {
        const char *a[] = {"sdc", "generate", "-m", "m.safetensors", "-p", "tab\there \"q\" \u00e9", "-p", "two",
                           "--steps", "7", "--cfg-scale", "1.5", "-s", "9000000000"};
        job = NULL;
        rc = parse((int)(sizeof a / sizeof *a), a, &job, &err);
        char *t1 = job ? dump(job) : NULL;
        ProtobufCMessage *back = NULL;
        int prc = t1 ? manifest_parse_text(&sdc__job__descriptor, t1, strlen(t1), "dump", &back, &err) : -1;
        char *t2 = back ? dump((Sdc__Job *)back) : NULL;
        check_true(&t, t1 && t2 && !strcmp(t1, t2), "dump -> parse -> dump is identity (%s)", prc ? err.msg : "ok");
        Sdc__Job *bj = (Sdc__Job *)back;
        check_true(&t, bj && bj->generate && bj->generate->seed == 9000000000LL && bj->generate->n_prompts == 2,
                   "int64 seed and repeated prompts survive");
        free(t1);
        free(t2);
        if (back) protobuf_c_message_free_unpacked(back, NULL);
        cli_job_free(job);
    }
    {
        const char *txt = "# a comment\ntask: TASK_GENERATE model < path: 'a' 'b' >\n"
                          "generate { prompts: [\"x\", \"y\"]; steps: 0x10, cfg_scale: 3f seed: -1 }";
        ProtobufCMessage *m = NULL;
        rc = manifest_parse_text(&sdc__job__descriptor, txt, strlen(txt), "hand", &m, &err);
        Sdc__Job *j = (Sdc__Job *)m;
        check_true(&t, rc == 0 && j && !strcmp(j->model->path, "ab") && j->generate->n_prompts == 2 &&
                           j->generate->steps == 16 && j->generate->cfg_scale == 3.0f && j->generate->seed == -1 &&
                           !j->generate->has_width && j->generate->batch_count == 1,
                   "hand-written text: comments, <>, adjacent strings, lists, hex, 3f, defaults (%s)",
                   rc ? err.msg : "ok");
        if (m) protobuf_c_message_free_unpacked(m, NULL);
    }
    {   // a manifest file with a timestep spacing diffusers does not know
        const char *txt = "task: TASK_GENERATE model { path: 'm' } generate { prompts: 'x' timestep_spacing: 'even' }";
        ProtobufCMessage *m = NULL;
        rc = manifest_parse_text(&sdc__job__descriptor, txt, strlen(txt), "hand", &m, &err);
        int vr = rc ? rc : manifest_validate((Sdc__Job *)m, &err);
        check_true(&t, vr == SDC_ERR_ARG && strstr(err.msg, "generate.timestep_spacing 'even'"),
                   "manifest timestep_spacing 'even' refused: %s", err.msg);
        if (m) protobuf_c_message_free_unpacked(m, NULL);
    }
    struct {
        const char *txt, *needle;
    } badtxt[] = {
        {"task: TASK_NOPE", "not a sdc.Task"},
        {"model { path: \"x\" ", "missing '}'"},
        {"generate { steps: 99999999999 }", "not an integer"},
        {"generate { stepz: 1 }", "has no field 'stepz'"},
        {"generate { steps: 1 steps: 2 }", "given twice"},
        {"generate { prompts: \"unterminated }", "not closed"},
        {"generate { steps 3 }", "expected ':'"},
        {"model { path: \"\\q\" }", "unknown escape"},
        {"task: TASK_GENERATE\n\n  generate { width: \"wide\" }", "hand:3:21"},
        {"model { model { } }", "has no field 'model'"},
    };
    for (size_t i = 0; i < sizeof badtxt / sizeof *badtxt; i++) {
        ProtobufCMessage *m = NULL;
        memset(&err, 0, sizeof err);
        rc = manifest_parse_text(&sdc__job__descriptor, badtxt[i].txt, strlen(badtxt[i].txt), "hand", &m, &err);
        check_true(&t, rc == SDC_ERR_FORMAT && !m && strstr(err.msg, badtxt[i].needle), "bad text refused: %s",
                   err.msg);
    }
    // deep nesting ends in an error, not a stack overflow (the Job has no
    // recursive message, so the field check stops it; MAX_DEPTH guards others)
    {
        char deep[4096] = "";
        for (int i = 0; i < 600; i++) strcat(deep, "model{");
        ProtobufCMessage *m = NULL;
        rc = manifest_parse_text(&sdc__job__descriptor, deep, strlen(deep), "deep", &m, &err);
        check_true(&t, rc != 0 && !m, "600 nested braces refused: %s", err.msg);
    }
    return test_summary(&t);
}
