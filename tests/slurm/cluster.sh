#!/usr/bin/env bash
# cluster.sh: a throwaway one-node Slurm cluster (munged + slurmctld + slurmd)
# for the tests that submit real jobs. Everything lives in one private dir, so
# it never touches /etc/slurm, /etc/munge or a system munged. Not a template
# for a real cluster: root runs everything and nothing is accounted.
#   tests/slurm/cluster.sh start          start (or re-check) the instance; needs root
#   tests/slurm/cluster.sh stop [--clean] cancel its jobs, stop its daemons (--clean: rm the dir)
#   tests/slurm/cluster.sh status         sinfo + squeue of the instance
#   eval "$(tests/slurm/cluster.sh env)"  point srun/sbatch/squeue/scontrol at it
# Environment: SDC_SLURM_DIR (default /tmp/sdc-slurm), SDC_SLURM_PORT (slurmctld
# port, default 6817; slurmd uses the next one), SDC_SLURM_CPUS (CPUs the node
# claims, default max(8, nproc)). Every wait is bounded; see tests/slurm/README.md.
set -euo pipefail

D="${SDC_SLURM_DIR:-/tmp/sdc-slurm}"
PORT="${SDC_SLURM_PORT:-6817}"
NODE="$(hostname -s)"
CONF="$D/slurm.conf"
SOCK="$D/run/munge.socket"  # in a 0755 dir: munged wants it reachable by all
START_WAIT=30  # seconds for the node to come up idle

die() { echo "cluster: $*" >&2; exit 1; }

# pid from a pid file if that process is alive and is the expected program
alive_pid() {  # FILE PROGRAM
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  grep -q "$2" "/proc/$pid/comm" 2>/dev/null || return 1
  echo "$pid"
}

# client commands never hang: slurmctld down means MessageTimeout per retry
sl() { SLURM_CONF="$CONF" timeout 15 "$@"; }

logs_tail() {
  for f in "$D/log/munged.log" "$D/log/slurmctld.log" "$D/log/slurmd.log"; do
    [ -f "$f" ] && { echo "---- tail $f" >&2; tail -n 20 "$f" >&2; }
  done
  return 0
}

node_state() { sl sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1; }

wait_idle() {  # seconds
  local t0=$SECONDS st=""
  while [ $((SECONDS - t0)) -lt "$1" ]; do
    st="$(node_state || true)"
    case "$st" in
      idle|mixed|allocated|completing) return 0 ;;
    esac
    sleep 0.5
  done
  echo "cluster: node $NODE not idle after $1 s (state: '${st:-no answer}')" >&2
  logs_tail
  return 1
}

# ---------------------------------------------------------------------------
# config

