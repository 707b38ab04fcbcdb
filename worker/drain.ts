/**
 * Draining a worker for a deploy (SIGTERM, or `refinery worker drain`): it stops taking work, asks
 * every running job to checkpoint now (the contract's checkpoint signal), commits that checkpoint,
 * and ends each attempt as drained — an infrastructure failure, so the next attempt, on any worker,
 * resumes at the drained step without using a stage attempt (workflows/attempt-policy.ts).
 */
import type { DrainView } from '../activities/worker-context.js';

export class WorkerDrain implements DrainView {
  private readonly controller = new AbortController();
  private running = new Set<Promise<unknown>>();
  private idleWaiters: (() => void)[] = [];
  reason: string | undefined;

  constructor(readonly checkpointTimeoutMs = 5 * 60_000) {}

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  get draining(): boolean {
    return this.controller.signal.aborted;
  }

  get runningAttempts(): number {
    return this.running.size;
  }

  track<T>(done: Promise<T>): Promise<T> {
    this.running.add(done);
    const settle = () => {
      this.running.delete(done);
      if (this.running.size === 0) for (const w of this.idleWaiters.splice(0)) w();
    };
    done.then(settle, settle);
    return done;
  }

  /** Starts the drain (idempotent). */
  start(reason: string): void {
    if (this.draining) return;
    this.reason = reason;
    this.controller.abort(new Error(`worker draining: ${reason}`));
  }

  /** Resolves when no attempt runs any more. */
  idle(): Promise<void> {
    if (this.running.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }
}
