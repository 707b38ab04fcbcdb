// Metric gates (workflows/gates.ts) and the worker's GPU allocator (worker/gpu-allocator.ts).
import { describe, expect, it } from 'vitest';
import { evaluateMetricGate } from '../../workflows/gates.js';
import { GpuAllocator, type GpuLease } from '../../worker/gpu-allocator.js';

describe('evaluateMetricGate', () => {
  it('no bounds: passes', () => {
    expect(evaluateMetricGate([], {})).toEqual({ passed: true, reason: 'passed' });
  });

  it('min is inclusive', () => {
    expect(evaluateMetricGate([{ metric: 'acc', min: 0.6 }], { acc: 0.6 }).passed).toBe(true);
    expect(evaluateMetricGate([{ metric: 'acc', min: 0.6 }], { acc: 0.7 })).toEqual({ passed: true, reason: 'passed: acc = 0.7000' });
    expect(evaluateMetricGate([{ metric: 'acc', min: 0.6 }], { acc: 0.5 })).toEqual({ passed: false, reason: 'acc = 0.5000 is below 0.6' });
  });

  it('max is inclusive', () => {
    expect(evaluateMetricGate([{ metric: 'eval_loss', max: 2 }], { eval_loss: 2 })).toEqual({ passed: true, reason: 'passed: eval_loss = 2' });
    expect(evaluateMetricGate([{ metric: 'eval_loss', max: 2 }], { eval_loss: 2.123456 })).toEqual({
      passed: false,
      reason: 'eval_loss = 2.123 is above 2',
    });
  });

  it('min and max together', () => {
    const bounds = [{ metric: 'reward', min: -1, max: 1 }];
    expect(evaluateMetricGate(bounds, { reward: 0 }).passed).toBe(true);
    expect(evaluateMetricGate(bounds, { reward: -3 })).toEqual({ passed: false, reason: 'reward = -3 is below -1' });
    expect(evaluateMetricGate(bounds, { reward: 3 })).toEqual({ passed: false, reason: 'reward = 3 is above 1' });
  });

  it('a missing or null metric fails the gate', () => {
    expect(evaluateMetricGate([{ metric: 'eval_loss', max: 2 }], { train_loss: 1 })).toEqual({ passed: false, reason: 'metric "eval_loss" was not reported' });
    expect(evaluateMetricGate([{ metric: 'eval_loss', max: 2 }], { eval_loss: null })).toEqual({ passed: false, reason: 'metric "eval_loss" was not reported' });
    // A bound with neither min nor max still requires the metric.
    expect(evaluateMetricGate([{ metric: 'eval_loss' }], {}).passed).toBe(false);
    expect(evaluateMetricGate([{ metric: 'eval_loss' }], { eval_loss: 0 }).passed).toBe(true);
  });

  it('without a baseline yet (baseline.if_missing: pass) bounds on relative metrics pass; others still apply', () => {
    const bounds = [{ metric: 'win_rate', min: 0.55 }, { metric: 'kl', max: 0.2 }, { metric: 'loss', max: 3 }];
    expect(evaluateMetricGate(bounds, { loss: 2 }, { withoutBaseline: true })).toEqual({ passed: true, reason: 'passed: win_rate: no baseline yet, kl: no baseline yet, loss = 2' });
    expect(evaluateMetricGate(bounds, { loss: 4 }, { withoutBaseline: true }).passed).toBe(false);
    // With a baseline expected, a relative metric missing is a failure like any other.
    expect(evaluateMetricGate(bounds, { loss: 2 })).toEqual({ passed: false, reason: 'metric "win_rate" was not reported' });
    expect(evaluateMetricGate([{ metric: 'baseline_loss', max: 9 }], {}, { withoutBaseline: true }).passed).toBe(true);
  });

  it('all bounds must hold; the reason lists every value when they do', () => {
    const bounds = [
      { metric: 'eval_loss', max: 2 },
      { metric: 'acc', min: 0.5 },
    ];
    expect(evaluateMetricGate(bounds, { eval_loss: 1.5, acc: 0.75 })).toEqual({ passed: true, reason: 'passed: eval_loss = 1.500, acc = 0.7500' });
    expect(evaluateMetricGate(bounds, { eval_loss: 1.5, acc: 0.25 })).toEqual({ passed: false, reason: 'acc = 0.2500 is below 0.5' });
    expect(evaluateMetricGate(bounds, { eval_loss: 1.5 })).toEqual({ passed: false, reason: 'metric "acc" was not reported' });
  });

  it('a metric named like an Object.prototype key is still "not reported"', () => {
    expect(evaluateMetricGate([{ metric: 'constructor', min: 0 }], {}).passed).toBe(false);
  });
});

