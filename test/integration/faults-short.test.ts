/**
 * The fault-injection suite's short form (faults/run.ts --short): one fault of each kind — worker
 * kill -9, Temporal dev server kill -9 and restart, MinIO down mid-upload, a corrupt committed
 * checkpoint, a full scratch disk, a hung job, a cancel — on its own private stack, then every
 * invariant checked per run. The long form and its figures: docs/reliability.md.
 */
import { describe, expect, it } from 'vitest';
import { FAULT_KINDS, runFaultSuite } from '../../faults/run.js';

describe('fault injection, short form', () => {
  it('every invariant holds under one fault of each kind', async () => {
    const result = await runFaultSuite({ short: true, seed: 20261129 });
    console.log(result.table);

    // Every kind ran (the full-disk fault needs root to mount a small filesystem).
    const ran = new Set(result.runs.map((r) => r.kind));
    const skipped = result.skipped.map((s) => s.kind);
    expect([...ran, ...skipped].sort()).toEqual([...FAULT_KINDS].sort());
    if (process.getuid?.() === 0) expect(result.skipped).toEqual([]);

    for (const run of result.runs) {
      const what = `${run.kind} (${run.runId}): ${run.fault.detail}`;
      expect(run.problems, what).toEqual([]);
      expect(run.state, what).toBe(run.expected);
      expect(run.artifactsChecked, what).toBeGreaterThan(0);
      expect(run.artifactsFailed, what).toEqual([]);
      expect(run.auditProblems, what).toEqual([]);
      expect(run.duplicates, what).toBe(0);
      expect(run.orphans, what).toEqual([]);
      if (run.kind !== 'cancel') {
        expect(run.fault.stepsLost, what).not.toBeNull();
        expect(run.fault.stepsLost!, what).toBeLessThanOrEqual(run.fault.bound);
      }
    }
    // Faults that kill an attempt must have made the stage resume from a checkpoint.
    for (const kind of ['worker-kill', 'corrupt-checkpoint', 'job-hang'] as const) {
      const run = result.runs.find((r) => r.kind === kind)!;
      expect(run.fault.retried, `${kind} retried`).toBe(true);
    }
    expect(result.problems).toEqual([]);
    expect(result.ok).toBe(true);
  });
});
