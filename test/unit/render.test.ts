// Status rendering for `refinery status` and `run --watch` (client/render.ts).
import { describe, expect, it } from 'vitest';
import { EtaTracker, formatSeconds, renderStatus } from '../../client/render.js';
import type { PipelineStatus, StageStatus } from '../../workflows/types.js';

function stage(over: Partial<StageStatus> & Pick<StageStatus, 'id'>): StageStatus {
  return {
    kind: 'sft',
    state: 'pending',
    attempt: 1,
    step: 0,
    totalSteps: null,
    loss: null,
    metrics: {},
    lastCommittedStep: null,
    resumedFromStep: null,
    ...over,
  };
}

function status(stages: StageStatus[], over: Partial<PipelineStatus> = {}): PipelineStatus {
  return { runId: 'demo-1', pipeline: 'demo', state: 'running', stages, ...over };
}

/** The rendered line of one stage. */
function lineOf(text: string, id: string): string {
  const line = text.split('\n').find((l) => l.trimStart().startsWith(`${id} `));
  if (!line) throw new Error(`no line for ${id} in:\n${text}`);
  return line;
}

describe('renderStatus', () => {
  it('shows a NaN loss as NaN, each attempt that did not complete with its class, and quarantined hosts', () => {
    const text = renderStatus(
      status(
        [
          stage({
            id: 'sft',
            state: 'running',
            attempt: 3,
            step: 13,
            totalSteps: 40,
            loss: 'NaN',
            attempts: [
              { attempt: 1, host: 'gpu-a', outcome: 'drained', reason: 'drained at step 37', failureClass: 'infrastructure', failureKind: 'drained', resumedFromStep: null, checkpoints: 1, lastCheckpointStep: 37, skippedCheckpoints: [], contractViolations: 0 },
              { attempt: 2, host: 'gpu-b', outcome: 'failed', reason: 'job out of memory', failureClass: 'job', failureKind: 'oom', resumedFromStep: 37, checkpoints: 0, lastCheckpointStep: null, skippedCheckpoints: [], contractViolations: 0, adjustments: { batchSize: 4, gradientAccumulation: 2 } },
            ],
          }),
        ],
        { quarantinedHosts: [{ host: 'gpu-c', since: '2026-12-02T03:00:00Z', reason: 'preflight failed: /dev/nvidia0 is missing' }] },
      ),
    );
    expect(lineOf(text, 'sft')).toMatch(/loss NaN\s+attempt 3/);
    expect(text).toMatch(/attempt 1 on gpu-a: drained \(infrastructure: drained, last checkpoint 37\) — drained at step 37/);
    expect(text).toMatch(/attempt 2 on gpu-b: failed \(job: oom, batch 4 x 2\) — job out of memory/);
    expect(text).toMatch(/host gpu-c quarantined since 2026-12-02T03:00:00Z: preflight failed: \/dev\/nvidia0 is missing \(refinery worker clear gpu-c\)/);
  });

  it('a header with the run, the pipeline and the state, then one line per stage', () => {
    const text = renderStatus(status([stage({ id: 'sft' }), stage({ id: 'dpo', kind: 'dpo' })]));
    const lines = text.split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toBe('run demo-1 (demo): running');
    expect(lineOf(text, 'sft')).toMatch(/^ {2}sft\s+sft\s+pending\s*$/);
    expect(lineOf(text, 'dpo')).toMatch(/^ {2}dpo\s+dpo\s+pending\s*$/);
  });

  it('a failed run shows the first line of its error in the header', () => {
    const text = renderStatus(status([], { state: 'failed', error: 'stage sft failed: data error\n  at line 3' }));
    expect(text).toBe('run demo-1 (demo): failed — stage sft failed: data error');
  });

  it('a running stage: progress bar with step/total, loss and ETA', () => {
    const s = stage({ id: 'sft', state: 'running', step: 10, totalSteps: 40, loss: 1.234567 });
    const line = lineOf(renderStatus(status([s]), new Map([['sft', 65]])), 'sft');
    expect(line).toContain(`[${'#'.repeat(5)}${'.'.repeat(15)}] 10/40`);
    expect(line).toContain('loss 1.2346');
    expect(line).toContain('ETA 1:05');
    expect(line).not.toContain('attempt');
  });

  it('the bar is empty at step 0 and full (never longer) past the end', () => {
    expect(lineOf(renderStatus(status([stage({ id: 'a', state: 'running', step: 0, totalSteps: 7 })])), 'a')).toContain(`[${'.'.repeat(20)}] 0/7`);
    expect(lineOf(renderStatus(status([stage({ id: 'a', state: 'running', step: 9, totalSteps: 7 })])), 'a')).toContain(`[${'#'.repeat(20)}] 9/7`);
  });

  it('no bar without a known total; a loss of 0 is still shown', () => {
    const line = lineOf(renderStatus(status([stage({ id: 'sft', state: 'running', step: 3, totalSteps: null, loss: 0 })])), 'sft');
    expect(line).not.toContain('[');
    expect(line).not.toContain('3/');
    expect(line).toContain('loss 0.0000');
  });

  it('attempt and resume point are shown once there was a retry', () => {
    const line = lineOf(renderStatus(status([stage({ id: 'sft', state: 'running', attempt: 3, step: 25, totalSteps: 40, resumedFromStep: 20 })])), 'sft');
    expect(line).toContain('attempt 3');
    expect(line).toContain('resumed@20');
    expect(line).toContain('25/40');
  });

  it('ETA only while running', () => {
    const etas = new Map([['sft', 30]]);
    expect(lineOf(renderStatus(status([stage({ id: 'sft', state: 'completed', step: 40, totalSteps: 40 })]), etas), 'sft')).not.toContain('ETA');
    expect(lineOf(renderStatus(status([stage({ id: 'sft', state: 'running', step: 10, totalSteps: 40 })]), etas), 'sft')).toContain('ETA 0:30');
    expect(lineOf(renderStatus(status([stage({ id: 'sft', state: 'running', step: 10, totalSteps: 40 })])), 'sft')).not.toContain('ETA');
  });

  it('a failed or cancelled stage shows the first line of its error; others do not', () => {
    const text = renderStatus(
      status([
        stage({ id: 'sft', state: 'failed', attempt: 2, error: 'data.jsonl:3: messages[0].role: expected one of "system"\nTraceback ...' }),
        stage({ id: 'dpo', kind: 'dpo', state: 'cancelled', error: 'cancelled by alice' }),
        stage({ id: 'ppo', kind: 'ppo', state: 'completed', error: 'an earlier attempt failed' }),
      ]),
    );
    const sft = lineOf(text, 'sft');
    expect(sft).toContain('— data.jsonl:3: messages[0].role: expected one of "system"');
    expect(sft).toContain('attempt 2');
    expect(text).not.toContain('Traceback');
    expect(lineOf(text, 'dpo')).toContain('— cancelled by alice');
    expect(lineOf(text, 'ppo')).not.toContain('earlier attempt');
  });

  it('shows gate text', () => {
    const line = lineOf(renderStatus(status([stage({ id: 'dpo', state: 'awaiting-approval', gate: 'waiting for approval (24h)' })])), 'dpo');
    expect(line).toContain('awaiting-approval');
    expect(line).toContain('gate: waiting for approval (24h)');
  });

  it('columns line up whatever the id lengths', () => {
    const text = renderStatus(
      status([stage({ id: 'a', kind: 'sft' }), stage({ id: 'a-much-longer-stage-id', kind: 'merge' }), stage({ id: 'mid-id', kind: 'eval' })]),
    );
    const kindColumns = text
      .split('\n')
      .slice(1)
      .map((l) => l.search(/ (sft|merge|eval) /));
    expect(new Set(kindColumns).size).toBe(1);
  });
});

