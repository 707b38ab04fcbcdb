/**
 * Commits a job's checkpoints to the bucket while it keeps training: one at a time, in order;
 * each one fenced by the stage lease (an attempt that lost its lease commits nothing), recorded in
 * the attempt's records, then retention (save_total_limit) in the bucket and on local disk.
 *
 * The queue holds at most one checkpoint besides the one going up: when the job saves faster than
 * the bucket takes them (a slow link, a large model, frequent saves), a newer checkpoint supersedes
 * the waiting one, which is recorded as superseded and removed from scratch. A resume only ever
 * wants the newest, so nothing is lost but upload time, and scratch holds at most three (the one
 * going up, the one waiting, the one the job is writing), not one per save.
 */
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { commitCheckpoint, pruneCheckpoints } from '../storage/checkpoints.js';
import type { AttemptRecorder } from '../storage/attempt-records.js';
import type { ObjectStore } from '../storage/object-store.js';
import type { StorageRetry } from './storage-retry.js';

export interface CheckpointUploaderOptions {
  store: ObjectStore;
  artifactPrefix: string;
  /** Local folder the job writes checkpoint-N/ into. */
  checkpointDir: string;
  /** Committed checkpoints kept in the bucket. */
  keep: number;
  /** The checkpoint the job resumed from: kept locally, the job may still read it. */
  resumedFromDir?: string;
  retry: StorageRetry;
  /** Throws when this attempt may no longer commit (its lease was taken over). */
  assertMayCommit: () => Promise<void>;
  /** The attempt's lease epoch: commits are fenced by it (storage/commit.ts). */
  epoch: number;
  /** Aborted when the lease is lost: no further file of a checkpoint goes up. */
  signal: AbortSignal;
  records: AttemptRecorder;
  onCommitted: (step: number) => void;
}

interface QueuedCheckpoint {
  step: number;
  dir: string;
  loss?: number | string | null;
  /** How long the job's training stood still writing it (its `checkpoint` event). */
  saveSeconds?: number;
}

export class CheckpointUploader {
  private queue: Promise<void> = Promise.resolve();
  /** The checkpoint waiting for the one going up to finish (at most one: see the module comment). */
  private waiting: QueuedCheckpoint | undefined;
  /** Checkpoints a newer one superseded before their upload began, to be recorded. */
  private superseded: { step: number; by: number }[] = [];
  /** The first failure: later checkpoints are not committed, and the attempt fails with it. */
  error: unknown;

  constructor(private readonly o: CheckpointUploaderOptions) {}

  /** The newest step committed by this uploader. */
  lastCommitted: number | null = null;
  /** Steps superseded so far (never uploaded). */
  readonly supersededSteps: number[] = [];

  /** Queues the commit of checkpoint `step` (the job wrote it to `dir`, in `saveSeconds`), taken at `loss`. */
  add(step: number, dir: string, loss?: number | string | null, saveSeconds?: number): void {
    const older = this.waiting;
    if (older) {
      this.superseded.push({ step: older.step, by: step });
      this.supersededSteps.push(older.step);
      // Its files are of no use any more: scratch stays bounded however far behind the uploads fall.
      if (older.dir !== this.o.resumedFromDir) void rm(older.dir, { recursive: true, force: true });
    }
    this.waiting = { step, dir, loss, ...(saveSeconds !== undefined ? { saveSeconds } : {}) };
    this.queue = this.queue.then(async () => {
      const next = this.waiting;
      this.waiting = undefined;
      if (!next || this.error) return;
      try {
        for (const s of this.superseded.splice(0)) await this.o.records.record('checkpoint-superseded', { step: s.step, supersededBy: s.by });
        await this.commit(next);
      } catch (err) {
        this.error = err;
      }
    });
  }

  /** Resolves when every queued checkpoint is committed (or failed). */
  drain(): Promise<void> {
    return this.queue;
  }

  private async commit({ step, dir, loss, saveSeconds }: QueuedCheckpoint): Promise<void> {
    const { store, artifactPrefix, retry } = this.o;
    // Object storage may be away for a while (restart, network): keep trying, the job trains on.
    // Fenced: the marker is written only while this attempt holds the stage lease. The job trains
    // while this goes up: its bytes move at low CPU and I/O priority, so the job keeps its cores.
    const artifact = await retry(`commit of checkpoint ${step}`, () =>
      commitCheckpoint(store, artifactPrefix, step, dir, { beforeCommit: this.o.assertMayCommit, epoch: this.o.epoch, signal: this.o.signal, loss, lowPriority: true }),
    );
    await this.o.records.record('checkpoint-committed', { step, manifestSha256: artifact.manifestSha256, epoch: this.o.epoch, loss: loss ?? null, ...(saveSeconds !== undefined ? { saveSeconds } : {}) });
    this.lastCommitted = step;
    this.o.onCommitted(step);
    // Fenced too: an attempt that lost its lease must not prune the new holder's checkpoints.
    await this.o.assertMayCommit();
    await retry('checkpoint retention', () => pruneCheckpoints(store, artifactPrefix, this.o.keep));
    // Locally only the newest committed checkpoint is worth keeping (and the one resumed from).
    for (const entry of await readdir(this.o.checkpointDir)) {
      const m = /^checkpoint-(\d+)$/.exec(entry);
      const local = path.join(this.o.checkpointDir, entry);
      if (m && Number(m[1]) < step && local !== this.o.resumedFromDir) await rm(local, { recursive: true, force: true });
    }
  }
}
