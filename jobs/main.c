// main.c: the sdc command. Parses the command line into a job manifest and
// hands it to the runner. Only main decides to exit.
#include <stdio.h>

#include "jobs/cli.h"
#include "jobs/manifest.h"
#include "jobs/runner.h"

int main(int argc, char **argv) {
    SdcError err = {0};
    Sdc__Job *job = NULL;
    CliOptions opt;
    int rc = cli_parse(argc, argv, &job, &opt, &err);
    if (rc) {
        fprintf(stderr, "sdc: %s\n", err.msg);
        return 2;
    }
    if (opt.help) return 0;
    if (opt.dump_manifest) {
        manifest_print_text(stdout, &job->base, 0);
        cli_job_free(job);
        return 0;
    }
    RunOptions ro = {.quiet = opt.quiet};
    rc = runner_run(job, &ro, &err);
    cli_job_free(job);
    if (rc) {
        fprintf(stderr, "sdc: error: %s\n", err.msg);
        return 1;
    }
    return 0;
}
