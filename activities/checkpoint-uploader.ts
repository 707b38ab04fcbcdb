/**
 * Commits a job's checkpoints to the bucket while it keeps training: one at a time, in order;
 * each one fenced by the stage lease (an attempt that lost its lease commits nothing), recorded in
 * the attempt's records, then retention (save_total_limit) in the bucket and on local disk.
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

export class CheckpointUploader {
  private queue: Promise<void> = Promise.resolve();
  /** The first failure: later checkpoints are not committed, and the attempt fails with it. */
  error: unknown;

  constructor(private readonly o: CheckpointUploaderOptions) {}

  /** The newest step committed by this uploader. */
  lastCommitted: number | null = null;

  /** Queues the commit of checkpoint `step` (the job wrote it to `dir`), taken at `loss`. */
  add(step: number, dir: string, loss?: number | string | null): void {
    this.queue = this.queue.then(async () => {
      if (this.error) return;
      try {
        await this.commit(step, dir, loss);
      } catch (err) {
        this.error = err;
      }
    });
  }

  /** Resolves when every queued checkpoint is committed (or failed). */
  drain(): Promise<void> {
    return this.queue;
  }

  private async commit(step: number, dir: string, loss?: number | string | null): Promise<void> {
    const { store, artifactPrefix, retry } = this.o;
    // Object storage may be away for a while (restart, network): keep trying, the job trains on.
    // Fenced: the marker is written only while this attempt holds the stage lease.
    const artifact = await retry(`commit of checkpoint ${step}`, () => commitCheckpoint(store, artifactPrefix, step, dir, { beforeCommit: this.o.assertMayCommit, epoch: this.o.epoch, signal: this.o.signal, loss }));
    await this.o.records.record('checkpoint-committed', { step, manifestSha256: artifact.manifestSha256, epoch: this.o.epoch, loss: loss ?? null });
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
