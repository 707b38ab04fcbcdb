#!/usr/bin/env bash
# README command 1: the demo pipeline end to end on the embedded local stack.
#   installs the toolchain (cached) → starts Temporal + MinIO → builds the tiny model →
#   starts a worker → runs demo/pipeline.yaml with live progress → prints the artifacts and a
#   generation from the GGUF model through llama.cpp.
# Leaves the stack running (bin/refinery stack stop); the worker stops with this script.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SPEC="${1:-demo/pipeline.yaml}"
REFINERY="$ROOT/bin/refinery"

bash infra/bootstrap.sh
"$REFINERY" stack start
STATE="${REFINERY_STATE_DIR:-$ROOT/.refinery}"
if [[ ! -f demo/models/tiny-llama/config.json ]]; then
  echo "[demo] building the tiny model (no model hub needed)"
  "$REFINERY" make-tiny-model --out demo/models/tiny-llama --data demo/data/sft.jsonl demo/data/preference.jsonl demo/data/prompts.jsonl
fi

mkdir -p "$STATE/logs"
"$REFINERY" worker >"$STATE/logs/demo-worker.log" 2>&1 &
WORKER=$!
trap 'kill -INT $WORKER 2>/dev/null; wait $WORKER 2>/dev/null || true' EXIT
echo "[demo] worker pid $WORKER (log: $STATE/logs/demo-worker.log)"

RUN_ID="demo-$(date +%Y%m%d-%H%M%S)"
"$REFINERY" run "$SPEC" --id "$RUN_ID" --watch
"$REFINERY" gguf-generate --run "$RUN_ID" --stage gguf --prompt "What is the capital of France?"
echo
echo "[demo] Temporal UI:   http://127.0.0.1:8233/namespaces/refinery/workflows/$RUN_ID"
echo "[demo] MinIO console: http://127.0.0.1:9001 (minioadmin / minioadmin)"
