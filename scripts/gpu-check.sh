#!/usr/bin/env bash
# Checks a cuda build of bitscale-engine on a GPU machine: serves SmolLM2-135M-Instruct at each
# level, checks that its greedy answer to the capital of France names Paris, and
# measures decode tokens/s at 1, 8 and 64 streams and prefill tokens/s with `bitscale-engine bench`.
# Needs only the binary, python3 and the model file: no network, no Rust.
#
#   scripts/gpu-check.sh [BINARY]       BINARY defaults to target/release/bitscale-engine
#
# Environment:
#   DEVICE=cuda          `cpu` runs the same steps on the CPU (to check the script without a GPU)
#   BITSCALE_MODELS      where smollm2-135m-instruct/ is (scripts/fetch-smollm2.sh puts it there)
#   LEVELS="bf16 q8_0 q4_k"   STREAMS=1,8,64   DURATION=15s (per bench level)
#   SHAPES=tinyllama-1.1b      generated models measured after SmolLM2 at SHAPE_LEVELS (default
#                        LEVELS), with the same benches but no answer check (random weights);
#                        generated on the machine by the binary (`gen-test-model`, 2.2 GB f16),
#                        into GENERATED (default $BITSCALE_MODELS/generated). SHAPES= skips them.
#   DECODE_TOKENS=128 (prompt and generated tokens per decode request)   PREFILL_TOKENS=1024
#   PORT=18431           THREADS (serve --threads; default: the CPU quota)
#   CUDA_LIBS            folders with libcublas.so.13, libcurand.so.10, libnvrtc.so.13,
#                        libcudart.so.13 (and libcuda.so.1 if not on the system), `:`-separated
#   RESULTS=gpu-check.tsv     one line per measurement; the raw bench JSON goes beside it
# The prefix cache is off: bench repeats one prompt, whose cached KV would hide the prefill.
#
# Logits are not compared with the CPU path here (`eval` has no --device yet); the greedy answer
# at each level stands for them.
source "$(dirname "$0")/lib.sh"

BIN="${1:-$ROOT/target/release/bitscale-engine}"
DEVICE="${DEVICE:-cuda}"
LEVELS="${LEVELS:-bf16 q8_0 q4_k}"
STREAMS="${STREAMS:-1,8,64}"
DURATION="${DURATION:-15s}"
DECODE_TOKENS="${DECODE_TOKENS:-128}"
PREFILL_TOKENS="${PREFILL_TOKENS:-1024}"
PORT="${PORT:-18431}"
RESULTS="${RESULTS:-gpu-check.tsv}"
RAW="${RESULTS%.tsv}-raw"
MODEL="$BITSCALE_MODELS/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
SHAPES="${SHAPES-tinyllama-1.1b}"
SHAPE_LEVELS="${SHAPE_LEVELS:-$LEVELS}"
GENERATED="${GENERATED:-$BITSCALE_MODELS/generated}"
NAME=smollm2-135m

[[ -x "$BIN" ]] || die "no bitscale-engine binary at $BIN"
[[ -f "$MODEL" ]] || die "no model at $MODEL (run scripts/fetch-smollm2.sh where there is network, then copy it)"
command -v python3 >/dev/null || die "python3 is needed (HTTP calls and JSON)"
[[ -n "${CUDA_LIBS:-}" ]] && export LD_LIBRARY_PATH="$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if missing=$(ldd "$BIN" | grep 'not found'); then
    die "$BIN cannot load its libraries (set CUDA_LIBS to where they are):"$'\n'"$missing"
fi
mkdir -p "$RAW"
URL="http://127.0.0.1:$PORT"
printf 'model\tlevel\tdevice\tmetric\tstreams\tvalue\n' >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$NAME" "$@" | tee -a "$RESULTS"; }

SERVER=
stop_server() {
    [[ -n "$SERVER" ]] || return 0
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=
}
trap stop_server EXIT

# GET or POST (with a JSON body) to the server; prints the response body.
http() {
    python3 - "$URL$1" "${2:-}" <<'PY'
import sys, urllib.request
url, body = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, data=body.encode() if body else None,
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=300) as r:
    sys.stdout.write(r.read().decode())
PY
}

