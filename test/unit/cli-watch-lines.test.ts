// `run --watch` off a terminal: a line per change (client/watch-lines.ts), and the worker-presence
// notices (client/worker-presence.ts).
import { describe, expect, it } from 'vitest';
import { ChangeLines } from '../../client/watch-lines.js';
import { CONTROL_QUEUE_NEED, PresenceNotices, watchWorkerPresence, workerCommandFor, type QueueNeed } from '../../client/worker-presence.js';
import type { PipelineStatus, StageStatus } from '../../workflows/types.js';

function stage(over: Partial<StageStatus> & Pick<StageStatus, 'id'>): StageStatus {
  return { kind: 'sft', state: 'pending', attempt: 1, step: 0, totalSteps: null, loss: null, metrics: {}, lastCommittedStep: null, resumedFromStep: null, ...over };
}

function status(stages: StageStatus[], over: Partial<PipelineStatus> = {}): PipelineStatus {
  return { runId: 'demo-1', pipeline: 'demo', state: 'running', stages, ...over };
}

describe('ChangeLines', () => {
  it('says the run and each stage once, then nothing while nothing changes', () => {
    const lines = new ChangeLines();
    const s = status([stage({ id: 'sft' }), stage({ id: 'ppo', kind: 'ppo' })]);
    expect(lines.update(s)).toEqual(['run demo-1 (demo): running', 'sft: pending', 'ppo: pending']);
    for (let i = 0; i < 10; i++) expect(lines.update(s)).toEqual([]);
  });

  it('prints progress every 5 %, not every step, and the ETA with it', () => {
    const lines = new ChangeLines();
    const out: string[] = [];
    for (let step = 0; step <= 200; step++) {
      const etas = new Map([['sft', (200 - step) / 10]]);
      out.push(...lines.update(status([stage({ id: 'sft', state: 'running', step, totalSteps: 200, loss: 2 - step / 200 })]), etas));
    }
    const progress = out.filter((l) => /^sft: \d+%/.test(l));
    expect(progress).toHaveLength(20); // 5 %, 10 %, … 100 %
    expect(progress[0]).toBe('sft: 5%  10/200  loss 1.9500  ETA 0:19');
    expect(progress.at(-1)).toBe('sft: 100%  200/200  loss 1.0000');
    expect(out.length).toBeLessThan(25);
  });

  it('a state change says where the stage got to, its attempt and why', () => {
    const lines = new ChangeLines();
    lines.update(status([stage({ id: 'sft', state: 'running', step: 40, totalSteps: 100 })]));
    expect(lines.update(status([stage({ id: 'sft', state: 'running', step: 40, totalSteps: 100, attempt: 2, resumedFromStep: 40, error: 'attempt 1 failed: lost worker\nstack' })]))).toEqual([
      'sft: attempt 2 (resumed@40) — attempt 1 failed: lost worker',
    ]);
    expect(lines.update(status([stage({ id: 'sft', state: 'failed', step: 50, totalSteps: 100, attempt: 3, error: 'out of attempts' })], { state: 'failed', error: 'stage sft failed' }))).toEqual([
      'run demo-1 (demo): failed — stage sft failed',
      'sft: failed  50/100  attempt 3  out of attempts',
    ]);
  });

  it('a gate or note that appears is a line of its own', () => {
    const lines = new ChangeLines();
    lines.update(status([stage({ id: 'ppo', state: 'awaiting-approval' })]));
    expect(lines.update(status([stage({ id: 'ppo', state: 'awaiting-approval', gate: 'waiting for approval' })]))).toEqual(['ppo: gate: waiting for approval']);
  });
});

describe('worker presence', () => {
  const gpu: QueueNeed = { taskQueue: 'refinery-gpu-x', kind: 'activity', waiting: 'stage sft' };

  it('warns once per queue, naming it and the command that starts a worker, and says when one shows up', () => {
    const notices = new PresenceNotices();
    const warning = notices.observe(CONTROL_QUEUE_NEED, false);
    expect(warning).toMatch(/^no worker polls task queue "refinery-control" .*Start one: bin\/refinery worker$/);
    expect(notices.observe(CONTROL_QUEUE_NEED, false)).toBeUndefined();
    expect(notices.observe(gpu, false)).toContain('bin/refinery worker --no-control --queue refinery-gpu-x');
    expect(notices.observe(CONTROL_QUEUE_NEED, true)).toBe('a worker polls task queue "refinery-control" now');
    expect(notices.observe(CONTROL_QUEUE_NEED, true)).toBeUndefined();
    expect(notices.observe(CONTROL_QUEUE_NEED, false)).toMatch(/^no worker polls/); // gone again
  });

  it('a queue that has a worker from the start is never mentioned', () => {
    const notices = new PresenceNotices();
    expect(notices.observe(gpu, true)).toBeUndefined();
    expect(workerCommandFor(CONTROL_QUEUE_NEED)).toBe('bin/refinery worker');
  });

  it('watchWorkerPresence checks the needed queues after the grace period and keeps checking', async () => {
    const lines: string[] = [];
    let polled = false;
    const watch = watchWorkerPresence({
      client: undefined as never,
      needs: () => [CONTROL_QUEUE_NEED],
      write: (l) => lines.push(l),
      graceMs: 10,
      intervalMs: 10,
      hasPollers: async () => polled,
    });
    await new Promise((r) => setTimeout(r, 60));
    expect(lines).toHaveLength(1);
    polled = true;
    await new Promise((r) => setTimeout(r, 60));
    watch.stop();
    expect(lines).toEqual([expect.stringMatching(/^no worker polls/), 'a worker polls task queue "refinery-control" now']);
  });
});
