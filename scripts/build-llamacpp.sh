#!/usr/bin/env bash
# Builds llama.cpp's llama-server, llama-batched-bench, llama-bench and llama-quantize from the sources vendored in the
# PyPI sdist llama-cpp-python==0.3.36, for side-by-side benchmarks (scripts/bench-vs-llamacpp).
#   binaries: ${BITSCALE_CACHE:-$HOME/.cache/bitscale}/llamacpp/0.3.36/bin
# Idempotent: does nothing when the four binaries are already cached. Needs cmake (3.14+) and a C++17
# compiler (Debian: `apt-get install cmake g++`), and pip only when the sdist is not cached yet.
# Takes 15-25 minutes on 2 cores; runs under `nice -n 19` with JOBS (default 2) parallel jobs.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION=0.3.36
BASE="$BITSCALE_CACHE/llamacpp"
SDIST="$BASE/sdist/llama_cpp_python-$VERSION.tar.gz"
BIN="$BASE/$VERSION/bin"
TARGETS=(llama-server llama-batched-bench llama-bench llama-quantize)
JOBS="${JOBS:-2}"

cached=1
for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || cached=0; done
if ((cached)); then
    say "llama.cpp $VERSION binaries are cached in $BIN"
    exit 0
fi

command -v cmake >/dev/null || die "cmake not found (Debian: apt-get install cmake)"
command -v c++ >/dev/null || die "a C++ compiler not found (Debian: apt-get install g++)"

if [[ ! -f "$SDIST" ]]; then
    say "downloading the llama-cpp-python $VERSION sdist"
    mkdir -p "$(dirname "$SDIST")"
    python3 -m pip download --quiet --no-binary :all: --no-deps -d "$(dirname "$SDIST")" \
        "llama-cpp-python==$VERSION"
fi

SRC="$BASE/$VERSION/src"
BUILD="$BASE/$VERSION/build"
if [[ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]]; then
    say "unpacking $SDIST"
    rm -rf "$SRC" && mkdir -p "$SRC"
    tar xzf "$SDIST" -C "$SRC" --strip-components=1
fi

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
say "configuring (Release, GGML_NATIVE=ON, CPU only)"
# Static libraries so the cached binaries run from anywhere; the web UI and HTTPS would need downloads.
nice -n 19 cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" "${GEN[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF >"$BASE/$VERSION/configure.log" 2>&1 ||
    { tail -30 "$BASE/$VERSION/configure.log" >&2; die "cmake configure failed (log: $BASE/$VERSION/configure.log)"; }

say "building ${TARGETS[*]} with $JOBS jobs (15-25 minutes on 2 cores)"
nice -n 19 cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}"

mkdir -p "$BIN"
for t in "${TARGETS[@]}"; do
    install -m 0755 "$BUILD/bin/$t" "$BIN/$t"
done
"$BIN/llama-server" --version 2>&1 | head -2 >&2 || true
say "llama.cpp $VERSION binaries are in $BIN"
