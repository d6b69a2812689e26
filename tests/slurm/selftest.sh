#!/usr/bin/env bash
# selftest.sh: proves the test cluster of cluster.sh does what sdc's Slurm
# tests rely on: srun steps, sbatch jobs seen to COMPLETE without sacct,
# Open MPI under `srun --mpi=pmix`, srun forwarding SIGUSR1 to its tasks, and
# the checkpoint-and-requeue path (USR1 to the batch shell -> scontrol requeue
# -> second run with SLURM_RESTART_COUNT=1). Starts the cluster if it is not
# up and stops it again in that case. Exits non-zero on the first failure;
# every wait is bounded. Needs root (cluster.sh start) and mpicc; exits 77
# (CTest's SKIP_RETURN_CODE) when not root or Slurm is not installed.
#   tests/slurm/selftest.sh
#   SDC_SLURM_SELFTEST_TIMELIMIT=1 tests/slurm/selftest.sh  also waits for a real
#       --signal=B:USR1@N warning before a time limit (adds about a minute)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CLUSTER="$HERE/cluster.sh"
T0=$SECONDS

if [ "$(id -u)" -ne 0 ] || ! command -v slurmctld > /dev/null; then
  echo "selftest: SKIP: needs root and Slurm (tools/setup.sh installs slurmctld slurmd slurm-client munge)"
  exit 77
fi
started_here=0
if ! "$CLUSTER" status > /dev/null 2>&1; then
  "$CLUSTER" start
  started_here=1
fi
eval "$("$CLUSTER" env)"
W="$(mktemp -d /tmp/sdc-slurm-selftest.XXXXXX)"
cleanup() {
  [ "$started_here" = 1 ] && "$CLUSTER" stop > /dev/null
  rm -rf "$W"
}
trap cleanup EXIT

fail() { echo "selftest: FAIL: $*" >&2; exit 1; }
ok() { echo "selftest: ok   $*"; }
jobstate() { timeout 10 scontrol show job "$1" 2> /dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
# poll until job $1 is in state $2; at most $3 seconds
wait_state() {
  local t0=$SECONDS st=""
  while [ $((SECONDS - t0)) -lt "$3" ]; do
    st="$(jobstate "$1")"
    [ "$st" = "$2" ] && return 0
    case "$st" in FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE) break ;; esac
    sleep 0.5
  done
  echo "selftest: job $1 is '${st:-gone}', expected $2 (within $3 s)" >&2
  timeout 10 scontrol show job "$1" >&2 || true
  return 1
}
wait_file() {  # FILE PATTERN SECONDS: until a line of FILE matches PATTERN
  local t0=$SECONDS
  while [ $((SECONDS - t0)) -lt "$3" ]; do
    grep -q "$2" "$1" 2> /dev/null && return 0
    sleep 0.2
  done
  return 1
}
now() { date +%s.%N; }

# ---------------------------------------------------------------------------
# (a) a two-task step
out="$(timeout 30 srun -N1 -n2 hostname)" || fail "srun -N1 -n2 hostname"
[ "$(printf '%s\n' "$out" | grep -cx "$(hostname -s)")" = 2 ] || fail "srun -n2 hostname printed: $out"
ok "srun -N1 -n2 hostname: 2 tasks on $(hostname -s)"

# ---------------------------------------------------------------------------
# (b) a batch job, completion seen by scontrol (no slurmdbd, so no sacct) and
#     by the jobcomp/filetxt log, which outlives MinJobAge
cat > "$W/write.sh" << EOF
#!/bin/bash
#SBATCH -o $W/write.out
echo "written by \$SLURM_JOB_ID" > $W/write.marker
EOF
jid="$(timeout 10 sbatch --parsable "$W/write.sh")" || fail "sbatch"
wait_state "$jid" COMPLETED 30 || fail "batch job $jid did not complete"
[ "$(cat "$W/write.marker")" = "written by $jid" ] || fail "batch job $jid did not write its file"
grep -q "^JobId=$jid .*JobState=COMPLETED" "$SDC_SLURM_DIR/log/jobcomp.log" \
  || fail "job $jid not COMPLETED in $SDC_SLURM_DIR/log/jobcomp.log"
ok "sbatch job $jid COMPLETED (scontrol show job and log/jobcomp.log), wrote its file"

# ---------------------------------------------------------------------------
# (c) Open MPI through Slurm's PMIx plugin: ranks see each other
cat > "$W/hello.c" << 'EOF'
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
  int rank, size, sum = 0;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  printf("rank %d size %d sum %d\n", rank, size, sum);
  MPI_Finalize();
  return 0;
}
EOF
mpicc -o "$W/hello" "$W/hello.c" || fail "mpicc (tools/setup.sh installs libopenmpi-dev)"
for n in 2 4; do
  out="$(timeout 60 srun --mpi=pmix -n $n "$W/hello")" || fail "srun --mpi=pmix -n $n hello: $out"
  [ "$(printf '%s\n' "$out" | grep -c "size $n sum $((n * (n - 1) / 2))$")" = $n ] \
    || fail "srun --mpi=pmix -n $n hello printed: $out"
done
ok "srun --mpi=pmix -n 2 and -n 4: every rank reports the right size, MPI_Allreduce agrees"

# ---------------------------------------------------------------------------
# (d1) SIGUSR1 sent to the srun process reaches every task. slurmstepd
#      signals every process of the step, the task's children too, so a child
#      `sleep 100 & wait` can die first and let bash exit 0 before its own
#      trap runs; the task therefore loops on short sleeps.
# srun itself in the background (not under timeout, which would take the
# signal); a watchdog bounds it instead
srun -n2 bash -c "trap 'echo got USR1 > $W/fwd.\$SLURM_PROCID; exit 0' USR1
  echo up > $W/fwd.\$SLURM_PROCID; for i in \$(seq 500); do sleep 0.2; done" 2> "$W/fwd.err" &
