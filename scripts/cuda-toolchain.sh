#!/usr/bin/env bash
# Install a CUDA 13.0 build toolchain from PyPI wheels into .cuda-pip/ (ignored by git) and
# print the environment that `cargo build --features cuda` needs. No GPU, driver or system
# CUDA is needed to compile: candle-kernels runs nvcc on its .cu files at build time, and
# cudarc is built with dynamic loading (vendor/README.md), so nothing links against
# libcuda, cuBLAS, cuRAND or NVRTC; they are opened at run time where a GPU is present
# (candle-kernels' moe library gets the static CUDA runtime, see below).
#
#   bash scripts/cuda-toolchain.sh            install (idempotent), then print the env
#   source <(bash scripts/cuda-toolchain.sh)  install and export the env in this shell
#
# Pins: cudarc 0.19 refuses toolkits newer than 13.4 and the cu12 nvcc wheel lacks
# nvcc/cicc, so this takes the 13.0 wheels. CUDA_COMPUTE_CAP defaults to 90 (H100/H200);
# set it for another GPU (80 for A100, 89 for L4/L40).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
D=${CUDA_PIP_DIR:-$root/.cuda-pip}
pkgs=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
if [ ! -x "$D/nvidia/cu13/bin/nvcc" ]; then
    echo "installing the CUDA 13.0 build toolchain into $D (pip wheels)" >&2
    python3 -m pip install -q --no-deps --target "$D" "${pkgs[@]}" >&2
fi
C=$D/nvidia/cu13
[ -x "$C/bin/nvcc" ] || { echo "no nvcc at $C/bin/nvcc after install" >&2; exit 1; }
# candle-kernels links a static library of its own (moe) with `-lcudart`, whose
# constructors register its kernels with the CUDA runtime. Linked dynamically, every
# binary would need libcudart.so.13 to start; so `-lcudart` is pointed, by a linker
# script, at the static runtime (what nvcc does by default): a static cudart registers
# kernels without touching the driver, and loads libcuda only on the first CUDA call.
rm -f "$C/lib/libcudart.so"
echo "INPUT($C/lib/libcudart_static.a)" > "$C/lib/libcudart.so"
# nvcc finds cicc and libdevice through the nvvm wheel's layout
[ -e "$C/nvvm" ] || ln -s "$D/nvidia/nvvm" "$C/nvvm" 2>/dev/null || true
cat <<ENV
export CUDA_HOME=$C
export CUDA_PATH=$C
export PATH=$C/bin:\$PATH
export LIBRARY_PATH=$C/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
ENV
