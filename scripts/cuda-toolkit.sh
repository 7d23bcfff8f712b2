#!/usr/bin/env bash
# A CUDA toolkit for building the engine's `cuda` feature, from NVIDIA's PyPI wheels (no system
# install, no GPU needed), in ${BITSCALE_CACHE:-$HOME/.cache/bitscale}/cuda.
#
#   scripts/cuda-toolkit.sh                 install if needed, print `export` lines for eval
#   eval "$(scripts/cuda-toolkit.sh)"       the same, into the current shell
#   scripts/cuda-toolkit.sh CMD [ARGS...]   install if needed, run CMD in that environment, e.g.
#   scripts/cuda-toolkit.sh cargo build --release -p bitscale-engine --features cuda
#
# What candle 0.11's CUDA backend reads at build time:
#   - nvcc on PATH (cudaforge compiles candle-kernels' .cu files to PTX and a static lib; cudarc
#     takes the CUDA version from `nvcc --version`),
#   - CUDA_ROOT / CUDA_PATH / CUDA_HOME (cudarc's link search: lib/ and lib/stubs/),
#   - CUDA_COMPUTE_CAP (default 90, Hopper; there is no nvidia-smi to ask),
#   - unversioned libcudart/libcublas/libcublasLt/libcurand/libnvrtc .so files to link against,
#     and libcuda.so, the driver, which no wheel ships: a stub is generated into lib/stubs/.
# The stub only satisfies the linker (every entry point returns CUDA_ERROR_STUB_LIBRARY); at run
# time the binary loads the real driver's libcuda.so.1, so lib/stubs/ is never on LD_LIBRARY_PATH.
#
# CUDA 13.0: the CUDA 12 nvcc wheels ship ptxas but not nvcc itself, and cudarc 0.19 supports up to
# 13.4. The oldest 13.x keeps the PTX (ISA 9.0) loadable by every CUDA 13 driver (R580 and newer).
# Idempotent: a second run only prints the environment.
source "$(dirname "$0")/lib.sh"

WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)
CUDA_DIR="$BITSCALE_CACHE/cuda"
TOOLKIT="$CUDA_DIR/pkgs/nvidia/cu13"
STAMP="$CUDA_DIR/.installed"
# Bump when the layout made below changes, so existing caches are rebuilt.
LAYOUT=2
WANT="layout=$LAYOUT ${WHEELS[*]}"

install_toolkit() {
    command -v python3 >/dev/null || die "python3 with pip is needed to install the CUDA wheels"
    command -v cc >/dev/null || die "a C compiler (cc) is needed for nvcc and the driver stub"
    say "installing CUDA 13.0 wheels into $CUDA_DIR (about 1.2 GB)"
    rm -rf "$CUDA_DIR/pkgs" "$STAMP"
    mkdir -p "$CUDA_DIR"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$CUDA_DIR/pkgs" "${WHEELS[@]}" \
        || die "pip could not install the CUDA wheels"
    [[ -x "$TOOLKIT/bin/nvcc" ]] || die "no nvcc in $TOOLKIT/bin after installing the wheels"

    # The wheels ship only sonames (libcublas.so.13); the linker looks for libcublas.so.
    local lib so
    for lib in cudart cublas cublasLt curand nvrtc; do
        so=$(cd "$TOOLKIT/lib" && ls "lib$lib.so."* 2>/dev/null | grep -E "^lib$lib\.so\.[0-9]+$" | head -1) \
            || die "no lib$lib.so.* in $TOOLKIT/lib"
        ln -sfn "$so" "$TOOLKIT/lib/lib$lib.so"
    done

    # A driver stub exporting every cu* entry point that cuda.h names, before and after its
    # `#define cuX cuX_v2` renames, each returning CUDA_ERROR_STUB_LIBRARY (34).
    say "generating the libcuda.so link stub"
    mkdir -p "$TOOLKIT/lib/stubs"
    { cc -E -P -x c -I"$TOOLKIT/include" "$TOOLKIT/include/cuda.h"; cat "$TOOLKIT/include/cuda.h"; } \
        | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (' | sort -u \
        | awk '{ printf "int %s(void) { return 34; }\n", $1 }' >"$TOOLKIT/lib/stubs/cuda_stub.c"
    [[ -s "$TOOLKIT/lib/stubs/cuda_stub.c" ]] || die "found no driver entry points in cuda.h"
    cc -shared -fPIC -fno-builtin -Wl,-soname,libcuda.so.1 -o "$TOOLKIT/lib/stubs/libcuda.so" \
        "$TOOLKIT/lib/stubs/cuda_stub.c" || die "could not build the libcuda.so stub"
    # Under its soname too, so a cuda build can start here for `--device cpu` runs and for the
    # "no CUDA driver" error path: LD_LIBRARY_PATH=$TOOLKIT/lib:$TOOLKIT/lib/stubs.
    ln -sfn libcuda.so "$TOOLKIT/lib/stubs/libcuda.so.1"

    "$TOOLKIT/bin/nvcc" --version | grep -q 'release 13.0' || die "nvcc does not run: $TOOLKIT/bin/nvcc --version"
    echo "$WANT" >"$STAMP"
    say "CUDA toolkit ready in $TOOLKIT"
}

[[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$TOOLKIT/bin/nvcc" ]] || install_toolkit

export CUDA_ROOT="$TOOLKIT" CUDA_PATH="$TOOLKIT" CUDA_HOME="$TOOLKIT"
export PATH="$TOOLKIT/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# For running a cuda build here (cuBLAS, cuRAND, NVRTC); the driver still comes from the system.
export LD_LIBRARY_PATH="$TOOLKIT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if (($#)); then
    exec "$@"
fi
for var in CUDA_ROOT CUDA_PATH CUDA_HOME PATH CUDA_COMPUTE_CAP LD_LIBRARY_PATH; do
    printf 'export %s=%q\n' "$var" "${!var}"
done
