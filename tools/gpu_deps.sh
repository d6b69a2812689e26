#!/usr/bin/env bash
# gpu_deps.sh: downloads (here, where Debian's archive is reachable) the .deb
# files that tests/gpu/run.sh unpacks on a bare, offline GPU machine into
# .gpudeps/ (ignored by git; carried to the device with the working tree).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpudeps
grep -qx '/.gpudeps/' .git/info/exclude 2>/dev/null || echo '/.gpudeps/' >> .git/info/exclude
cd .gpudeps
apt-get download libopenblas0-openmp libopenblas-openmp-dev libopenblas-dev libopenblas0 libgfortran5 \
  libpng-dev libpng16-16 libjpeg62-turbo libjpeg62-turbo-dev libjpeg-dev zlib1g-dev
ls -la
