/**
 * The fault-injection suite's short form (faults/run.ts --short): one fault of each kind — worker
 * kill -9, Temporal dev server kill -9 and restart, Temporal down longer than the heartbeat timeout,
 * MinIO down mid-upload, a corrupt committed checkpoint, a full scratch disk, a hung job, a cancel,
 * a worker drained by SIGTERM, a job out of memory, a NaN loss, a node that fails its preflight — on
 * its own private stack, then every invariant checked per run (the kinds' own checks included:
 * faults/kinds/). No kind may be skipped unless REFINERY_FAULTS_ALLOW_SKIP names it (e.g.
 * scratch-full on a machine without root). The killed worker of a real trainer (kind
 * real-worker-kill, ~50 s) is left to `npx tsx faults/run.ts --short` and the long form here: in CI
 * test/integration/real-resume.test.ts kills and resumes the real SFT trainer with stronger checks
 * (the losses after the resume and the final adapter equal an uninterrupted run's). The long form
 * and its figures: docs/reliability.md.
 */
import { describe, expect, it } from 'vitest';
import { OVERLAP_BOUND_MS } from '../../faults/context.js';
import { FAULT_KINDS, runFaultSuite, type FaultKind } from '../../faults/run.js';

describe('fault injection, short form', () => {
  it('every invariant holds under one fault of each kind', async () => {
    const allowSkip = (process.env.REFINERY_FAULTS_ALLOW_SKIP ?? '').split(',').filter(Boolean) as FaultKind[];
    const kinds = FAULT_KINDS.filter((k) => k !== 'real-worker-kill');
    const result = await runFaultSuite({ short: true, seed: 20261129, allowSkip, kinds });
    console.log(result.table);

    // Every kind ran, but for an explicit opt-out.
    const ran = new Set(result.runs.map((r) => r.kind));
    expect(kinds.filter((k) => !ran.has(k) && !allowSkip.includes(k))).toEqual([]);
    expect(result.notAllowed).toEqual([]);

    for (const run of result.runs) {
      const what = `${run.kind} (${run.runId}): ${run.fault.detail}`;
      expect(run.problems, what).toEqual([]);
      expect(run.state, what).toBe(run.expected);
      expect(run.artifactsChecked, what).toBeGreaterThan(0);
      expect(run.artifactsFailed, what).toEqual([]);
      expect(run.auditProblems, what).toEqual([]);
      expect(run.duplicates, what).toBe(0);
      expect(run.orphans, what).toEqual([]);
      // The orphan and overlap checks saw the run's job processes (by session id): not vacuous.
      expect(run.jobSessions, what).toBeGreaterThan(0);
      expect(run.overlaps.filter((o) => o.ms > OVERLAP_BOUND_MS), what).toEqual([]);
      expect(run.uncommitted, what).toEqual([]);
      if (run.kind !== 'cancel') {
        expect(run.fault.stepsLost, what).not.toBeNull();
        expect(run.fault.stepsLost!, what).toBeLessThanOrEqual(run.fault.bound);
      }
    }
    // Faults that end an attempt must have made the stage go on in another one (drain, oom and
    // divergence from a checkpoint; bad-node from the start, on another host).
    for (const kind of ['worker-kill', 'corrupt-checkpoint', 'job-hang', 'drain', 'oom', 'divergence', 'bad-node'] as const) {
      const run = result.runs.find((r) => r.kind === kind)!;
      expect(run.fault.retried, `${kind} retried`).toBe(true);
    }
    expect(result.problems).toEqual([]);
    expect(result.ok).toBe(true);
  });
});
