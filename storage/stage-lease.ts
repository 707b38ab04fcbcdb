/**
 * One attempt at a time trains a cache key: a lease object at `<artifactPrefix>/_LEASE`
 * (layout.stageLease), taken and kept with S3 conditional writes. Two runs of the same spec share
 * the artifact prefix; without this both would train into it, each pruning the other's checkpoints
 * and overwriting the other's output. With it one trains and the others wait, then reuse its
 * committed output — or, when the holder dies, exactly one of them takes over and resumes from the
 * newest checkpoint it left. Knows nothing of Temporal.
 *
 * Protocol (every write is conditional, so exactly one of racing writers wins):
 *   - acquire:  no lease object → PUT If-None-Match: *;  a takeable one → PUT If-Match: <its etag>
 *   - takeable: released (a tombstone, see release); held by an EARLIER attempt of the same run and
 *               stage (a Temporal retry, at once); or stale — its ETag has not changed for longer
 *               than its ttlMs as measured by the waiter's own monotonic clock since it first saw
 *               that ETag (no clock sync between hosts needed)
 *   - renew:    every ttl/3, PUT If-Match: <our etag> with a new renewedAt and seq (so the bytes, and
 *               the ETag, always change); a failed condition → the lease was taken: lost
 *   - release:  PUT If-Match: <our etag> of a tombstone (`released` set) — not a DELETE, because
 *               MinIO ignores If-Match on DeleteObject, and an unconditional delete could remove a
 *               lease somebody else has just taken. The tombstone stays; the next acquirer takes it.
 *
 * Timing guarantee: after a conditional write of ours that succeeded, sent at local time S, nobody
 * but a later attempt of the same run+stage can take the lease before S + ttlMs (a waiter must see
 * that write's ETag unchanged for ttlMs first). A holder that cannot confirm a write for
 * UNCONFIRMED_FRACTION × ttl (storage unreachable) is *unconfirmed*: it keeps trying, and its job
 * trains on, but it cannot commit (every commit first proves the lease by a conditional write).
 * When storage answers again the next renewal settles it: our ETag still there — nobody took the
 * lease, we hold it as before; anything else — it was taken (a waiter saw it unchanged for ttl),
 * lost, and the job stops. Stopping the job at once instead would turn every storage outage longer
 * than the ttl into lost work (found by the fault suite: a 30 s MinIO outage cost 20 steps), and
 * buys nothing for correctness: a holder that is wrong about its lease commits nothing anyway
 * (fenced commits, storage/commit.ts); only a storage partition that other workers do not share
 * lets two attempts train at once, until it heals.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { layout } from './layout.js';
import type { ObjectStore } from './object-store.js';

/** A holder unable to confirm a renewal for this fraction of its ttl is unconfirmed (see above). */
const UNCONFIRMED_FRACTION = 0.9;
/** After a renewal that failed with an error (not a lost condition), the next try comes this much sooner. */
const RETRY_FRACTION = 0.1;

export interface LeaseHolder {
  runId: string;
  stageId: string;
  /** Temporal's activity attempt (1, 2, …): a later attempt of the same run+stage takes over at once. */
  attempt: number;
  host: string;
  pid: number;
}

/** The JSON in `_LEASE`. */
export interface LeaseRecord {
  version: 1;
  holder: LeaseHolder;
  /** Random per acquisition: the lease is ours while the object carries our token. */
  token: string;
  acquiredAt: string;
  renewedAt: string;
  /** The holder's ttl: waiters take over after seeing the same ETag for longer than this. */
  ttlMs: number;
  /** Renewals so far: makes every write's bytes, hence its ETag, differ. */
  seq: number;
  /**
   * The fencing token: one more than the record this acquisition replaced (1 for the first), so
   * every holder of a cache key has a larger epoch than all before it. Commits carry it and a
   * commit marker of a larger epoch is never replaced by a smaller one (storage/commit.ts).
   * Absent in records written before epochs existed (read as 0).
   */
  epoch?: number;
  /** Set by release(): the lease is free (a tombstone that records its last holder). */
  releasedAt?: string;
}

/** The operations the lease needs (an ObjectStore; narrowed so tests can wrap one). */
export type LeaseStore = Pick<ObjectStore, 'putIfAbsent' | 'putIfMatch' | 'getWithEtag'>;

