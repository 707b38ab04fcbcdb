/**
 * The stage lease against the real MinIO: conditional writes do what S3 says (If-None-Match: *,
 * If-Match), one of many acquirers trains while the others wait, a renewing holder keeps its
 * lease past the ttl, a holder that stops renewing loses it to exactly one waiter after the ttl
 * (never before), a later attempt of the same run+stage takes over at once, and a lost lease is
 * noticed by its holder (onLost, assertHeld).
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { layout } from '../../storage/layout.js';
import type { ObjectStore } from '../../storage/object-store.js';
import {
  acquireOrWait,
  LeaseLostError,
  LeaseSupersededError,
  localHolder,
  readLease,
  type AcquireResult,
  type LeaseStore,
  type LeaseWaitInfo,
  type StageLease,
} from '../../storage/stage-lease.js';
import { testStore } from '../helpers/env.js';

const TTL = 2000;
const POLL = 100;

let store: ObjectStore;
const uniq = () => `lease-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
const artifactPrefix = () => `${uniq()}/artifacts/sft-0123abcd`;
const notDone = async () => false;

beforeAll(() => {
  store = testStore();
});

/** The store, but every lease read and renewal fails (connection reset) while `broken()`: storage away for this holder only. */
function unreachableWhile(broken: () => boolean): LeaseStore {
  const fail = () => Promise.reject(new Error('connection reset'));
  return {
    putIfAbsent: (k, b) => store.putIfAbsent(k, b),
    putIfMatch: (k, b, e) => (broken() ? fail() : store.putIfMatch(k, b, e)),
    getWithEtag: (k) => (broken() ? fail() : store.getWithEtag(k)),
  };
}

/** acquireOrWait, with when it settled and how, and every onWait report. */
function contender(prefix: string, runId: string, attempt = 1, options: { isDone?: () => Promise<boolean>; ttlMs?: number } = {}) {
  const abort = new AbortController();
  const waits: LeaseWaitInfo[] = [];
  const state: { settledAt?: number; result?: AcquireResult; error?: unknown } = {};
  const promise = acquireOrWait(store, prefix, localHolder(runId, 'sft', attempt), {
    ttlMs: options.ttlMs ?? TTL,
    pollMs: POLL,
    signal: abort.signal,
    onWait: (info) => void waits.push(info),
    isDone: options.isDone ?? notDone,
  }).then(
    (result) => {
      state.settledAt = performance.now();
      state.result = result;
      return result;
    },
    (error: unknown) => {
      state.settledAt = performance.now();
      state.error = error;
      return undefined;
    },
  );
  /** The outcome, or a failure (and the contender stopped) when it takes longer than `ms`. */
  const within = async (ms: number): Promise<AcquireResult | undefined> => {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        abort.abort(new Error('too late'));
        reject(new Error(`${runId}: acquireOrWait did not settle within ${ms} ms`));
      }, ms);
    });
    try {
      return await Promise.race([promise, late]);
    } finally {
      clearTimeout(timer);
    }
  };
  return { runId, abort, waits, state, promise, within };
}

function acquired(r: AcquireResult | undefined): StageLease {
  if (r?.kind !== 'acquired') throw new Error(`expected an acquired lease, got ${JSON.stringify(r)}`);
  return r.lease;
}

async function until(cond: () => boolean, timeoutMs: number): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(20);
  }
}

