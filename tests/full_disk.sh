#!/bin/sh
# full_disk.sh: every writer of sdc on a small file system that fills up (a
# 48 MiB tmpfs, filled with a dummy file to leave a few KB or MB free):
# PNG images, an HDF5 sweep, a dataset import, checkpoints (sdc convert to
# .h5 and DreamBooth's checkpoint-N.h5), sdc convert to .safetensors and to a
# diffusers folder. Each must stop with exit 1 and a message naming its file
# and "No space left on device", leave what was written before intact (byte
# for byte), leave no temporary file and no half file under the final name,
# and, once space is freed, the same command must finish the job as if
# nothing had happened (a sweep resumes, a training run resumes from its last
# checkpoint and ends bit-identical to an uninterrupted run).
#   tests/full_disk.sh SDC SRC_ROOT WORK_DIR
# Needs root to mount the tmpfs; exits 77 (CTest: skipped) where it cannot.

SDC=$1
SRC=$2
W=$3
. "$SRC/tests/check.sh"
DEMO=$SRC/data/models/sdc-tiny-sd1.safetensors
IMGS=$SRC/tests/fixtures/images
H5PY="/usr/bin/python3 $SRC/tools/h5_interop.py"
M=$W/disk
NOSPC='No space left on device'

umount "$M" 2> /dev/null # a mount left by a killed run
rm -rf "$W" && mkdir -p "$M" "$W/ref" || exit 1
[ "$(id -u)" -eq 0 ] || skip "needs root to mount a small tmpfs"
mount -t tmpfs -o size=48m sdc-full-disk "$M" 2> /dev/null || skip "cannot mount a tmpfs at $M (no CAP_SYS_ADMIN?)"
trap 'umount "$M" 2> /dev/null || umount -l "$M"; rm -rf "$CHECK_TMP"' EXIT

free_bytes() { df -B1 --output=avail "$M" | tail -1 | tr -d ' '; }
# fill_to N: a dummy file takes all but about N bytes of the disk
fill_to() {
    _n=$((($(free_bytes) - $1) / 4096))
    [ $_n -le 0 ] || dd if=/dev/zero of="$M/fill.$(date +%s%N)" bs=4096 count=$_n status=none 2> /dev/null
}
unfill() { rm -f "$M"/fill.*; }
size_of() { stat -c %s "$1"; }
leftovers() { find "$M" -name '*.tmp' -o -name '*.sdc-tmp'; }
no_leftovers() { check "... no temporary file left ($(leftovers | tr '\n' ' '))" test -z "$(leftovers)"; }

g() { # generate on the demo model, 64 x 64, 2 steps
    "$SDC" generate -q -m "$DEMO" -p 'a red fox' -W 64 -H 64 --steps 2 "$@"
}

# ----------------------------------------------------------------------------
echo "PNG images"
mkdir -p "$M/png"
runs "a first image, a.png" g -o "$M/png/a.png"
cp "$M/png/a.png" "$W/a.png"
fill_to 4096
refused "a second image on the full disk: refused naming b.png" "b.png: .*$NOSPC" g -o "$M/png/b.png"
check "... no b.png" test ! -e "$M/png/b.png"
refused "a.png again (another seed) on the full disk: refused" "a.png: .*$NOSPC" g --seed 7 -o "$M/png/a.png"
check "... the earlier a.png intact" cmp "$W/a.png" "$M/png/a.png"
no_leftovers
unfill
# a batch of 3 with room for about one and a half: the first stays, and
# --skip-existing then makes the other two, as an uninterrupted run does
runs "reference: a batch of 3 on the normal disk" g -b 3 -o "$W/ref/s.png"
fill_to $(($(size_of "$W/ref/s.png") * 3 / 2))
refused "a batch of 3 with room for one and a half: refused naming s_2.png" "s_2.png: .*$NOSPC" g -b 3 -o "$M/png/s.png"
check "... s.png, made before the disk filled, is whole" cmp "$W/ref/s.png" "$M/png/s.png"
check "... no s_2.png" test ! -e "$M/png/s_2.png"
no_leftovers
unfill
runs "space freed, the same command with --skip-existing" g -b 3 -o "$M/png/s.png" --skip-existing
for f in s s_2 s_3; do check "... $f.png == the uninterrupted run's" cmp "$W/ref/$f.png" "$M/png/$f.png"; done

# ----------------------------------------------------------------------------
echo "HDF5 sweep (--output-h5)"
runs "reference: a 12-item sweep on the normal disk" g -b 12 --output-h5 "$W/ref/g.h5"
fill_to $(($(size_of "$W/ref/g.h5") / 2))
refused "the sweep into a disk with room for half of it: refused naming g.h5" "g.h5: .*$NOSPC" \
    g -b 12 --output-h5 "$M/g.h5"
