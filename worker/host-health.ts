/**
 * This host's health, as one worker process keeps it: a host whose preflight fails, or whose jobs
 * fail `failuresToQuarantine` attempts of different stages within `windowMs`, is quarantined — it
 * stops taking GPU work (training-pool.ts stops polling) until `refinery worker clear <host>` or a
 * restart of `refinery worker` clears it. The quarantine is a record in the bucket
 * (storage/fleet.ts), so `status` and `refinery workers` show it and every worker on the host
 * honours it.
 */
import { EventEmitter } from 'node:events';
import { listWorkers, readQuarantine, writeQuarantine, type QuarantineRecord } from '../storage/fleet.js';
import type { ObjectStore } from '../storage/object-store.js';
import type { HostHealthView } from '../activities/worker-context.js';
import type { FailureKind } from '../workflows/failures.js';

export interface HostHealthOptions {
  store: ObjectStore;
  host: string;
  workerId: string;
  /** Job failures of different stages within the window that quarantine the host. Default 3. */
  failuresToQuarantine?: number;
  windowMs?: number;
  log?: (line: string) => void;
}

/** Job failures that say something about the host (not about the spec or the data). */
const HOST_SUSPECT: ReadonlySet<FailureKind> = new Set(['crash', 'stalled', 'timeout']);

export class HostHealth extends EventEmitter implements HostHealthView {
  readonly host: string;
  private quarantine: QuarantineRecord | undefined;
  /** The quarantine record being written: a refresh must not read the bucket before it lands. */
  private writing: Promise<void> = Promise.resolve();
  private failures: { stage: string; at: number }[] = [];
  private readonly failuresToQuarantine: number;
  private readonly windowMs: number;
  private readonly log: (line: string) => void;

  constructor(private readonly o: HostHealthOptions) {
    super();
    this.host = o.host;
    this.failuresToQuarantine = o.failuresToQuarantine ?? 3;
    this.windowMs = o.windowMs ?? 30 * 60_000;
    this.log = o.log ?? ((line) => console.warn(line));
  }

  quarantined(): string | undefined {
    return this.quarantine?.reason;
  }

  async preflightFailed(reason: string): Promise<void> {
    await this.enterQuarantine(`preflight failed: ${reason}`);
  }

  async jobFailed(f: { runId: string; stageId: string; kind: FailureKind; message: string }): Promise<void> {
    if (!HOST_SUSPECT.has(f.kind)) return;
    const now = Date.now();
    this.failures = this.failures.filter((x) => now - x.at < this.windowMs);
    this.failures.push({ stage: `${f.runId}/${f.stageId}`, at: now });
    const stages = new Set(this.failures.map((x) => x.stage));
    if (stages.size >= this.failuresToQuarantine) {
      await this.enterQuarantine(`jobs of ${stages.size} different stages failed here within ${Math.round(this.windowMs / 60_000)} min (last: ${f.message.slice(0, 200)})`);
    }
  }

  async anotherHostServes(taskQueue: string): Promise<boolean> {
    const workers = await listWorkers(this.o.store);
    return workers.some((w) => w.live && w.host !== this.host && w.state === 'active' && w.taskQueues.includes(taskQueue));
  }

  /** Reads the host's quarantine record from the bucket (another worker of the host, or the CLI, may have changed it). */
  async refresh(): Promise<void> {
    await this.writing;
    const record = await readQuarantine(this.o.store, this.host);
    const was = this.quarantine;
    this.quarantine = record;
    if (was && !record) {
      this.failures = [];
      this.log(`[worker] host ${this.host} is out of quarantine: taking GPU work again`);
      this.emit('cleared');
    } else if (!was && record) {
      this.log(`[worker] host ${this.host} is quarantined (${record.reason}): no GPU work until \`refinery worker clear ${this.host}\` or a restart`);
      this.emit('quarantined', record);
    }
  }

  private async enterQuarantine(reason: string): Promise<void> {
    if (this.quarantine) return;
    const record: QuarantineRecord = { host: this.host, reason, since: new Date().toISOString(), by: this.o.workerId };
    this.quarantine = record;
    this.log(`[worker] host ${this.host} quarantined: ${reason}; it takes no GPU work until \`refinery worker clear ${this.host}\` or a restart`);
    this.emit('quarantined', record);
    this.writing = writeQuarantine(this.o.store, record).catch((err: unknown) => this.log(`[worker] could not record the quarantine of ${this.host} in the bucket: ${String(err)}`));
    await this.writing;
  }
}