write_conf() {
  local ncpu cpus mem_mb real_mb
  ncpu="$(nproc)"
  # Claim more CPUs than the machine has (and let slurmd accept the claim with
  # config_overrides) so a test can run 2-4 ranks on 2 cores with plain
  # `srun -n4`, as on a real node, without --overcommit in every job script.
  cpus="${SDC_SLURM_CPUS:-$(( ncpu > 8 ? ncpu : 8 ))}"
  mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
  # headroom for the OS and the daemons: 1/8 of memory, at least 512 MB
  real_mb=$(( mem_mb - (mem_mb / 8 > 512 ? mem_mb / 8 : 512) ))
  [ "$real_mb" -gt 0 ] || real_mb=$mem_mb
  cat > "$CONF.tmp" <<EOF
# written by tests/slurm/cluster.sh for a throwaway test instance; rewritten on start
ClusterName=sdc-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
MailProg=/bin/true
AuthType=auth/munge
CredType=cred/munge
# this instance's munged; cred_expire is also the hold on a requeued job
# (Slurm's default 120 s; 5 is the least it accepts)
AuthInfo=socket=$SOCK,cred_expire=${SDC_SLURM_CRED_EXPIRE:-5}
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroup setup in a container: plain /proc process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# no slurmdbd, so no sacct: each finished job gets one line (JobState=...) here
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.log
MpiDefault=pmix
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobRequeue=1
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=60
KillWait=2
InactiveLimit=0
Waittime=0
SlurmdTimeout=60
SlurmctldTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

# ---------------------------------------------------------------------------
# start / stop

start_munged() {
  if alive_pid "$D/run/munged.pid" munged > /dev/null; then return 0; fi
  mkdir -p "$D/munge" && chmod 700 "$D/munge"
  if [ ! -s "$D/munge/munge.key" ]; then
    dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$D/munge/munge.key"
  fi
  rm -f "$SOCK" "$SOCK.lock"
  # --force: a warning instead of a refusal when the dirs above the socket
  # are not world-executable (a umask 077 shell, a private /tmp)
  munged --force --socket="$SOCK" --key-file="$D/munge/munge.key" \
    --pid-file="$D/run/munged.pid" --log-file="$D/log/munged.log" \
    --seed-file="$D/munge/munged.seed" \
    || { logs_tail; die "munged did not start"; }
  for _ in $(seq 50); do [ -S "$SOCK" ] && return 0; sleep 0.1; done
  logs_tail; die "munged socket $SOCK did not appear"
}

cmd_start() {
  [ "$(id -u)" -eq 0 ] || die "start needs root (SlurmUser=root, munged key ownership)"
  for p in munged slurmctld slurmd sinfo; do
    command -v "$p" > /dev/null || die "$p not found ---> run tools/setup.sh (installs slurmctld slurmd slurm-client munge)"
  done
  mkdir -p "$D"/{state,"spool/$NODE",run,log} && chmod 755 "$D" "$D/run"
  start_munged
  local ctld sd
  ctld="$(alive_pid "$D/run/slurmctld.pid" slurmctld || true)"
  sd="$(alive_pid "$D/run/slurmd.pid" slurmd || true)"
  if [ -n "$ctld" ] && [ -n "$sd" ]; then
    echo "cluster: already running in $D (slurmctld $ctld, slurmd $sd)"
    wait_idle "$START_WAIT" || exit 1
    echo "cluster: node $NODE $(node_state)"
    return 0
  fi
  # the config is only rewritten when the daemons are down (they read it at start)
  [ -n "$ctld" ] || [ -n "$sd" ] || write_conf
  if [ -z "$ctld" ]; then
    # -c: forget jobs of an earlier instance; -i: ignore state that cannot be recovered
    slurmctld -f "$CONF" -c -i || { logs_tail; die "slurmctld did not start"; }
  fi
  if [ -z "$sd" ]; then
    slurmd -f "$CONF" -N "$NODE" || { logs_tail; die "slurmd did not start"; }
  fi
  wait_idle "$START_WAIT" || exit 1
  echo "cluster: up in $D, node $NODE $(node_state); eval \"\$($0 env)\" to use it"
}

stop_pid() {  # NAME PIDFILE
  local pid
  pid="$(alive_pid "$2" "$1")" || return 0
  kill -TERM "$pid" 2> /dev/null || return 0
  for _ in $(seq 100); do [ -d "/proc/$pid" ] || { rm -f "$2"; return 0; }; sleep 0.1; done
  echo "cluster: $1 ($pid) ignored SIGTERM for 10 s, killing it" >&2
  kill -KILL "$pid" 2> /dev/null || true
  rm -f "$2"
}

cmd_stop() {
  if alive_pid "$D/run/slurmctld.pid" slurmctld > /dev/null; then
    # cancel this instance's jobs first so no slurmstepd outlives slurmd
    local jobs
    jobs="$(sl squeue -h -o '%A' 2> /dev/null || true)"
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      sl scancel $jobs 2> /dev/null || true
      for _ in $(seq 20); do
        [ -z "$(sl squeue -h -t running,completing -o '%A' 2> /dev/null || true)" ] && break
        sleep 0.5
      done
    fi
  fi
  stop_pid slurmd "$D/run/slurmd.pid"
  stop_pid slurmctld "$D/run/slurmctld.pid"
  stop_pid munged "$D/run/munged.pid"
  if [ "${1:-}" = "--clean" ]; then
    case "$D" in /|"") die "refusing to remove '$D'" ;; esac
    rm -rf "$D"
    echo "cluster: stopped, $D removed"
  else
    echo "cluster: stopped (state and logs kept in $D)"
  fi
}

cmd_status() {
  local p
  for p in munged slurmctld slurmd; do
    printf '%-10s %s\n' "$p" "$(alive_pid "$D/run/$p.pid" "$p" || echo 'not running')"
  done
  alive_pid "$D/run/slurmctld.pid" slurmctld > /dev/null || return 1
  sl sinfo
  sl squeue
}

cmd_env() {
  echo "export SLURM_CONF=$CONF"
  echo "export SDC_SLURM_DIR=$D"
}

case "${1:-}" in
  start)  cmd_start ;;
  stop)   cmd_stop "${2:-}" ;;
  status) cmd_status ;;
  env)    cmd_env ;;
  *) echo "usage: $0 start|stop [--clean]|status|env" >&2; exit 2 ;;
esac