describe('formatSeconds', () => {
  it.each([
    [0, '0:00'],
    [5, '0:05'],
    [59.4, '0:59'],
    [59.6, '1:00'],
    [65, '1:05'],
    [3599, '59:59'],
    [3600, '1h00m'],
    [3661, '1h01m'],
    [90_000, '25h00m'],
    [-5, '0:00'],
  ])('%d s → %s', (seconds, text) => {
    expect(formatSeconds(seconds)).toBe(text);
  });
});

describe('EtaTracker', () => {
  const running = (step: number, totalSteps: number | null = 100) => status([stage({ id: 'sft', state: 'running', step, totalSteps })]);

  it('needs two observations, then extrapolates the step rate', () => {
    const eta = new EtaTracker();
    expect(eta.update(running(20), 0).get('sft')).toBeUndefined();
    expect(eta.update(running(30), 10_000).get('sft')).toBe(70); // 1 step/s, 70 steps left
    expect(eta.update(running(60), 20_000).get('sft')).toBe(20); // 40 steps in 20 s since the first look
  });

  it('no progress: no ETA (not infinity)', () => {
    const eta = new EtaTracker();
    eta.update(running(20), 0);
    expect(eta.update(running(20), 10_000).has('sft')).toBe(false);
  });

  it('a retry that restarts at a lower step resets the estimate', () => {
    const eta = new EtaTracker();
    eta.update(running(50), 0);
    expect(eta.update(running(10), 5_000).has('sft')).toBe(false);
    expect(eta.update(running(20), 15_000).get('sft')).toBe(80);
  });

  it('only running stages with a known total get an ETA', () => {
    const eta = new EtaTracker();
    const s = (state: StageStatus['state'], totalSteps: number | null) =>
      status([stage({ id: 'a', state, step: 10, totalSteps }), stage({ id: 'b', state: 'running', step: 10, totalSteps })]);
    eta.update(s('completed', 100), 0);
    const out = eta.update(status([stage({ id: 'a', state: 'completed', step: 20, totalSteps: 100 }), stage({ id: 'b', state: 'running', step: 20, totalSteps: null })]), 1000);
    expect(out.size).toBe(0);
  });

  it('renderStatus shows what EtaTracker estimates', () => {
    const eta = new EtaTracker();
    eta.update(running(0), 0);
    const s = running(10);
    expect(lineOf(renderStatus(s, eta.update(s, 60_000)), 'sft')).toContain('ETA 9:00');
  });
});
