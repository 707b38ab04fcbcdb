#!/usr/bin/env bash
# README command 2: installs what is missing (cached), then typecheck, lint, the vitest suites
# (unit; integration against a private Temporal dev server + MinIO that they start, including the
# demo pipelines trained for real) and the Python jobs' own tests. Ends with one summary line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The suites run with and without payload encryption on their own terms: a key exported in the
# shell must not leak into the workers and bundles they start.
unset REFINERY_PAYLOAD_KEY REFINERY_PAYLOAD_KEY_ID REFINERY_PAYLOAD_KEYS_OLD
bash infra/bootstrap.sh
PY="$(node -p 'require("./.refinery/toolchain.json").python')"
REPORT="$ROOT/.refinery/test-report.json"

echo "[test] typecheck"; npx tsc --noEmit
echo "[test] lint";      npx eslint .
# The Python jobs' tests (CPU-bound training of tiny models) run beside vitest, whose integration
# tests mostly wait on the real stack's I/O: the two overlap instead of adding up. Their output is
# kept apart and printed after. REFINERY_TEST_SERIAL=1 runs them one after the other.
echo "[test] python jobs (jobs/tests) in the background"
PY_LOG="$ROOT/.refinery/python-tests.log"
py_rc=0
if [[ "${REFINERY_TEST_SERIAL:-}" == 1 ]]; then
  (cd jobs && HF_HUB_OFFLINE=1 "$PY" -m unittest discover -s tests -t . >"$PY_LOG" 2>&1) || py_rc=$?
  py_pid=
else
  # One torch thread beside vitest: the integration tests' own training jobs (the nightly loop, the
  # demo) are on the critical path and would otherwise wait for a core this suite holds.
  (cd jobs && exec env HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$PY" -m unittest discover -s tests -t . >"$PY_LOG" 2>&1) &
  py_pid=$!
fi
echo "[test] vitest (unit + integration)"
vitest_rc=0
npx vitest run --reporter=default --reporter=json --outputFile.json="$REPORT" || vitest_rc=$?

echo "[test] python jobs (jobs/tests)"
[[ -n "$py_pid" ]] && { wait "$py_pid" || py_rc=$?; }
py_out="$(cat "$PY_LOG")"
printf '%s\n' "$py_out" | tail -n 25

read -r ts_pass ts_fail < <(node -e '
  const r = require(process.argv[1]);
  console.log(r.numPassedTests, r.numFailedTests + (r.numRuntimeErrorTestSuites || 0));' "$REPORT" 2>/dev/null || echo "0 1")
py_ran=$(printf '%s\n' "$py_out" | sed -nE 's/^Ran ([0-9]+) tests?.*/\1/p' | tail -1)
py_bad=$(printf '%s\n' "$py_out" | awk -F'[=,)]' '/^FAILED \(/ { for (i = 1; i < NF; i++) if ($i ~ /(failures|errors)$/) n += $(i + 1) } END { print n + 0 }')
py_ran=${py_ran:-0}; py_bad=${py_bad:-0}
[[ $py_rc -ne 0 && $py_bad -eq 0 ]] && py_bad=1
echo
echo "tests: $(( ts_pass + py_ran - py_bad )) passed, $(( ts_fail + py_bad )) failed"
[[ $vitest_rc -eq 0 && $py_rc -eq 0 ]]