describe('conditional writes on MinIO', () => {
  it('If-None-Match: * writes once; If-Match refuses a stale or missing ETag; getWithEtag pairs bytes and ETag', async () => {
    const key = `${uniq()}/obj`;
    const first = await store.putIfAbsent(key, '{"n":1}');
    expect(first).toMatchObject({ etag: expect.stringMatching(/^[^"]+$/) });
    expect(await store.putIfAbsent(key, '{"n":2}')).toBe('exists');
    const got = await store.getWithEtag(key);
    expect(got?.body.toString()).toBe('{"n":1}');
    expect(got?.etag).toBe((first as { etag: string }).etag);

    const second = await store.putIfMatch(key, '{"n":3}', got!.etag);
    expect(second).not.toBe('changed');
    expect(await store.putIfMatch(key, '{"n":4}', got!.etag)).toBe('changed'); // stale ETag
    expect((await store.getWithEtag(key))?.body.toString()).toBe('{"n":3}');
    expect(await store.putIfMatch(`${key}-missing`, '{}', got!.etag)).toBe('changed');
    expect(await store.getWithEtag(`${key}-missing`)).toBeUndefined();

    expect(await store.removeIfMatch(key, got!.etag)).toBe('changed');
    expect(await store.exists(key)).toBe(true);
    expect(await store.removeIfMatch(key, (second as { etag: string }).etag)).toBe('removed');
    expect(await store.exists(key)).toBe(false);
  });

  it('of ten racing If-None-Match writers exactly one wins, and of ten racing If-Match writers too', async () => {
    const key = `${uniq()}/race`;
    const creates = await Promise.all(Array.from({ length: 10 }, (_, i) => store.putIfAbsent(key, `{"i":${i}}`)));
    expect(creates.filter((r) => r !== 'exists')).toHaveLength(1);
    const { etag } = (await store.getWithEtag(key))!;
    const updates = await Promise.all(Array.from({ length: 10 }, (_, i) => store.putIfMatch(key, `{"u":${i}}`, etag)));
    expect(updates.filter((r) => r !== 'changed')).toHaveLength(1);
  });
});

describe('stage lease', () => {
  it('ten concurrent acquirers: one trains, nine wait past the ttl while it renews, then all see the output committed', async () => {
    const prefix = artifactPrefix();
    let done = false;
    const all = Array.from({ length: 10 }, (_, i) => contender(prefix, `run-${i}`, 1, { isDone: async () => done }));
    await until(() => all.some((c) => c.state.result), 10_000);
    const winner = all.find((c) => c.state.result);
    const rest = all.filter((c) => c !== winner);
    const lease = acquired(winner!.state.result);
    const lost: LeaseLostError[] = [];
    lease.startRenewing({ onLost: (err) => lost.push(err) });
    expect((await readLease(store, prefix))?.record.holder.runId).toBe(winner!.runId);

    await sleep(TTL * 2.5);
    expect(rest.filter((c) => c.state.settledAt !== undefined)).toEqual([]);
    for (const c of rest) {
      expect(c.waits.length).toBeGreaterThan(3);
      expect(c.waits.at(-1)).toMatchObject({ holder: { runId: winner!.runId, attempt: 1 }, ttlMs: TTL });
      expect(c.waits.at(-1)!.description).toMatch(new RegExp(`run ${winner!.runId} stage sft attempt 1 on host `));
      expect(Math.max(...c.waits.map((w) => w.unchangedForMs))).toBeLessThan(TTL);
    }

    done = true; // the holder committed its output
    const results = await Promise.all(rest.map((c) => c.promise));
    expect(results.map((r) => r?.kind)).toEqual(rest.map(() => 'done'));
    await lease.assertHeld();
    expect(lost).toEqual([]); // a renewing holder never loses its lease
    expect(await lease.release()).toBe('released');
    expect((await readLease(store, prefix))?.record.releasedAt).toBeDefined();
  });

  it('a holder that stops renewing loses the lease to exactly one waiter, after the ttl and never before', async () => {
    const prefix = artifactPrefix();
    const dead = acquired(await contender(prefix, 'run-dead').promise);
    dead.startRenewing();
    const waiters = Array.from({ length: 5 }, (_, i) => contender(prefix, `run-w${i}`));
    await sleep(TTL * 0.5);
    // The holder dies: its last write is this one, sent at lastWriteAt.
    dead.stopRenewing();
    const lastWriteAt = performance.now();
    await dead.renew();

    await until(() => waiters.some((c) => c.state.settledAt !== undefined), TTL * 4);
    const winners = waiters.filter((c) => c.state.result);
    expect(winners).toHaveLength(1);
    const winner = winners[0]!;
    expect(winner.state.settledAt! - lastWriteAt).toBeGreaterThanOrEqual(TTL);
    const r = winner.state.result!;
    expect(r.kind === 'acquired' && r.tookOver).toMatchObject({ reason: 'stale', holder: { runId: 'run-dead' } });
    const lease = acquired(r);
    lease.startRenewing();

    // The others go on waiting, now on the new holder.
    await sleep(TTL * 1.5);
    const others = waiters.filter((c) => c !== winner);
    expect(others.filter((c) => c.state.settledAt !== undefined)).toEqual([]);
    for (const c of others) expect(c.waits.at(-1)?.holder?.runId).toBe(winner.runId);

    // The "dead" holder comes back: it cannot commit, and its release does not free the new lease.
    await expect(dead.assertHeld()).rejects.toMatchObject({ name: 'LeaseLostError', reason: 'taken', by: { runId: winner.runId } });
    expect(dead.signal.aborted).toBe(true);
    expect(await dead.release()).toBe('not-held');
    await lease.assertHeld();
    expect((await readLease(store, prefix))?.record.token).toBe(lease.token);

    for (const c of others) c.abort.abort(new Error('test over'));
    for (const c of others) {
      await c.promise;
      expect(c.state.error).toMatchObject({ message: 'test over' });
    }
    expect(await lease.release()).toBe('released');
  });

  it('a later attempt of the same run and stage takes over at once; the earlier one learns it through onLost and assertHeld', async () => {
    const prefix = artifactPrefix();
    const first = acquired(await contender(prefix, 'run-r', 1).promise);
    const lost: LeaseLostError[] = [];
    first.startRenewing({ onLost: (err) => lost.push(err) });

    const t0 = performance.now();
    const retry = await contender(prefix, 'run-r', 2).within(TTL / 2);
    expect(performance.now() - t0).toBeLessThan(TTL / 2);
    expect(retry?.kind === 'acquired' && retry.tookOver).toMatchObject({ reason: 'earlier-attempt', holder: { runId: 'run-r', attempt: 1 } });
    const second = acquired(retry);
    second.startRenewing();

    await until(() => lost.length > 0, TTL);
    expect(lost).toHaveLength(1);
    expect(lost[0]).toBeInstanceOf(LeaseLostError);
    expect(lost[0]).toMatchObject({ reason: 'taken', by: { runId: 'run-r', attempt: 2 } });
    expect(first.lost).toBe(lost[0]);
    expect(first.signal.aborted).toBe(true);
    await expect(first.assertHeld()).rejects.toBeInstanceOf(LeaseLostError);

    // The earlier attempt, if it came back to acquire, is told it is superseded instead of waiting.
    const z = contender(prefix, 'run-r', 1);
    await z.within(TTL / 2);
    expect(z.state.error).toBeInstanceOf(LeaseSupersededError);

    await second.assertHeld();
    expect(await second.release()).toBe('released');
  });

  it('a released lease is taken at once by a waiter of another run', async () => {
    const prefix = artifactPrefix();
    const holder = acquired(await contender(prefix, 'run-a').promise);
    holder.startRenewing();
    const waiter = contender(prefix, 'run-b');
    await sleep(POLL * 5);
    expect(waiter.state.settledAt).toBeUndefined();
    const releasedAt = performance.now();
    expect(await holder.release()).toBe('released'); // e.g. the attempt failed
    const r = await waiter.within(TTL / 2);
    expect(performance.now() - releasedAt).toBeLessThan(TTL / 2);
    expect(r?.kind === 'acquired' && r.tookOver).toMatchObject({ reason: 'released', holder: { runId: 'run-a' } });
    await expect(holder.assertHeld()).rejects.toMatchObject({ reason: 'released' });
    expect(await acquired(r).release()).toBe('released');
  });

  it('an unreadable lease object is waited on like a silent holder, then taken over after the ttl', async () => {
    const prefix = artifactPrefix();
    await store.putBytes(layout.stageLease(prefix), 'not a lease');
    const t0 = performance.now();
    const c = contender(prefix, 'run-a');
    const r = await c.within(TTL * 3);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(TTL);
    expect(r?.kind === 'acquired' && r.tookOver).toEqual({ reason: 'unreadable' });
    expect(c.waits.at(-1)).toMatchObject({ description: expect.stringMatching(/unreadable lease record/) });
    expect(c.waits.at(-1)?.holder).toBeUndefined();
    expect(await acquired(r).release()).toBe('released');
  });

  it('resolves done without taking the lease when the output is already committed', async () => {
    const prefix = artifactPrefix();
    const r = await contender(prefix, 'run-a', 1, { isDone: async () => true }).promise;
    expect(r).toEqual({ kind: 'done' });
    expect(await store.getWithEtag(layout.stageLease(prefix))).toBeUndefined();
  });

  it('a holder that cannot confirm a renewal for 0.9 × ttl is unconfirmed, and holds the lease again when storage answers and nobody took it', async () => {
    const prefix = artifactPrefix();
    let broken = false;
    const flaky = unreachableWhile(() => broken);
    const r = await acquireOrWait(flaky, prefix, localHolder('run-x', 'sft', 1), { ttlMs: TTL, pollMs: POLL, isDone: notDone });
    const lease = acquired(r);
    const lost: LeaseLostError[] = [];
    const unconfirmed: boolean[] = [];
    lease.startRenewing({ onLost: (e) => lost.push(e), onUnconfirmed: (u) => unconfirmed.push(u) });
    await sleep(TTL / 2);
    broken = true;
    const brokeAt = performance.now();
    await until(() => unconfirmed.length > 0, TTL * 2);
    // It knew before any waiter could have taken over (its last confirmed write was before brokeAt)…
    expect(performance.now() - brokeAt).toBeLessThan(TTL);
    expect([unconfirmed, lease.unconfirmed, lease.signal.aborted]).toEqual([[true], true, false]);
    // …and cannot commit while storage is away: assertHeld fails.
    await expect(lease.assertHeld()).rejects.toThrow(/connection reset/);
    await sleep(TTL);
    broken = false;
    await until(() => unconfirmed.length > 1, TTL * 2);
    expect([unconfirmed, lease.unconfirmed, lost]).toEqual([[true, false], false, []]);
    await lease.assertHeld(); // still ours: nobody took it while it was unconfirmed
    expect(await lease.release()).toBe('released');
  });

  it('an unconfirmed holder whose lease a waiter took meanwhile loses it when storage answers', async () => {
    const prefix = artifactPrefix();
    let broken = false;
    const flaky = unreachableWhile(() => broken);
    const lease = acquired(await acquireOrWait(flaky, prefix, localHolder('run-x', 'sft', 1), { ttlMs: TTL, pollMs: POLL, isDone: notDone }));
    const lost: LeaseLostError[] = [];
    lease.startRenewing({ onLost: (e) => lost.push(e) });
    broken = true; // partitioned from storage; another run's waiter is not
    const other = await contender(prefix, 'run-y').promise;
    expect(other?.kind).toBe('acquired');
    broken = false;
    await until(() => lost.length > 0, TTL * 2);
    expect(lost[0]).toMatchObject({ reason: 'taken' });
    expect(lease.signal.aborted).toBe(true);
    await expect(lease.assertHeld()).rejects.toBeInstanceOf(LeaseLostError);
    if (other?.kind === 'acquired') await other.lease.release();
  });
});