export interface LeaseWaitInfo {
  /** Absent (with acquiredAt/renewedAt) only when the lease object is not a lease record this code can read. */
  holder?: LeaseHolder;
  acquiredAt?: string;
  renewedAt?: string;
  ttlMs: number;
  /** How long this waiter has seen the lease's current ETag unchanged. */
  unchangedForMs: number;
  /** When, at the earliest, this waiter will take it over if it stays unchanged. */
  staleInMs: number;
  /** "run X stage S attempt N on host H (pid P)". */
  description: string;
}

/** Why the lease was free to take; absent when there was no lease object at all. */
export interface LeaseTakeover {
  reason: 'released' | 'earlier-attempt' | 'stale' | 'unreadable';
  /** The previous holder (absent for an unreadable record). */
  holder?: LeaseHolder;
}

export interface AcquireOptions {
  /** How long a waiter waits on an unchanged lease before taking it over; renewals every ttl/3. */
  ttlMs: number;
  /** How often a waiter looks again (default ttl/4, between 250 ms and 5 s). */
  pollMs?: number;
  /** Aborting it rejects acquireOrWait with the signal's reason. */
  signal?: AbortSignal;
  /** Called on every poll while another attempt holds the lease (heartbeat, status). May throw to stop waiting. */
  onWait?: (info: LeaseWaitInfo) => void | Promise<void>;
  /** Whether the output has been committed meanwhile (e.g. readCommitted on the output prefix). */
  isDone: () => Promise<boolean>;
}

export type AcquireResult =
  | { kind: 'acquired'; lease: StageLease; tookOver?: LeaseTakeover }
  | { kind: 'done' };

export type LeaseLostReason = 'taken' | 'gone' | 'released';

export class LeaseLostError extends Error {
  override name = 'LeaseLostError';
  constructor(
    readonly key: string,
    readonly reason: LeaseLostReason,
    /** Who holds it now, when known. */
    readonly by?: LeaseHolder,
  ) {
    super(
      reason === 'taken'
        ? `lease ${key} was taken over${by ? ` by ${describeHolder(by)}` : ''}`
        : reason === 'gone'
          ? `lease ${key} disappeared`
          : `lease ${key} was released`,
    );
  }
}

/** This attempt is older than the one holding the lease for the same run and stage: it must stop. */
export class LeaseSupersededError extends Error {
  override name = 'LeaseSupersededError';
  constructor(
    readonly key: string,
    readonly by: LeaseHolder,
  ) {
    super(`lease ${key} is held by a later attempt of the same stage: ${describeHolder(by)}`);
  }
}

export function describeHolder(h: LeaseHolder): string {
  return `run ${h.runId} stage ${h.stageId} attempt ${h.attempt} on host ${h.host} (pid ${h.pid})`;
}

/** A holder for this process. */
export function localHolder(runId: string, stageId: string, attempt: number): LeaseHolder {
  return { runId, stageId, attempt, host: hostname(), pid: process.pid };
}

/** The lease object as it is now (for status displays), or undefined when there is none or it is unreadable. */
export async function readLease(store: LeaseStore, artifactPrefix: string): Promise<{ record: LeaseRecord; etag: string } | undefined> {
  const cur = await store.getWithEtag(layout.stageLease(artifactPrefix));
  const record = cur && parseRecord(cur.body);
  return cur && record ? { record, etag: cur.etag } : undefined;
}

/**
 * Takes the lease of `artifactPrefix`, waiting while another live attempt holds it; resolves
 * 'done' instead when `isDone()` says the output got committed meanwhile (also checked once more
 * right after acquiring — then the lease is released again). Start renewing the lease you get at
 * once (lease.startRenewing): it goes stale after ttlMs.
 * @throws LeaseSupersededError when a later attempt of the same run+stage holds the lease;
 *         the signal's reason when aborted; whatever onWait, isDone or the store throw.
 */