# The greedy chat answer to a question.
ask() {
    http /v1/chat/completions "$(python3 -c 'import json, sys; print(json.dumps({"model": "smollm2",
        "temperature": 0, "max_tokens": 32, "messages": [{"role": "user", "content": sys.argv[1]}]}))' "$1")" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'
}

serve() {
    local level=$1 log="$RAW/serve-$NAME-$1.log" threads=()
    [[ -n "${THREADS:-}" ]] && threads=(--threads "$THREADS")
    "$BIN" serve --model "$MODEL" --quantization "$level" --device "$DEVICE" --port "$PORT" \
        --served-model-name smollm2 --max-running 64 --max-waiting 256 --prefix-cache-entries 0 \
        "${threads[@]}" \
        --log-format text >"$log" 2>&1 &
    SERVER=$!
    for _ in $(seq 600); do
        http /ready >/dev/null 2>&1 && return 0
        kill -0 "$SERVER" 2>/dev/null || { tail -5 "$log" >&2; die "serve at $level exited during start"; }
        sleep 0.5
    done
    die "serve at $level not ready within 300 s (log: $log)"
}

# Decode tokens/s at each of STREAMS and prefill tokens/s at one stream, for the level served.
measure() {
    local level=$1
    "$BIN" bench --url "$URL" --concurrency "$STREAMS" --prompt-tokens "$DECODE_TOKENS" \
        --max-tokens "$DECODE_TOKENS" \
        --duration "$DURATION" >"$RAW/decode-$NAME-$level.json"
    python3 - "$RAW/decode-$NAME-$level.json" <<'PY' | while read -r streams tps; do record "$level" "$DEVICE" decode_tok_s "$streams" "$tps"; done
import json, sys
for l in json.load(open(sys.argv[1]))["levels"]:
    print(l["concurrency"], round(l["generated_tokens_per_s"], 1) if l["errors"] == 0 else "errors")
PY

    # One stream, one generated token: the time to first token is the prefill of the prompt.
    "$BIN" bench --url "$URL" --concurrency 1 --prompt-tokens "$PREFILL_TOKENS" --max-tokens 1 \
        --duration "$DURATION" >"$RAW/prefill-$NAME-$level.json"
    tps=$(python3 - "$RAW/prefill-$NAME-$level.json" <<'PY'
import json, sys
l = json.load(open(sys.argv[1]))["levels"][0]
print(round(l["mean_prompt_tokens"] / l["ttft_s"]["p50"], 1) if l["ttft_s"] and l["errors"] == 0 else "errors")
PY
    )
    record "$level" "$DEVICE" prefill_tok_s 1 "$tps"
}

failed=0
say "$BIN on $DEVICE, levels: $LEVELS; shapes: ${SHAPES:-none}; results in $RESULTS"
for level in $LEVELS; do
    say "$level: loading"
    serve "$level"

    # "What is the capital of France?" starts on a near-tie even in f32 ("The" vs "L", which
    # leads to a French non-answer; see engine/tests/smollm2.rs), so rounding alone can flip it:
    # its answer is recorded, and the imperative phrasing, stable across levels, is what must pass.
    for q in "What is the capital of France?" "Name the capital of France."; do
        answer=$(ask "$q")
        say "$level: $q -> $answer"
        metric=paris_what_is
        [[ "$q" == Name* ]] && metric=paris
        if [[ "$answer" == *Paris* ]]; then record "$level" "$DEVICE" "$metric" 1 ok; else
            record "$level" "$DEVICE" "$metric" 1 no
            [[ "$metric" == paris ]] && failed=1
        fi
    done
    measure "$level"
    stop_server
done

for shape in $SHAPES; do
    MODEL="$GENERATED/$shape/test-llama.gguf" NAME="$shape"
    if [[ ! -f "$MODEL" ]]; then
        say "$shape: generating the model (random weights, f16)"
        "$BIN" --log-format text gen-test-model --shape "$shape" --out "$(dirname "$MODEL")" >/dev/null
    fi
    for level in $SHAPE_LEVELS; do
        say "$shape $level: loading"
        serve "$level"
        measure "$level"
        stop_server
    done
done

((failed == 0)) || die "the Paris check failed at some level (see $RESULTS)"
say "done: $RESULTS"
