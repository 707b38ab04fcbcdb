/**
 * A training worker's place in the fleet (storage/fleet.ts): its record in the bucket, refreshed
 * while it runs (what `refinery workers` lists, and how an attempt knows another host can take a
 * retry); its host's quarantine, re-read every refresh; and drain requests left by
 * `refinery worker drain`, looked for every few seconds.
 *
 * Starting a worker clears its host's quarantine: restarting `refinery worker` is how an operator
 * says the host was looked at (the other way is `refinery worker clear <host>`).
 */
import { EventEmitter } from 'node:events';
import {
  clearQuarantine,
  readDrainRequest,
  REFRESH_MS,
  removeDrainRequest,
  removeWorkerRecord,
  writeWorkerRecord,
  type DrainRequest,
  type WorkerRecord,
  type WorkerState,
} from '../storage/fleet.js';
import type { ObjectStore } from '../storage/object-store.js';
import type { WorkerDrain } from './drain.js';
import type { HostHealth } from './host-health.js';

/** How often a worker looks for a drain request of its own. */
const DRAIN_POLL_MS = 3_000;

export interface FleetMembershipOptions {
  store: ObjectStore;
  workerId: string;
  host: string;
  taskQueues: string[];
  gpus: number[];
  drain: WorkerDrain;
  health: HostHealth;
  log: (line: string) => void;
}

export class FleetMembership extends EventEmitter {
  private timers: NodeJS.Timeout[] = [];
  private readonly startedAt = new Date().toISOString();
  private state: WorkerState = 'active';

  constructor(private readonly o: FleetMembershipOptions) {
    super();
    o.health.on('quarantined', () => void this.publish('quarantined'));
    o.health.on('cleared', () => void this.publish('active'));
  }

  get workerId(): string {
    return this.o.workerId;
  }

  async join(): Promise<void> {
    if (await clearQuarantine(this.o.store, this.o.host).catch(() => false)) this.o.log(`[worker] cleared the quarantine of host ${this.o.host} (a worker restart clears it)`);
    await removeDrainRequest(this.o.store, this.o.workerId).catch(() => undefined);
    await this.publish('active');
    // Not unref()d: a paused (quarantined) worker has nothing else keeping it alive.
    this.timers.push(setInterval(() => void this.refresh(), REFRESH_MS));
    this.timers.push(setInterval(() => void this.checkDrainRequest(), DRAIN_POLL_MS));
  }

  async markDraining(): Promise<void> {
    await this.publish('draining');
  }

  /** Leaves the fleet: the record goes, so nobody counts on this worker any more. */
  async leave(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    await removeWorkerRecord(this.o.store, this.o.workerId).catch(() => undefined);
    await removeDrainRequest(this.o.store, this.o.workerId).catch(() => undefined);
  }

  private record(): WorkerRecord {
    return { workerId: this.o.workerId, host: this.o.host, pid: process.pid, taskQueues: this.o.taskQueues, gpus: this.o.gpus, state: this.state, startedAt: this.startedAt, running: this.o.drain.runningAttempts };
  }

  private async publish(state: WorkerState): Promise<void> {
    if (this.state !== 'draining') this.state = state;
    await writeWorkerRecord(this.o.store, this.record()).catch((err: unknown) => this.o.log(`[worker] could not write the fleet record: ${String(err)}`));
  }

  private async refresh(): Promise<void> {
    await this.o.health.refresh().catch(() => undefined);
    await this.publish(this.o.health.quarantined() ? 'quarantined' : this.state === 'quarantined' ? 'active' : this.state);
  }

  private async checkDrainRequest(): Promise<void> {
    if (this.o.drain.draining) return;
    const request: DrainRequest | undefined = await readDrainRequest(this.o.store, this.o.workerId).catch(() => undefined);
    if (request) this.emit('drain-requested', request);
  }
}