/** Whether a promise has settled, without waiting for it. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 5; i++) await Promise.resolve();
  return done;
}

describe('GpuAllocator', () => {
  it('asking for more GPUs than the worker has fails at once', async () => {
    await expect(new GpuAllocator([0, 1]).acquire(3)).rejects.toThrow('stage needs 3 GPU(s); this worker has 2');
    await expect(new GpuAllocator([]).acquire(1)).rejects.toThrow('stage needs 1 GPU(s); this worker has 0');
  });

  it('0 GPUs never waits, even on a worker without GPUs or with all GPUs busy', async () => {
    expect((await new GpuAllocator([]).acquire(0)).devices).toEqual([]);
    const gpus = new GpuAllocator([0]);
    const busy = await gpus.acquire(1);
    const cpu = await gpus.acquire(0);
    expect(cpu.devices).toEqual([]);
    cpu.release();
    expect(gpus.available).toBe(0);
    busy.release();
    expect(gpus.available).toBe(1);
  });

  it('hands out distinct devices and release frees them (once)', async () => {
    const gpus = new GpuAllocator([0, 1, 2, 3]);
    const a = await gpus.acquire(2);
    const b = await gpus.acquire(1);
    expect(a.devices).toEqual([0, 1]);
    expect(b.devices).toEqual([2]);
    expect(gpus.available).toBe(1);
    a.release();
    a.release(); // idempotent: must not free the devices twice
    expect(gpus.available).toBe(3);
    const c = await gpus.acquire(3);
    expect(c.devices).toEqual([0, 1, 3]);
    expect(new Set([...c.devices, ...b.devices]).size).toBe(4);
  });

  it('waiters are served first in, first out; a small request does not overtake a big one', async () => {
    const gpus = new GpuAllocator([0, 1]);
    const first = await gpus.acquire(1);
    const second = await gpus.acquire(1);
    const order: string[] = [];
    const big = gpus.acquire(2).then((l) => (order.push('big'), l));
    const small = gpus.acquire(1).then((l) => (order.push('small'), l));
    expect(await settled(big)).toBe(false);

    first.release(); // one GPU free: big (needs 2) is first in line, small must wait behind it
    expect(await settled(big)).toBe(false);
    expect(await settled(small)).toBe(false);

    second.release(); // two free: big gets both
    const bigLease = await big;
    expect(bigLease.devices).toEqual([0, 1]);
    expect(await settled(small)).toBe(false);

    bigLease.release();
    expect((await small).devices).toEqual([0]);
    expect(order).toEqual(['big', 'small']);
  });

  it('a new request queues behind waiters even when enough GPUs are free', async () => {
    const gpus = new GpuAllocator([0, 1, 2]);
    const held = await gpus.acquire(2);
    const waiting = gpus.acquire(2);
    const later = gpus.acquire(1); // 1 GPU is free, but "waiting" came first
    expect(await settled(later)).toBe(false);
    held.release();
    expect((await waiting).devices).toEqual([0, 1]);
    expect((await later).devices).toEqual([2]);
  });

  it('abort while waiting rejects with the signal reason and leaves the queue', async () => {
    const gpus = new GpuAllocator([0]);
    const held = await gpus.acquire(1);
    const controller = new AbortController();
    const waiting = gpus.acquire(1, controller.signal);
    const next = gpus.acquire(1);
    controller.abort(new Error('stage cancelled'));
    await expect(waiting).rejects.toThrow('stage cancelled');
    held.release();
    expect((await next).devices).toEqual([0]);
  });

  it('a reason that is not an Error becomes a plain cancellation error', async () => {
    const gpus = new GpuAllocator([0]);
    const held = await gpus.acquire(1);
    const controller = new AbortController();
    const waiting = gpus.acquire(1, controller.signal);
    controller.abort('shutting down');
    await expect(waiting).rejects.toThrow('cancelled while waiting for a GPU');
    held.release();
    expect(gpus.available).toBe(1);
  });

  it('an aborted waiter at the head of the queue no longer blocks those behind it', async () => {
    const gpus = new GpuAllocator([0, 1]);
    const held = await gpus.acquire(1);
    const controller = new AbortController();
    const big = gpus.acquire(2, controller.signal);
    const small = gpus.acquire(1);
    expect(await settled(small)).toBe(false);
    controller.abort(new Error('cancelled'));
    await expect(big).rejects.toThrow('cancelled');
    // GPU 1 is free and nobody is ahead of "small" any more.
    expect(await settled(small)).toBe(true);
    expect((await small).devices).toEqual([1]);
    held.release();
    expect(gpus.available).toBe(1);
  });

  it('a signal that is already aborted rejects at once instead of waiting forever', async () => {
    const gpus = new GpuAllocator([0]);
    const held = await gpus.acquire(1);
    const waiting = gpus.acquire(1, AbortSignal.abort(new Error('already cancelled')));
    expect(await settled(waiting)).toBe(true);
    await expect(waiting).rejects.toThrow('already cancelled');
    held.release();
    expect(gpus.available).toBe(1);
    const again = await gpus.acquire(1);
    expect(again.devices).toEqual([0]);
  });

  it('aborting after the lease was granted changes nothing', async () => {
    const gpus = new GpuAllocator([0]);
    const held = await gpus.acquire(1);
    const controller = new AbortController();
    const waiting = gpus.acquire(1, controller.signal);
    held.release();
    const lease: GpuLease = await waiting;
    controller.abort(new Error('too late'));
    expect(lease.devices).toEqual([0]);
    expect(gpus.available).toBe(0);
    lease.release();
    expect(gpus.available).toBe(1);
  });
});