export async function acquireOrWait(store: LeaseStore, artifactPrefix: string, holder: LeaseHolder, options: AcquireOptions): Promise<AcquireResult> {
  const { ttlMs, signal } = options;
  if (!(ttlMs > 0)) throw new Error(`lease ttlMs must be positive, got ${ttlMs}`);
  const pollMs = options.pollMs ?? Math.max(250, Math.min(5000, ttlMs / 4));
  const key = layout.stageLease(artifactPrefix);
  const token = randomUUID();
  /** The ETag this waiter is timing, and since when (its own monotonic clock). */
  let seen: { etag: string; at: number } | undefined;
  /** When our last take attempt was sent: a lease found carrying our token dates from then. */
  let lastSentAt = performance.now();

  for (;;) {
    signal?.throwIfAborted();
    const cur = await store.getWithEtag(key);
    let take: { etag?: string; tookOver?: LeaseTakeover } | undefined;
    let waitingOn: LeaseRecord | 'unreadable' | undefined;
    let unchangedForMs = 0;
    let staleAfterMs = ttlMs;
    if (!cur) take = {};
    else {
      const rec = parseRecord(cur.body);
      // Our own write that landed although its response got lost (we re-read after errors too).
      if (rec?.token === token && rec.releasedAt === undefined) return finishAcquire(new StageLease(store, key, holder, rec, cur.etag, lastSentAt), undefined);
      if (seen?.etag !== cur.etag) seen = { etag: cur.etag, at: performance.now() };
      unchangedForMs = performance.now() - seen.at;
      staleAfterMs = rec?.ttlMs ?? ttlMs;
      if (!rec) {
        if (unchangedForMs > staleAfterMs) take = { etag: cur.etag, tookOver: { reason: 'unreadable' } };
        else waitingOn = 'unreadable';
      } else if (rec.releasedAt !== undefined) {
        take = { etag: cur.etag, tookOver: { reason: 'released', holder: rec.holder } };
      } else if (rec.holder.runId === holder.runId && rec.holder.stageId === holder.stageId && rec.holder.attempt !== holder.attempt) {
        if (rec.holder.attempt > holder.attempt) throw new LeaseSupersededError(key, rec.holder);
        take = { etag: cur.etag, tookOver: { reason: 'earlier-attempt', holder: rec.holder } };
      } else if (unchangedForMs > staleAfterMs) {
        take = { etag: cur.etag, tookOver: { reason: 'stale', holder: rec.holder } };
      } else waitingOn = rec;
    }

    if (take) {
      if (await options.isDone()) return { kind: 'done' };
      const now = new Date().toISOString();
      const epoch = (cur ? (parseRecord(cur.body)?.epoch ?? 0) : 0) + 1;
      const record: LeaseRecord = { version: 1, holder, token, acquiredAt: now, renewedAt: now, ttlMs, seq: 0, epoch };
      const body = serialize(record);
      const sentAt = (lastSentAt = performance.now());
      let won: { etag: string } | undefined;
      try {
        const r = take.etag === undefined ? await store.putIfAbsent(key, body) : await store.putIfMatch(key, body, take.etag);
        won = typeof r === 'object' ? r : undefined;
      } catch (err) {
        // The write may have landed without us hearing back: it is ours iff the object carries our token.
        const again = await store.getWithEtag(key).catch(() => undefined);
        if (!again || parseRecord(again.body)?.token !== token) throw err;
        won = { etag: again.etag };
      }
      if (won) return finishAcquire(new StageLease(store, key, holder, record, won.etag, sentAt), take.tookOver);
      seen = undefined; // another waiter won the race: look at what it wrote
      continue;
    }

    if (await options.isDone()) return { kind: 'done' };
    if (waitingOn && options.onWait) {
      const staleInMs = Math.max(0, staleAfterMs - unchangedForMs);
      await options.onWait(
        waitingOn === 'unreadable'
          ? { ttlMs: staleAfterMs, unchangedForMs, staleInMs, description: `an unreadable lease record at ${key}` }
          : {
              holder: waitingOn.holder,
              acquiredAt: waitingOn.acquiredAt,
              renewedAt: waitingOn.renewedAt,
              ttlMs: waitingOn.ttlMs,
              unchangedForMs,
              staleInMs,
              description: describeHolder(waitingOn.holder),
            },
      );
    }
    try {
      await sleep(pollMs, undefined, { signal });
    } catch (err) {
      signal?.throwIfAborted();
      throw err;
    }
  }

  async function finishAcquire(lease: StageLease, tookOver: LeaseTakeover | undefined): Promise<AcquireResult> {
    let done: boolean;
    try {
      done = await options.isDone();
    } catch (err) {
      await lease.release().catch(() => undefined);
      throw err;
    }
    if (done) {
      await lease.release().catch(() => undefined);
      return { kind: 'done' };
    }
    return { kind: 'acquired', lease, ...(tookOver ? { tookOver } : {}) };
  }
}

/**
 * A lease this process holds. Every operation on the lease object goes through one queue, so a
 * renewal, an assertHeld and a release never race each other with the same ETag.
 */