# every item marked done holds its image; some were done before the disk filled
runs "... every item marked done holds the reference image" /usr/bin/python3 -c "
import h5py, numpy as np, sys
a, b = h5py.File('$W/ref/g.h5', 'r'), h5py.File('$M/g.h5', 'r')
done = b['done'][:]
bad = [i for i in range(12) if done[i] and not np.array_equal(a['images'][i], b['images'][i])]
print(f'{int(done.sum())} of 12 done, {len(bad)} of them wrong')
sys.exit(1 if bad or not 0 < done.sum() < 12 else 0)"
has "... some items were done before the disk filled, not all" ' of 12 done, 0 of them wrong'
no_leftovers
unfill
runs "space freed, the same command: resumes" g -b 12 --output-h5 "$M/g.h5"
runs "... the file equals the uninterrupted sweep (h5_interop.py compare)" $H5PY compare "$W/ref/g.h5" "$M/g.h5"
fill_to 4096
refused "a new sweep on the full disk: refused naming g2.h5" "g2.h5.*$NOSPC" g -b 12 --output-h5 "$M/g2.h5"
check "... no g2.h5" test ! -e "$M/g2.h5"
no_leftovers
unfill

# ----------------------------------------------------------------------------
echo "dataset import"
mkdir -p "$W/src"
cp "$IMGS"/exif_*.jpg "$W/src/"
imp() { "$SDC" dataset import -q --resolution 64 "$@" "$W/src"; }
runs "a first dataset, d.h5" imp -p x -o "$M/d.h5"
cp "$M/d.h5" "$W/d.h5"
fill_to 4096
refused "d.h5 again (other captions) on the full disk: refused naming d.h5" "d.h5.*$NOSPC" imp -p y -o "$M/d.h5"
check "... the earlier d.h5 intact" cmp "$W/d.h5" "$M/d.h5"
no_leftovers
unfill
fill_to $(($(size_of "$W/d.h5") / 2))
refused "a new dataset with room for half of it: refused naming e.h5" "e.h5.*$NOSPC" imp -p x -o "$M/e.h5"
check "... no e.h5" test ! -e "$M/e.h5"
no_leftovers
unfill

# ----------------------------------------------------------------------------
echo "sdc convert: .h5 checkpoint, .safetensors, diffusers folder"
cv() { "$SDC" convert -q "$@"; }
runs "a first checkpoint, c.h5" cv -m "$DEMO" -o "$M/c.h5"
runs "a first c.safetensors" cv -m "$DEMO" -o "$M/c.safetensors"
runs "a first diffusers folder, cdir/ (from tiny-sd2)" cv -m "$SRC/tests/fixtures/tiny-sd2" -o "$M/cdir"
cp "$M/c.h5" "$M/c.safetensors" "$W/"
(cd "$M" && find cdir -type f | sort | xargs md5sum) > "$W/cdir.md5"
fill_to 1000000
for out in c.h5 c.safetensors; do
    refused "$out again (from tiny-sd2) with 1 MB free: refused naming it" "$out.*$NOSPC" \
        cv -m "$SRC/tests/fixtures/tiny-sd2" -o "$M/$out"
    check "... the earlier $out intact" cmp "$W/$out" "$M/$out"
done
refused "cdir/ again (from the demo model) with 1 MB free: refused naming it" "cdir.*$NOSPC" \
    cv -m "$DEMO" -o "$M/cdir"
check "... every file of the earlier cdir/ intact, none added" \
    sh -c "cd '$M' && find cdir -type f | sort | xargs md5sum | cmp -s - '$W/cdir.md5'"
refused "a new folder cdir2/ with 1 MB free: refused naming it" "cdir2.*$NOSPC" cv -m "$DEMO" -o "$M/cdir2"
check "... no cdir2/" test ! -e "$M/cdir2"
no_leftovers
unfill
runs "space freed: the earlier c.h5 still converts (a valid checkpoint)" cv -m "$M/c.h5" -o "$W/back.safetensors"

# ----------------------------------------------------------------------------
echo "DreamBooth checkpoints"
train() { "$SDC" train dreambooth --pretrained-model "$DEMO" --instance-data "$W/src" \
           --instance-prompt 'a photo of sks dog' --resolution 64 --max-train-steps 2 --checkpointing-steps 1 -t 1 "$@"; }
runs "reference: 2 steps, a checkpoint after each, on the normal disk" train --output-dir "$W/ref/t"
ck=$(size_of "$W/ref/t/checkpoint-1.h5")
inst=$(size_of "$W/ref/t/instance.h5")
fill_to $((inst + ck + ck / 2 + 65536))
refused "the same run with room for one checkpoint and a half: refused naming checkpoint-2.h5" \
    "checkpoint-2.h5.*$NOSPC" train --output-dir "$M/t"
check "... checkpoint-1.h5 is there" test -s "$M/t/checkpoint-1.h5"
check "... no checkpoint-2.h5" test ! -e "$M/t/checkpoint-2.h5"
no_leftovers
unfill
runs "space freed, the same command with --resume-from-checkpoint latest" train --output-dir "$M/t" \
    --resume-from-checkpoint latest
has "... resumed from checkpoint-1.h5" 'resumed from .*checkpoint-1.h5'
check "... its model.safetensors is bit-identical to the uninterrupted run's" \
    cmp "$W/ref/t/model.safetensors" "$M/t/model.safetensors"

finish
