#!/usr/bin/env bash
# setup.sh: installs everything sdc needs to build and test on Debian 12.
# Idempotent: a second run installs nothing new. Used by README.md and .ci/run.
#   tools/setup.sh          build + test dependencies (C side only)
#   tools/setup.sh --python also the Python reference stack for tools/ (torch,
#                           diffusers; a few GB; never needed to build or test)
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config git
  libopenmpi-dev openmpi-bin
  libhdf5-openmpi-dev hdf5-tools
  libprotobuf-c-dev protobuf-c-compiler
  libopenblas-openmp-dev
  libpng-dev libjpeg-dev zlib1g-dev
  libssl-dev
  # the CPU's bf16 path (--precision bf16 on the CPU; optional in CMake: SDC_DNNL)
  libdnnl-dev
  python3-h5py python3-numpy
  file diffutils
  # tools/fuzz.sh: clang with libFuzzer and the sanitizer runtimes, and
  # clang's OpenMP (the fuzz build compiles the whole library with clang)
  clang libclang-rt-dev libomp-dev
  # tests/slurm/cluster.sh: a throwaway one-node Slurm (Debian 12: 22.05). The
  # pmix MPI plugin is in slurm-wlm-basic-plugins and dlopens libpmix.so from
  # libpmix-dev (the same PMIx 4 that Debian's Open MPI uses)
  slurmctld slurmd slurm-client munge libpmix-dev
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Without systemd, the postinst scripts start services through /etc/init.d
  # (unless policy-rc.d forbids it): munge starts a system munged with
  # /etc/munge/munge.key on /run/munge (harmless: cluster.sh runs its own);
  # slurmctld and slurmd refuse to start without /etc/slurm/slurm.conf.
else
  echo "setup: all Debian packages present"
fi

if [ "${1:-}" = "--python" ]; then
  python3 -m pip install -q -r "$(dirname "$0")/requirements.txt"
fi
