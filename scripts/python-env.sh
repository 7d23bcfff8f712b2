#!/usr/bin/env bash
# Creates (once) a virtualenv with the Python tools the tests and benchmarks use; prints its python.
source "$(dirname "$0")/lib.sh"
venv="$BITSCALE_CACHE/venv"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c 'import openai' 2>/dev/null || "$venv/bin/pip" install -q 'openai>=1.50'
echo "$venv/bin/python"
