/**
 * Live progress of a training attempt, as heartbeat details only (no history events): the CLI and
 * the Temporal UI read it from the stage workflow's pending activity. Heartbeats also run on a
 * timer, so a quiet phase (large downloads, a slow job setup, the kill grace after a cancel, the
 * output commit) does not read as a dead worker; a job that makes no progress is the stall
 * timeout's business, not the heartbeat timeout's. How fresh the details are is bounded by the
 * worker's heartbeat throttle (worker/create-workers.ts).
 */
import { Context } from '@temporalio/activity';
import type { StageProgress } from '../workflows/types.js';

export class ProgressHeartbeat {
  private ticker: NodeJS.Timeout | undefined;
  /** The attempt's own context: updates also come from outside it (a worker's drain). */
  private readonly context = Context.current();

  constructor(public progress: StageProgress) {}

  /** Merges `patch` into the progress and heartbeats it. */
  update(patch: Partial<StageProgress>): void {
    this.progress = { ...this.progress, ...patch };
    this.context.heartbeat(this.progress);
  }

  /** Heartbeats the current progress every `everyMs` until stopped. */
  start(everyMs: number): void {
    this.update({});
    this.ticker = setInterval(() => this.context.heartbeat(this.progress), everyMs);
  }

  stop(): void {
    clearInterval(this.ticker);
  }
}