export class StageLease {
  private record: LeaseRecord;
  private currentEtag: string;
  /** performance.now() when the last write of ours that is known to have landed was sent. */
  private confirmedAt: number;
  private lostError?: LeaseLostError;
  private readonly abort = new AbortController();
  private queue: Promise<unknown> = Promise.resolve();
  private renewTimer?: NodeJS.Timeout;
  private expiryTimer?: NodeJS.Timeout;
  private onLost?: (err: LeaseLostError) => void;
  private onUnconfirmed?: (unconfirmed: boolean) => void;
  private unconfirmedFlag = false;

  constructor(
    private readonly store: LeaseStore,
    readonly key: string,
    readonly holder: LeaseHolder,
    record: LeaseRecord,
    etag: string,
    confirmedAt: number,
  ) {
    this.record = record;
    this.currentEtag = etag;
    this.confirmedAt = confirmedAt;
  }

  get token(): string {
    return this.record.token;
  }
  get ttlMs(): number {
    return this.record.ttlMs;
  }
  /** This acquisition's fencing token (LeaseRecord.epoch). */
  get epoch(): number {
    return this.record.epoch ?? 0;
  }
  get etag(): string {
    return this.currentEtag;
  }
  /** Set once the lease is lost or released (sticky). */
  get lost(): LeaseLostError | undefined {
    return this.lostError;
  }
  /** No write of ours confirmed for 0.9 × ttl (storage unreachable): held or not, we cannot tell yet. */
  get unconfirmed(): boolean {
    return this.unconfirmedFlag;
  }
  /** Aborted (with the LeaseLostError as reason) when the lease is lost or released: hand it to the job. */
  get signal(): AbortSignal {
    return this.abort.signal;
  }

  /**
   * Renews every ttl/3 until release() or loss; `onLost` fires once when a renewal finds the lease
   * taken over or gone: the caller must then stop its job (fencing). `onUnconfirmed(true)` fires
   * when no renewal could be confirmed for 0.9 × ttl (storage unreachable; renewals go on), and
   * `onUnconfirmed(false)` when one is confirmed again. Idempotent.
   */
  startRenewing(options: { onLost?: (err: LeaseLostError) => void; onUnconfirmed?: (unconfirmed: boolean) => void } = {}): void {
    if (options.onLost) this.onLost = options.onLost;
    if (options.onUnconfirmed) this.onUnconfirmed = options.onUnconfirmed;
    if (this.lostError) {
      this.fireLost();
      return;
    }
    if (this.renewTimer) return;
    this.armExpiry();
    // The first renewal is due ttl/3 after the last confirmed write (at once if started late).
    this.scheduleRenew(Math.max(0, this.confirmedAt + this.ttlMs / 3 - performance.now()));
  }

  /** Stops the timers without touching the lease object (it goes stale after ttl). */
  stopRenewing(): void {
    clearTimeout(this.renewTimer);
    clearTimeout(this.expiryTimer);
    this.renewTimer = undefined;
    this.expiryTimer = undefined;
  }

  /** One renewal now (a conditional write). @throws LeaseLostError, or the store's error (lease state then unknown). */
  renew(): Promise<void> {
    return this.enqueue(() => this.write());
  }

  /**
   * Proves the lease is still ours right before a commit, by a conditional write (stronger than a
   * read: it also restarts every waiter's ttl). Any throw — LeaseLostError, or a store error — means
   * "do not commit". A window remains between this check and the commit's own writes; see the
   * caveats in the report / module docs: keep the commit right after it.
   */
  assertHeld(): Promise<void> {
    return this.renew();
  }

  /**
   * Frees the lease if it is still ours (a conditional tombstone write), so a retry or a waiter can
   * take it at once; stops renewing. 'not-held' when somebody else has it (or it is gone).
   * Call it after the output is committed, and when the attempt fails. Errors propagate (the
   * lease then just goes stale after ttl).
   */
  release(): Promise<'released' | 'not-held'> {
    this.stopRenewing();
    this.onLost = undefined; // the caller is done with the job: nothing to stop
    return this.enqueue(async () => {
      for (let tries = 0; tries < 3; tries++) {
        const now = new Date().toISOString();
        const tombstone: LeaseRecord = { ...this.record, renewedAt: now, seq: this.record.seq + 1, releasedAt: now };
        const r = await this.store.putIfMatch(this.key, serialize(tombstone), this.currentEtag);
        if (r !== 'changed') {
          this.record = tombstone;
          this.currentEtag = r.etag;
          this.markLost('released', undefined, false);
          return 'released';
        }
        const mine = await this.reReadMine();
        if (!mine) break;
      }
      this.markLost('released', undefined, false);
      return 'not-held';
    });
  }

