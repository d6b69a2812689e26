// stop.c: see stop.h. The handler only records the signal; the work loops
// poll stop_agree() between steps.
#include "jobs/stop.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

static volatile sig_atomic_t stop_caught;

static void on_signal(int sig) {
    if (!stop_caught) stop_caught = sig;
}

void stop_install(void) {
    static int installed;
    if (installed) return;
    installed = 1;
    const int sigs[] = {SIGUSR1, SIGTERM, SIGINT};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        // the second signal of a kind gets the default action: a user who
        // presses Ctrl-C twice does not wait for the checkpoint
        sa.sa_flags = SA_RESETHAND | SA_RESTART;
        sigaction(sigs[i], &sa, NULL);
    }
}

int stop_signal(void) { return stop_caught; }

int stop_agree(const H5Par *par) { return (int)h5_par_max(par, stop_caught); }

const char *stop_signal_name(int sig) {
    static char buf[32];
    switch (sig) {
    case SIGUSR1: return "SIGUSR1";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    }
    snprintf(buf, sizeof buf, "signal %d", sig);
    return buf;
}
