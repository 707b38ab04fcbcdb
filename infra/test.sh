#!/usr/bin/env bash
# README command 2: installs what is missing (cached), then typecheck, lint, the unit and
# integration suites (vitest, against a private Temporal dev server + MinIO it starts itself),
# and the Python jobs' own tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash infra/bootstrap.sh
PY="$(node -e 'console.log(require("./.refinery/toolchain.json").python)')"

echo "[test] typecheck"; npx tsc --noEmit
echo "[test] lint";      npx eslint .
echo "[test] vitest (unit + integration)"
npx vitest run
echo "[test] python jobs"
(cd jobs && HF_HUB_OFFLINE=1 "$PY" -m unittest discover -s tests -t . 2>&1 | tail -n 30)