srun_pid=$!
(timeout 60 tail --pid="$srun_pid" -f /dev/null || kill -KILL "$srun_pid") 2> /dev/null &
for r in 0 1; do wait_file "$W/fwd.$r" "^up" 20 || fail "srun -n2 tasks did not start"; done
kill -USR1 "$srun_pid"
rc=0; wait "$srun_pid" || rc=$?
[ $rc = 0 ] || fail "srun exited $rc after SIGUSR1: $(cat "$W/fwd.err")"
for r in 0 1; do grep -q "^got USR1" "$W/fwd.$r" || fail "task $r did not get SIGUSR1"; done
ok "kill -USR1 <srun pid>: both tasks got SIGUSR1, srun exited 0"

# ---------------------------------------------------------------------------
# (d2) checkpoint-and-requeue: USR1 to the batch shell only (what
#      --signal=B:USR1@N sends before the time limit), the trap requeues,
#      the second run sees SLURM_RESTART_COUNT=1 and completes
L="$W/rq.log"
cat > "$W/rq.sh" << EOF
#!/bin/bash
#SBATCH --requeue
#SBATCH --signal=B:USR1@30
#SBATCH -t 10
#SBATCH -n 2
#SBATCH -o $W/rq.out
#SBATCH --open-mode=append
now() { date +%s.%N; }
echo "batch start restart=\${SLURM_RESTART_COUNT:-unset} \$(now)" >> $L
# the requeue SIGTERMs this shell too (SIGKILL after KillWait): ignore TERM to log the result
trap 'echo "batch USR1 \$(now)" >> $L; trap "" TERM; scontrol requeue \$SLURM_JOB_ID; echo "requeued rc=\$? \$(now)" >> $L; exit 0' USR1
if [ "\${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then echo "second run done" >> $L; exit 0; fi
srun -n2 bash -c 'trap "echo step \$SLURM_PROCID got USR1 >> $L" USR1
  trap "echo step \$SLURM_PROCID got TERM \$(date +%s.%N) >> $L; exit 1" TERM
  echo step \$SLURM_PROCID up >> $L; for i in \$(seq 300); do sleep 1; done' &
wait
EOF
jid="$(timeout 10 sbatch --parsable "$W/rq.sh")" || fail "sbatch rq.sh"
for r in 0 1; do wait_file "$L" "^step $r up" 30 || fail "requeue job $jid: step did not start: $(cat "$L")"; done
timeout 10 scancel --signal=USR1 --batch "$jid" || fail "scancel --signal=USR1 --batch $jid"
wait_file "$L" "^requeued rc=0" 15 || fail "requeue job $jid: trap did not requeue: $(cat "$L")"
# the hold on a requeued job is AuthInfo cred_expire (cluster.sh sets 5 s; Slurm's default is 120 s)
hold="$(grep -o 'cred_expire=[0-9]*' "$SLURM_CONF" | cut -d= -f2)"
wait_state "$jid" COMPLETED $((${hold:-120} + 30)) || fail "requeued job $jid did not complete: $(cat "$L")"
grep -q "^batch start restart=unset" "$L" || fail "first run: SLURM_RESTART_COUNT set: $(cat "$L")"
grep -q "^batch start restart=1 " "$L" || fail "second run: SLURM_RESTART_COUNT != 1: $(cat "$L")"
grep -q "^second run done" "$L" || fail "second run did not finish: $(cat "$L")"
for r in 0 1; do grep -q "^step $r got TERM" "$L" || fail "requeue did not SIGTERM step task $r: $(cat "$L")"; done
grep -q "got USR1" "$L" && fail "scancel --batch USR1 reached the step tasks too: $(cat "$L")"
t_req="$(awk '/^requeued/ {print $3}' "$L")"
t_2nd="$(awk '/^batch start restart=1/ {print $4}' "$L")"
ok "$(awk -v a="$t_req" -v b="$t_2nd" -v j="$jid" 'BEGIN { printf "requeue: USR1 to the batch shell only, step tasks got SIGTERM on requeue, second run (SLURM_RESTART_COUNT=1) %.1f s after the requeue, job %s COMPLETED", b - a, j }')"

# ---------------------------------------------------------------------------
# (d3) optional: the real warning before a time limit. slurmctld checks time
#      limits about every 30 s, so the signal comes up to that much late.
if [ "${SDC_SLURM_SELFTEST_TIMELIMIT:-0}" = 1 ]; then
  cat > "$W/tl.sh" << EOF
#!/bin/bash
#SBATCH -t 1
#SBATCH --signal=B:USR1@50
#SBATCH -o $W/tl.out
# kill the child: proctrack/linuxproc loses track of orphans, they would outlive the job
trap 'echo "USR1 \$(date +%s)" >> $W/tl.log; kill %1; exit 0' USR1
echo "start \$(date +%s)" >> $W/tl.log
sleep 120 & wait
EOF
  jid="$(timeout 10 sbatch --parsable "$W/tl.sh")" || fail "sbatch tl.sh"
  wait_state "$jid" COMPLETED 90 || fail "time-limit job $jid: no USR1 before the limit: $(cat "$W/tl.log" 2> /dev/null)"
  ok "$(awk '/^start/ {s=$2} /^USR1/ {u=$2} END {printf "--signal=B:USR1@50 with -t 1: USR1 %d s after start (nominal 10 s)", u - s}' "$W/tl.log")"
fi

echo "selftest: all passed in $((SECONDS - T0)) s"
