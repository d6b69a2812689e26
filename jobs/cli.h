// cli.h: the `sdc` command line. Flags fill a Job manifest message (one code
// path: the runner only ever sees a Job). Flag names follow
// stable-diffusion.cpp / A1111 where users know them.
#ifndef SDC_CLI_H
#define SDC_CLI_H

#include "core/error.h"
#include "sdc.pb-c.h"

typedef struct CliOptions {
    int dump_manifest; // print the manifest in text format and exit
    int help;          // --help was given: usage printed, nothing to run
    int quiet;         // no progress output
} CliOptions;

// Parses argv (argv[1] is the subcommand) into a freshly allocated Job
// (free with cli_job_free). Returns SDC_ERR_ARG with a message on bad flags.
int cli_parse(int argc, char **argv, Sdc__Job **job, CliOptions *opt, SdcError *err);
void cli_job_free(Sdc__Job *job);
void cli_print_usage(FILE *f, const char *subcommand);

#endif
