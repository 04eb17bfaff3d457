#!/bin/bash
# bench/devkit.sh - pack, here, what the lent GPU machine needs to run the GPU checks without
# building anything there (it has nvcc and torch, but none of our Debian libraries and no network):
#
#   .devkit/kit.tar.xz   build/lora, build/liblora_cuda.so (every architecture the Makefile lists),
#                        build/tests, build/tests-gpu, build/tools, and lib/: the shared libraries they
#                        load that are not glibc's, libstdc++'s or CUDA's (libarchive, OpenBLAS, ...)
#   .devkit/site/        bitsandbytes (the peer of bench/train_gpu.sh), cut to its CUDA 13 and CPU
#                        libraries so that it fits the 64 MiB a device call may carry
#
# then prints the device call:   run  carry [".devkit"]  command "bash bench/device_check.sh"
# Needs nvcc (the CUDA toolkit), the build's Debian packages, and pip (PyPI) for the wheel.
set -eu
cd "$(dirname "$0")/.."
K=.devkit
BNB=${BNB_VERSION:-0.50.2}
PY=${PYTHON:-python3}

grep -qx '/.devkit/' .git/info/exclude 2>/dev/null || echo '/.devkit/' >>.git/info/exclude
tests=$(ls tests/unit/test_*.c | sed 's|^tests/unit/|build/tests/|; s|\.c$||')
make -j"$(nproc)" lora tools $tests build/tests/test_simt build/tests/test_kernels build/tests-gpu/test_kernels
[ -f build/liblora_cuda.so ] || { echo "devkit: no build/liblora_cuda.so (is nvcc installed?)" >&2; exit 1; }

rm -rf "$K" && mkdir -p "$K/stage/build" "$K/stage/lib" "$K/site"
cp -a build/lora build/liblora_cuda.so build/tests build/tests-gpu build/tools "$K/stage/build/"
find "$K/stage/build" -type f \( -perm -u+x -o -name '*.so' \) -print0 |
	xargs -0 ldd 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u |
	grep -vE '/(libc|libm|libdl|libpthread|librt|libresolv|libutil|libgcc_s|libstdc\+\+)\.so|/ld-linux|/lib(cuda|cudart|cublas|cublasLt|nv)[^/]*$' |
	while read -r so; do cp -L "$so" "$K/stage/lib/"; done
tar -C "$K/stage" -cJf "$K/kit.tar.xz" build lib
rm -rf "$K/stage"

w=$(mktemp -d)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	-d "$w" "bitsandbytes==$BNB"
(cd "$K/site" && unzip -q "$w"/bitsandbytes-*.whl)
find "$K/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*cuda13*' ! -name '*cpu*' -delete
rm -rf "$w"

du -sh "$K"/* | sed 's/^/devkit: /'
echo 'devkit: on the GPU machine: run with carry [".devkit"] and command "bash bench/device_check.sh"'
