"""Preflight: is this node fit to run a job? (jobs/CONTRACT.md, "Preflight"). Not a job: it takes no --config.

    python -m refinery_jobs.preflight [--runtime torch|python] [--timeout SECONDS]

The worker runs it before each job, with the job's CUDA_VISIBLE_DEVICES (a comma list of GPUs; empty or unset
means CPU only). It checks that every listed device is there and computes correctly:

  --runtime python  standard library only (starts in ~50 ms), for runtimes without torch (the test job): each
                    listed GPU index i has its device node /dev/nvidia<i> (GPU-/MIG- UUIDs, which name no node:
                    /dev/nvidiactl and at least one /dev/nvidia<N>), and a small integer matrix product computed
                    in pure Python equals its known answer (two evaluation orders, a closed form for the sum of its
                    entries, and a checksum recorded here).
  --runtime torch   (default) torch.cuda.is_available() and torch.cuda.device_count() equal to the number listed
                    (when any is listed); on each visible device a seeded 256x256 float32 matmul matches the CPU
                    float64 result (relative error < 2e-2: TF32 passes, wrong numbers do not), and 64 MiB can be
                    allocated, written and summed back; CPU only: the same matmul on the CPU.

It writes exactly one JSON line on REFINERY_EVENTS_FD (stderr when that is not open), then exits 0 (ok) or 1:
  {"event": "preflight", "ok": true, "runtime": "torch", "devices": ["cuda:0"], "seconds": 0.8}
  {"event": "preflight", "ok": false, "runtime": "torch", "devices": ["cuda:0", "cuda:1"], "seconds": 0.3,
   "message": "CUDA_VISIBLE_DEVICES=0,1 names 2 GPUs but 0 are visible"}
`devices` lists what was checked ("cpu", or "cuda:<i>" numbered as the job will see them). Every exception
becomes ok: false with its message. A check still running after --timeout seconds (default 120: a wedged GPU
can hang in its driver) reports ok: false and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from refinery_jobs.contract import Events, log

RUNTIMES = ("torch", "python")
MATMUL_SIZE = 256
MATMUL_RTOL = 2e-2
ALLOC_MIB = 64

# The pure-Python check: A[i][j] = (7i + 3j) % 11 - 5, B[i][j] = (5i + 2j + 1) % 13 - 6, C = A x B (n = 24);
# PY_CHECKSUM = sum over i, j of C[i][j] * (i + 2j + 1), computed once on a known-good machine.
PY_MATRIX_SIZE = 24
PY_CHECKSUM = -1267  # numpy agrees


class PreflightFailed(Exception):
    pass


def visible_devices(raw: str | None) -> list[str]:
    """CUDA_VISIBLE_DEVICES as a list of entries ("0", "GPU-...", ...); empty or unset: []."""
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


def describe(raw: str, listed: list[str]) -> str:
    return f"CUDA_VISIBLE_DEVICES={raw} names {len(listed)} GPU{'s' if len(listed) != 1 else ''}"


# ----------------------------------------------------------------------------------------------
# --runtime python
# ----------------------------------------------------------------------------------------------

def _py_matrices(n: int) -> tuple[list[list[int]], list[list[int]]]:
    a = [[(7 * i + 3 * j) % 11 - 5 for j in range(n)] for i in range(n)]
    b = [[(5 * i + 2 * j + 1) % 13 - 6 for j in range(n)] for i in range(n)]
    return a, b


def python_matmul_check(n: int = PY_MATRIX_SIZE) -> None:
    a, b = _py_matrices(n)
    # row by row (i, j, k) ...
    c1 = [[sum(a[i][k] * b[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
    # ... and as a sum of outer products (k outermost)
    c2 = [[0] * n for _ in range(n)]
    for k in range(n):
        bk = b[k]
        for i in range(n):
            aik = a[i][k]
            row = c2[i]
            for j in range(n):
                row[j] += aik * bk[j]
    if c1 != c2:
        raise PreflightFailed("CPU check failed: two evaluation orders of the same integer matrix product differ")
    total = sum(map(sum, c1))
    closed = sum(sum(a[i][k] for i in range(n)) * sum(b[k]) for k in range(n))  # sum(C) = sum_k colsum_A rowsum_B
    checksum = sum(c1[i][j] * (i + 2 * j + 1) for i in range(n) for j in range(n))
    if total != closed or checksum != PY_CHECKSUM:
        raise PreflightFailed(f"CPU check failed: integer matrix product checksum {checksum} (sum {total}), "
                              f"expected {PY_CHECKSUM} (sum {closed})")


def check_python(raw: str, listed: list[str]) -> list[str]:
    python_matmul_check()
    if not listed:
        return ["cpu"]
    missing = [f"/dev/nvidia{d}" for d in listed if d.isdigit() and not os.path.exists(f"/dev/nvidia{d}")]
    if missing:
        raise PreflightFailed(f"{describe(raw, listed)} but {', '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} missing")
    if any(not d.isdigit() for d in listed):  # UUIDs name no device node: at least the driver and one GPU
        nodes = [f for f in os.listdir("/dev") if f.startswith("nvidia") and f[6:].isdigit()] \
            if os.path.isdir("/dev") else []
        if not os.path.exists("/dev/nvidiactl") or not nodes:
            raise PreflightFailed(f"{describe(raw, listed)} but there is no NVIDIA device node "
                                  "(/dev/nvidiactl, /dev/nvidia<N>)")
    return [f"cuda:{i}" for i in range(len(listed))]


# ----------------------------------------------------------------------------------------------
# --runtime torch
# ----------------------------------------------------------------------------------------------

def torch_matmul_check(torch, device: str) -> None:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(1234)
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=gen, dtype=torch.float32)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=gen, dtype=torch.float32)
    ref = a.double() @ b.double()
    out = (a.to(device) @ b.to(device)).to("cpu").double()
    if not bool(torch.isfinite(out).all()):
        raise PreflightFailed(f"{device}: float32 matmul returned non-finite values")
    err = float((out - ref).abs().max() / ref.abs().max())
    if not err < MATMUL_RTOL:
        raise PreflightFailed(f"{device}: float32 matmul differs from the CPU float64 result "
                              f"(relative error {err:.3g}, limit {MATMUL_RTOL})")


def torch_alloc_check(torch, device: str) -> None:
    n = ALLOC_MIB * (1 << 20) // 4  # float32 elements: 2**24, so the sum of ones is exact in float32
    try:
        x = torch.empty(n, dtype=torch.float32, device=device)
        x.fill_(1.0)
        total = float(x.sum())
    except RuntimeError as e:
        raise PreflightFailed(f"{device}: cannot allocate {ALLOC_MIB} MiB: {str(e)[:300]}") from None
    del x
    if total != float(n):
        raise PreflightFailed(f"{device}: {ALLOC_MIB} MiB of ones sum to {total}, expected {n}")


def check_torch(raw: str, listed: list[str]) -> list[str]:
    import torch
    if not listed:
        torch_matmul_check(torch, "cpu")
        return ["cpu"]
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    if count != len(listed):
        raise PreflightFailed(f"{describe(raw, listed)} but {count} {'is' if count == 1 else 'are'} visible"
                              + ("" if available else " (torch.cuda.is_available() is false)"))
    devices = [f"cuda:{i}" for i in range(count)]
    torch.backends.cuda.matmul.allow_tf32 = False  # check float32 itself (the tolerance would allow TF32)
    for device in devices:
        torch_matmul_check(torch, device)
        torch_alloc_check(torch, device)
        torch.cuda.synchronize(device)
    return devices


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def run(runtime: str, events: Events, timeout: float | None = None) -> bool:
    """Run the checks and emit the one `preflight` event; True when the node is fit."""
    start = time.monotonic()
    raw = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    listed = visible_devices(raw)
    intended = [f"cuda:{i}" for i in range(len(listed))] or ["cpu"]
    lock = threading.Lock()
    reported = []

    def report(ok: bool, devices: list[str], message: str | None = None) -> bool:
        with lock:
            if reported:
                return False
            reported.append(ok)
            fields = {"ok": ok, "runtime": runtime, "devices": devices,
                      "seconds": round(time.monotonic() - start, 3)}
            if message is not None:
                fields["message"] = message
            events.emit("preflight", **fields)
            return True

    if timeout:
        def expire():
            if report(False, intended, f"preflight checks did not finish within {timeout:g} s (a hung device?)"):
                log("preflight timed out")
                os._exit(1)
        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
    try:
        devices = (check_torch if runtime == "torch" else check_python)(raw, listed)
    except PreflightFailed as e:
        report(False, intended, str(e))
    except BaseException as e:  # noqa: BLE001 - every failure is a verdict, not a crash
        report(False, intended, f"{type(e).__name__}: {e}"[:1000])
    else:
        report(True, devices)
    return bool(reported and reported[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Refinery preflight: check the node before a job runs")
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch",
                        help="torch (default): CUDA checks through torch; python: standard library only")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before the checks count as hung")
    args = parser.parse_args(argv)
    ok = run(args.runtime, Events(), timeout=args.timeout)
    log(f"preflight ({args.runtime}): {'ok' if ok else 'NOT ok'}")
    sys.stdout.flush()
    os._exit(0 if ok else 1)  # no interpreter teardown: a wedged CUDA context must not hang the exit


if __name__ == "__main__":
    main()