  private enqueue<T>(op: () => Promise<T>): Promise<T> {
    const run = this.queue.then(op, op);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async write(): Promise<void> {
    for (let tries = 0; tries < 3; tries++) {
      if (this.lostError) throw this.lostError;
      const next: LeaseRecord = { ...this.record, renewedAt: new Date().toISOString(), seq: this.record.seq + 1 };
      const sentAt = performance.now();
      const r = await this.store.putIfMatch(this.key, serialize(next), this.currentEtag);
      if (r !== 'changed') {
        this.record = next;
        this.currentEtag = r.etag;
        this.confirmedAt = sentAt;
        if (this.unconfirmedFlag) this.setUnconfirmed(false);
        if (this.renewTimer) this.armExpiry();
        return;
      }
      if (!(await this.reReadMine())) break;
      // It still carries our token (an earlier write landed unheard): go again with its ETag.
    }
    throw this.lostError ?? this.markLost('taken');
  }

  /** After a failed condition: adopts the object's ETag when it is still ours; otherwise marks the lease lost. */
  private async reReadMine(): Promise<boolean> {
    const cur = await this.store.getWithEtag(this.key);
    const rec = cur && parseRecord(cur.body);
    if (cur && rec?.token === this.token && rec.releasedAt === undefined) {
      this.record = rec;
      this.currentEtag = cur.etag;
      return true;
    }
    if (!this.lostError) this.markLost(cur ? 'taken' : 'gone', rec?.holder);
    return false;
  }

  private scheduleRenew(ms: number): void {
    const timer: NodeJS.Timeout = setTimeout(() => {
      // Still this chain's turn only while stopRenewing (or a new startRenewing) has not replaced it.
      const current = () => this.renewTimer === timer && !this.lostError;
      this.renew().then(
        () => {
          if (current()) this.scheduleRenew(this.ttlMs / 3);
        },
        () => {
          // A lost lease has fired onLost; a store error is retried sooner, until the expiry timer gives up.
          if (current()) this.scheduleRenew(this.ttlMs * RETRY_FRACTION);
        },
      );
    }, ms);
    timer.unref();
    this.renewTimer = timer;
  }

  private armExpiry(): void {
    clearTimeout(this.expiryTimer);
    const left = this.confirmedAt + this.ttlMs * UNCONFIRMED_FRACTION - performance.now();
    this.expiryTimer = setTimeout(() => {
      if (performance.now() - this.confirmedAt >= this.ttlMs * UNCONFIRMED_FRACTION) this.setUnconfirmed(true);
      else this.armExpiry();
    }, Math.max(0, left));
    this.expiryTimer.unref();
  }

  private setUnconfirmed(value: boolean): void {
    if (this.unconfirmedFlag === value || this.lostError) return;
    this.unconfirmedFlag = value;
    try {
      this.onUnconfirmed?.(value);
    } catch {
      // the caller's problem
    }
  }

  private markLost(reason: LeaseLostReason, by?: LeaseHolder, notify = true): LeaseLostError {
    if (this.lostError) return this.lostError;
    this.lostError = new LeaseLostError(this.key, reason, by);
    this.stopRenewing();
    this.abort.abort(this.lostError);
    if (notify) this.fireLost();
    return this.lostError;
  }

  private fireLost(): void {
    const cb = this.onLost;
    this.onLost = undefined;
    if (!cb || !this.lostError || this.lostError.reason === 'released') return;
    try {
      cb(this.lostError);
    } catch {
      // the caller's problem; the lease is lost either way
    }
  }
}

function serialize(record: LeaseRecord): string {
  return JSON.stringify(record) + '\n';
}

function parseRecord(body: Buffer): LeaseRecord | undefined {
  try {
    const v = JSON.parse(body.toString('utf8')) as Partial<LeaseRecord> | null;
    const h = v?.holder;
    if (!v || typeof v.token !== 'string' || typeof v.ttlMs !== 'number' || !(v.ttlMs > 0) || typeof v.seq !== 'number') return undefined;
    if (!h || typeof h.runId !== 'string' || typeof h.stageId !== 'string' || typeof h.attempt !== 'number') return undefined;
    return v as LeaseRecord;
  } catch {
    return undefined;
  }
}
