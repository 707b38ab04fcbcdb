/**
 * `refinery workers`, `refinery worker drain`, `refinery worker clear`: the fleet as the bucket
 * records it (storage/fleet.ts). A drain request is a note the worker finds within seconds; the
 * command waits until the worker has drained and left (or `--no-wait`).
 */
import { userInfo } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { clearQuarantine, listQuarantined, listWorkers, requestDrain, type QuarantineRecord } from '../../storage/fleet.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { CliError } from '../errors.js';
import { EXIT } from '../exit-codes.js';

export type FleetWorker = Awaited<ReturnType<typeof listWorkers>>[number];

export async function fleetView(store: ObjectStore): Promise<{ workers: FleetWorker[]; quarantined: QuarantineRecord[] }> {
  const [workers, quarantined] = await Promise.all([listWorkers(store), listQuarantined(store)]);
  return { workers, quarantined };
}

export function renderFleet(view: { workers: FleetWorker[]; quarantined: QuarantineRecord[] }): string {
  const lines: string[] = [];
  const live = view.workers.filter((w) => w.live);
  if (live.length === 0) lines.push('no live workers');
  for (const w of live) {
    lines.push(`${w.workerId}  host ${w.host}  ${w.state}  queues ${w.taskQueues.join(',')}  gpus ${w.gpus.length ? w.gpus.join(',') : 'none'}  running ${w.running}  seen ${w.seenAt}`);
  }
  const gone = view.workers.length - live.length;
  if (gone > 0) lines.push(`(${gone} record(s) of workers not seen for a minute: gone without leaving)`);
  for (const q of view.quarantined) lines.push(`host ${q.host} QUARANTINED since ${q.since}: ${q.reason}  (clear: refinery worker clear ${q.host})`);
  return lines.join('\n');
}

export interface DrainOptions {
  /** Worker ids, or (with `host`) every live worker of a host. */
  workerIds: string[];
  host?: string;
  by?: string;
  wait: boolean;
  timeoutMs: number;
  log: (line: string) => void;
}

/** Leaves a drain request for each worker named; with `wait`, returns once each has drained and left. */
export async function drainWorkers(store: ObjectStore, o: DrainOptions): Promise<string[]> {
  const workers = (await listWorkers(store)).filter((w) => w.live);
  const targets = o.host ? workers.filter((w) => w.host === o.host).map((w) => w.workerId) : o.workerIds;
  if (targets.length === 0) throw new CliError(o.host ? `no live worker on host "${o.host}"` : 'name a worker id or --host', 'see "refinery workers"', o.host ? EXIT.notFound : EXIT.badInput);
  const unknown = targets.filter((id) => !workers.some((w) => w.workerId === id));
  if (unknown.length > 0) throw new CliError(`no live worker "${unknown.join('", "')}"`, 'see "refinery workers"', EXIT.notFound);
  const requestedBy = o.by ?? userInfo().username;
  for (const id of targets) await requestDrain(store, id, { requestedBy, requestedAt: new Date().toISOString() });
  o.log(`drain requested for ${targets.join(', ')}`);
  if (!o.wait) return targets;
  const deadline = Date.now() + o.timeoutMs;
  for (;;) {
    const left = (await listWorkers(store)).filter((w) => w.live && targets.includes(w.workerId));
    if (left.length === 0) {
      o.log(`drained: ${targets.join(', ')}`);
      return targets;
    }
    if (Date.now() > deadline) throw new CliError(`still draining after ${o.timeoutMs / 1000} s: ${left.map((w) => `${w.workerId} (${w.running} running)`).join(', ')}`);
    await sleep(1000);
  }
}

export async function clearHost(store: ObjectStore, host: string): Promise<boolean> {
  return clearQuarantine(store, host);
}
