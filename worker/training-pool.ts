/**
 * The training side of a worker process: one Temporal worker per GPU task queue, stopped while the
 * host is quarantined (a worker cannot pause its pollers, so they are shut down and built again
 * once the quarantine is cleared), and stopped for good when the worker drains or shuts down.
 */
import type { Worker } from '@temporalio/worker';
import type { HostHealth } from './host-health.js';

export interface ServedWorker {
  run(): Promise<void>;
  shutdown(): void;
  getState(): string;
}

export class TrainingPool implements ServedWorker {
  private current: Worker[] = [];
  private state: 'INITIALIZED' | 'RUNNING' | 'PAUSED' | 'STOPPING' | 'STOPPED' = 'INITIALIZED';
  private wake: (() => void) | undefined;

  constructor(
    private readonly build: () => Promise<Worker[]>,
    private readonly health: HostHealth,
    private readonly log: (line: string) => void,
  ) {
    health.on('quarantined', () => this.pause());
    health.on('cleared', () => this.wake?.());
  }

  getState(): string {
    return this.state;
  }

  async run(): Promise<void> {
    while (this.state !== 'STOPPING' && this.state !== 'STOPPED') {
      if (this.health.quarantined()) {
        this.state = 'PAUSED';
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
        continue;
      }
      this.current = await this.build();
      this.state = 'RUNNING';
      await Promise.all(this.current.map((w) => w.run()));
      this.current = [];
    }
    this.state = 'STOPPED';
  }

  /** Stops polling while the host is quarantined; running attempts end by themselves (they decline nothing already started). */
  private pause(): void {
    if (this.state !== 'RUNNING') return;
    this.log('[worker] training paused: the host is quarantined');
    for (const w of this.current) if (w.getState() === 'RUNNING') w.shutdown();
  }

  shutdown(): void {
    const was = this.state;
    this.state = 'STOPPING';
    for (const w of this.current) if (w.getState() === 'RUNNING') w.shutdown();
    if (was === 'PAUSED' || was === 'INITIALIZED') this.wake?.();
  }
}
