#!/bin/sh
# Packs this machine's optimised build for a GPU machine that has none of our Debian packages:
# the stripped `mambabyte`, `test_gpu` and `bench_gpu`, the CUDA backend (xz), and the shared
# libraries they need beyond what any Linux with CUDA has (libmicrohttpd, libcjson,
# libsentencepiece and what they load: gnutls and its kin; libcurl and the C/C++ runtimes come
# from the machine itself: a libcurl carried from here broke that machine's own curl). ~15 MB.
#
# usage: tools/device_pack.sh DIR      (then carry DIR; on the machine: sh DIR/unpack.sh)
# unpack.sh puts the binaries into build/rel (so `make test-gpu`'s scripts and bench/*.sh find
# them) and prints the environment to use: LD_LIBRARY_PATH=DIR, MB_CUDA_LIB=...
set -e
[ $# = 1 ] || { sed -n 2,10p "$0"; exit 2; }
case $1 in /*) DIR=$1 ;; *) DIR=$PWD/$1 ;; esac
cd "$(dirname "$0")/.."
make build/rel/mambabyte build/rel/tests/gpu/test_gpu build/rel/bench_gpu build/rel/libmambabyte_cuda.so
rm -rf "$DIR"
mkdir -p "$DIR"
strip -o "$DIR/mambabyte" build/rel/mambabyte
strip -o "$DIR/test_gpu" build/rel/tests/gpu/test_gpu
strip -o "$DIR/bench_gpu" build/rel/bench_gpu
xz -T0 -c build/rel/libmambabyte_cuda.so >"$DIR/libmambabyte_cuda.so.xz"
for lib in $(ldd build/rel/mambabyte | awk '/libmicrohttpd|libcjson|libsentencepiece/ {print $3}'); do
    echo "$lib"
    ldd "$lib" | awk '$3 ~ /^\// && !/libc\.so|libm\.so|libstdc\+\+|libgcc_s|ld-linux|libpthread|libdl\.|librt\.|libresolv/ {print $3}'
done | sort -u | while read -r lib; do cp -L "$lib" "$DIR/"; done
cat >"$DIR/unpack.sh" <<'EOF'
#!/bin/sh
# Puts the packed binaries into build/rel; run from the repository root.
set -e
P=$(cd "$(dirname "$0")" && pwd)
mkdir -p build/rel/tests/gpu
[ -f "$P/libmambabyte_cuda.so" ] || xz -dk "$P/libmambabyte_cuda.so.xz"
cp "$P/mambabyte" "$P/bench_gpu" "$P/libmambabyte_cuda.so" build/rel/
cp "$P/test_gpu" build/rel/tests/gpu/
echo "export LD_LIBRARY_PATH='$P'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} MB_CUDA_LIB='$PWD/build/rel/libmambabyte_cuda.so'"
EOF
du -sh "$DIR"
