/**
 * The fleet as the bucket knows it: every worker's record (refreshed while it runs), the hosts in
 * quarantine, and the drain requests `refinery worker drain` leaves for a worker to find. Outside
 * any pipeline's prefix, because workers serve every pipeline:
 *
 *   refinery-fleet/workers/<workerId>.json      who, where, which task queues, state (refreshed every 15 s)
 *   refinery-fleet/hosts/<host>/quarantine.json why and since when a host takes no GPU work
 *   refinery-fleet/drain/<workerId>.json         a drain request for that worker
 *
 * A record's freshness is its object's LastModified (the store's clock): a worker not seen for
 * LIVE_WITHIN_MS is taken to be gone. Only placement decisions rest on it (which host avoids a
 * retry), never correctness (stage-lease.ts and the fenced commits keep that).
 */
import { segment } from './layout.js';
import type { ObjectStore } from './object-store.js';

export const FLEET_PREFIX = 'refinery-fleet';
/** A worker refreshes its record this often… */
export const REFRESH_MS = 15_000;
/** …and is live while its record is younger than this. */
export const LIVE_WITHIN_MS = 60_000;

export const fleetLayout = {
  worker: (workerId: string) => `${FLEET_PREFIX}/workers/${segment(workerId)}.json`,
  workers: () => `${FLEET_PREFIX}/workers/`,
  quarantine: (host: string) => `${FLEET_PREFIX}/hosts/${segment(host)}/quarantine.json`,
  hosts: () => `${FLEET_PREFIX}/hosts/`,
  drain: (workerId: string) => `${FLEET_PREFIX}/drain/${segment(workerId)}.json`,
};

export type WorkerState = 'active' | 'draining' | 'quarantined';

export interface WorkerRecord {
  workerId: string;
  host: string;
  pid: number;
  taskQueues: string[];
  gpus: number[];
  state: WorkerState;
  startedAt: string;
  /** Jobs running now. */
  running: number;
}

export interface QuarantineRecord {
  host: string;
  reason: string;
  since: string;
  /** The worker that put it there. */
  by: string;
}

export interface DrainRequest {
  requestedBy: string;
  requestedAt: string;
}

export async function writeWorkerRecord(store: ObjectStore, record: WorkerRecord): Promise<void> {
  await store.putJson(fleetLayout.worker(record.workerId), record);
}

export async function removeWorkerRecord(store: ObjectStore, workerId: string): Promise<void> {
  await store.remove([fleetLayout.worker(workerId)]);
}

/** Every worker record with its age; `live` ones were refreshed within LIVE_WITHIN_MS. */
export async function listWorkers(store: ObjectStore, now = Date.now()): Promise<(WorkerRecord & { seenAt: string; live: boolean })[]> {
  const objects = await store.list(fleetLayout.workers(), true);
  const out: (WorkerRecord & { seenAt: string; live: boolean })[] = [];
  for (const o of objects) {
    if (!o.key.endsWith('.json')) continue;
    const record = await store.getJson<WorkerRecord>(o.key).catch(() => undefined);
    if (!record) continue;
    const seen = o.lastModified?.getTime() ?? 0;
    out.push({ ...record, seenAt: new Date(seen).toISOString(), live: now - seen < LIVE_WITHIN_MS });
  }
  return out.sort((a, b) => a.host.localeCompare(b.host) || a.workerId.localeCompare(b.workerId));
}

export async function readQuarantine(store: ObjectStore, host: string): Promise<QuarantineRecord | undefined> {
  return store.getJson<QuarantineRecord>(fleetLayout.quarantine(host));
}

export async function listQuarantined(store: ObjectStore): Promise<QuarantineRecord[]> {
  const objects = await store.list(fleetLayout.hosts(), true);
  const out: QuarantineRecord[] = [];
  for (const o of objects) {
    if (!o.key.endsWith('/quarantine.json')) continue;
    const record = await store.getJson<QuarantineRecord>(o.key).catch(() => undefined);
    if (record) out.push(record);
  }
  return out;
}

export async function writeQuarantine(store: ObjectStore, record: QuarantineRecord): Promise<void> {
  await store.putJson(fleetLayout.quarantine(record.host), record);
}

export async function clearQuarantine(store: ObjectStore, host: string): Promise<boolean> {
  const had = await store.exists(fleetLayout.quarantine(host));
  if (had) await store.remove([fleetLayout.quarantine(host)]);
  return had;
}

export async function requestDrain(store: ObjectStore, workerId: string, request: DrainRequest): Promise<void> {
  await store.putJson(fleetLayout.drain(workerId), request);
}

export async function readDrainRequest(store: ObjectStore, workerId: string): Promise<DrainRequest | undefined> {
  return store.getJson<DrainRequest>(fleetLayout.drain(workerId));
}

export async function removeDrainRequest(store: ObjectStore, workerId: string): Promise<void> {
  await store.remove([fleetLayout.drain(workerId)]);
}
