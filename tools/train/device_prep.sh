#!/bin/sh
# Packs what a session of mambabyte-base training on the device machine carries, in the two calls
# that tools/train/README.md describes ("one run can span calls"), and prints those calls:
#
#   .trdata   INIT's config.json and model.safetensors (as xz), books_valid, books_test and
#             books_train_1 (the first call; ~57 MB, 62 with the working tree)
#   .trdata2  books_train_2, the drafter DRAFT in dinit/ (for run_drafter_base.sh's INIT and
#             bench/spec-gpu.sh), this machine's build in gpurun/ (tools/device_pack.sh) and the
#             training scan's libraries in scan/ (scan_build.py --tests: MB_SCAN_CACHE there)
#
# Both folders are added to .git/info/exclude (ignored, so they travel only where `carry` names
# them). The tracked models/ folder is too large to travel: move it out of the working tree for
# the calls (a tracked file missing from the tree does not travel and breaks nothing).
#
# usage: tools/train/device_prep.sh DATA [INIT] [DRAFT]
#   DATA holds the books_*.txt.xz files; INIT defaults to models/mambabyte-base, DRAFT to
#   models/drafter-base
set -e
[ $# -ge 1 ] || { sed -n 2,16p "$0"; exit 2; }
DATA=$1 INIT=${2:-models/mambabyte-base} DRAFT=${3:-models/drafter-base}
cd "$(dirname "$0")/../.."
for f in books_valid books_test books_train_1 books_train_2; do
    [ -f "$DATA/$f.txt.xz" ] || { echo "device_prep.sh: no $DATA/$f.txt.xz" >&2; exit 1; }
done
for f in "$INIT/config.json" "$INIT/model.safetensors" "$DRAFT/model.safetensors"; do
    [ -f "$f" ] || { echo "device_prep.sh: no $f" >&2; exit 1; }
done
for d in /.trdata/ /.trdata2/; do
    grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >>.git/info/exclude
done
rm -rf .trdata .trdata2
mkdir -p .trdata/init .trdata2/dinit
cp "$INIT/config.json" .trdata/init/
xz -9 -T0 -c "$INIT/model.safetensors" >.trdata/init/model.safetensors.xz
cp "$DATA/books_valid.txt.xz" "$DATA/books_test.txt.xz" "$DATA/books_train_1.txt.xz" .trdata/
cp "$DATA/books_train_2.txt.xz" .trdata2/
cp "$DRAFT"/* .trdata2/dinit/
tools/device_pack.sh .trdata2/gpurun >/dev/null
python3 tools/train/scan_build.py .trdata2/scan --tests >/dev/null
du -sh .trdata .trdata2
cat <<'EOF'
The calls (models/ moved out of the working tree first), back to back:
  1. carry [".trdata"]:
     mkdir -p /root/init /root/data && xz -dc .trdata/init/model.safetensors.xz >/root/init/model.safetensors && cp .trdata/init/config.json /root/init/ && cp .trdata/books_*.xz /root/data/
  2. carry [".trdata2"]:
     cp .trdata2/books_train_2.txt.xz /root/data/ && cp -r .trdata2/dinit /root/dinit && cp -r .trdata2/gpurun /root/gpurun && cp -r .trdata2/scan /root/scan && export MB_SCAN_CACHE=/root/scan && tools/train/detach.sh start /root/run 520 env TB=... WU=100 LR=1e-3 [DO=...] tools/train/run_base.sh /root/data /root/run/m /root/run /root/init
     (the kernels' tests first, no compilation: MB_SCAN_CACHE=/root/scan python3 tools/train/test_scan_triton.py --impl cuda; and test_conv_cuda.py)
     (another shape, DM=... NL=..., starts from scratch: leave out /root/init)
  then wait (for i in $(seq 1 110); do [ -f /root/run/detached.rc ] && break; sleep 5; done), and
  fetch: tools/train/detach.sh fetch /root/run/m/model.safetensors $OUT/base
  a drafter for it (MB_SCAN_CACHE=/root/scan): DS=40 TD=75 WU=50 INIT=/root/dinit NL=2 tools/train/run_drafter_base.sh /root/run/m /root/data /root/d2/m /root/d2
  the pair in the daemon: eval "$(sh /root/gpurun/unpack.sh)"; MODEL=/root/run/m DRAFT=/root/dinit bench/spec-gpu.sh /root/data/books_test.txt.xz
EOF
