#!/usr/bin/env bash
# GPU check, one prepared script for a CUDA machine without internet (≤ 8 minutes):
#   the real SFT (full fine-tuning, bf16 autocast) and DPO (LoRA, bf16 weights) jobs on a randomly
#   initialised ~0.5B-parameter Llama, each run alone and then under Refinery (private Temporal +
#   MinIO, a worker owning GPU 0); tokens/s and GPU utilisation (nvidia-smi) side by side.
#
#   bash bench/gpu-check.sh [--steps 60] [--batch 8] [--max-length 1024]
#   bash bench/gpu-check.sh --cpu-smoke     # the same script end to end on CPU with a tiny model
#                                           # (checks the plumbing on a machine without a GPU)
#
# What the machine needs (no network is used): this repo with node_modules; the Temporal CLI and
# MinIO binaries named in .refinery/toolchain.json (or REFINERY_STATE_DIR/toolchain.json); a Python
# env with jobs/requirements.txt installed from wheels brought along (docs/benchmarks.md says how
# to `pip download` them), given as REFINERY_PYTHON or toolchain.json's "python"; an NVIDIA driver
# recent enough for the CUDA runtime of those wheels. The report goes to stdout and, when $OUT is
# set, to $OUT/gpu-check.txt (with nvidia-smi -q in $OUT/nvidia-smi.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$(date +%s)
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}   # leaves headroom under 8 minutes
say() { printf '[gpu-check %3ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

SMOKE=0
for a in "$@"; do [[ "$a" == --cpu-smoke ]] && SMOKE=1; done

# --- the machine ----------------------------------------------------------------------------------
if (( ! SMOKE )); then
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this check needs an NVIDIA GPU and driver"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || die "nvidia-smi cannot talk to the driver"
fi
command -v node >/dev/null || die "node not found (Node >= 20.5)"
[[ -d node_modules/tsx ]] || die "node_modules missing: copy the repo with node_modules (npm ci needs the registry)"
STATE="${REFINERY_STATE_DIR:-$ROOT/.refinery}"
TOOLCHAIN="$STATE/toolchain.json"
[[ -f "$TOOLCHAIN" ]] || die "$TOOLCHAIN missing: it names the temporal, minio and python binaries (infra/bootstrap.sh writes it)"
field() { node -e 'const t=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));process.stdout.write(t[process.argv[2]]||"")' "$TOOLCHAIN" "$1"; }
for b in temporal minio; do
  bin="$(field "$b")"
  [[ -x "$bin" ]] || die "$b binary '$bin' (from $TOOLCHAIN) is not executable here"
done
PY="${REFINERY_PYTHON:-$(field python)}"
[[ -x "$PY" ]] || die "python '$PY' not executable: set REFINERY_PYTHON to the env built from the wheels"
export REFINERY_PYTHON="$PY"
"$PY" - "$SMOKE" <<'EOF' >&2 || die "the Python env cannot use the GPU (see above)"
import sys, torch, transformers, trl, peft
assert sys.argv[1] == "1" or torch.cuda.is_available(), f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
if not torch.cuda.is_available():
    print("CPU smoke run: no GPU"); raise SystemExit(0)
print(f"torch {torch.__version__} CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}; "
      f"transformers {transformers.__version__}, trl {trl.__version__}, peft {peft.__version__}")
EOF
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# --- the model and the data ------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/refinery-gpu-check-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
DATA=(demo/data/sft.jsonl demo/data/preference.jsonl demo/data/prompts.jsonl)
if (( SMOKE )); then
  say "CPU smoke run: a tiny Llama and short synthetic data in $WORK"
  DIMS=(--hidden 64 --intermediate 128 --layers 2 --heads 4 --kv-heads 2)
  ROWS=(--rows 64 --words 200)
else
  say "building a random ~0.5B Llama (hidden 1536, 20 layers, GQA 12/4 heads) and long synthetic data in $WORK"
  DIMS=()
  ROWS=(--rows 512 --words 1500)
fi
(cd jobs && "$PY" ../bench/jobs/make_bench_model.py --out "$WORK/model" --data "${DATA[@]/#/../}" "${DIMS[@]}") >&2
"$PY" bench/jobs/make_bench_data.py --out "$WORK/data" --source demo/data/sft.jsonl "${ROWS[@]}" >&2

# --- the runs ---------------------------------------------------------------------------------------
LEFT=$(( BUDGET_S - ($(date +%s) - START) ))
(( LEFT > 120 )) || die "only ${LEFT}s left for the runs"
say "running the jobs alone, then under Refinery (at most ${LEFT}s)"
REPORT="$WORK/gpu-check.txt"
set +e
timeout --kill-after=10 "$LEFT" node --import "$ROOT/node_modules/tsx/dist/esm/index.mjs" bench/gpu-check.ts \
  --model "$WORK/model" --data "$WORK/data" "$@" | tee "$REPORT"
RC=${PIPESTATUS[0]}
set -e
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  cp "$REPORT" "$OUT/gpu-check.txt"
  nvidia-smi -q > "$OUT/nvidia-smi.txt" 2>&1 || true
fi
(( RC == 124 )) && die "timed out after ${LEFT}s (lower --steps or --max-length)"
(( RC == 0 )) || die "bench/gpu-check.ts exited $RC"
say "done"
