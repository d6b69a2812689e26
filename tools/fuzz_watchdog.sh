#!/usr/bin/env bash
# fuzz_watchdog.sh: kills the stuck jobs of a libFuzzer fork-mode campaign.
#   tools/fuzz_watchdog.sh PARENT_PID FUZZ_BINARY [STUCK_SECONDS=30]
# libFuzzer's timeout handler (SIGALRM, -timeout) allocates memory: an alarm
# that lands while the job is inside the ASan allocator deadlocks it (a futex
# wait, no CPU used), and fork mode waits for that job for ever (session 13:
# an h5_dataset job stuck for 12 minutes with 2 s of CPU). Every 10 s this
# looks at each job of the campaign (a process running FUZZ_BINARY whose
# command line names the parent's FuzzWithFork folder) and SIGKILLs one whose
# CPU time has not moved
# for STUCK_SECONDS; the parent counts the kill as a crash and goes on. A
# working job, even at nice 19 on a loaded machine, uses CPU every second.
# Started by tools/fuzz.sh for FUZZ_FORK=1; ends when the parent does. Prints
# a line per kill.
set -u
PARENT=$1
BIN=$(readlink -f "$2")
STUCK=${3:-30}
TAG="FuzzWithFork$PARENT.dir"
declare -A cpu since
while kill -0 "$PARENT" 2>/dev/null; do
    sleep 10
    now=$(date +%s)
    for p in $(pgrep -f -- "$TAG"); do
        [ "$p" = "$PARENT" ] && continue
        [ "$(readlink -f "/proc/$p/exe" 2>/dev/null)" = "$BIN" ] || continue # (not the sh -c around a job)
        t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) || continue
        if [ "${cpu[$p]:-}" != "$t" ]; then
            cpu[$p]=$t since[$p]=$now
        elif [ $((now - since[$p])) -ge "$STUCK" ]; then
            echo "$(date -u +%FT%TZ) fuzz_watchdog: job $p used no CPU for $((now - since[$p])) s (ticks $t): killed"
            kill -KILL "$p" 2>/dev/null
            unset "cpu[$p]" "since[$p]"
        fi
    done
done
