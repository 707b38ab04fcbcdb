/**
 * The one reader of job logs and events in the bucket (`refinery logs`, `refinery report`).
 *
 * An attempt's log (or events file) is either one object, `logs/<stage>/attempt-N.log`, written
 * when the attempt ended, or, while it runs and after it was killed, the parts flushed so far,
 * `attempt-N.log.parts/000001…` (activities/log-shipper.ts). The parts, in order, are always a
 * prefix of the whole file. The shipper's finish() writes the whole object first and deletes the
 * parts after, so a reader that finds a part gone looks for the whole object instead.
 */
import type { Readable } from 'node:stream';
import { layout, segment } from './layout.js';
import { isNotFound, type ObjectStore } from './object-store.js';

export type JobLogKind = 'log' | 'events';

export interface JobLogRef {
  stage: string;
  attempt: number;
  kind: JobLogKind;
  /** The whole object's key (layout.jobLog / layout.jobEvents), whether it exists yet or not. */
  key: string;
  /** The whole object exists: the attempt ended and its shipper finished. */
  complete: boolean;
  /** The whole object's size, when complete. */
  size?: number;
}

export interface JobLogPart {
  n: number;
  key: string;
  size: number;
}

const ENTRY_RE = /^attempt-(\d+)\.(log|events\.jsonl)(\.parts\/)?$/;
const PART_RE = /\.parts\/(\d+)$/;
const PARALLEL_READS = 8;

/**
 * Every attempt with a log or events object, or only parts of one, under `runKey`
 * (layout.run(prefix, runId)), by stage then attempt. Lists by folder, so parts cost nothing here.
 */
export async function listJobLogs(store: ObjectStore, runKey: string, options: { stage?: string; kind?: JobLogKind } = {}): Promise<JobLogRef[]> {
  const logsPrefix = `${runKey}/logs/`;
  const stages =
    options.stage !== undefined
      ? [segment(options.stage)]
      : (await store.list(logsPrefix, false)).filter((o) => o.key.endsWith('/')).map((o) => o.key.slice(logsPrefix.length, -1));
  const perStage = await Promise.all(
    stages.map(async (stage) => {
      const dir = `${logsPrefix}${stage}/`;
      const found = new Map<string, JobLogRef>();
      for (const o of await store.list(dir, false)) {
        const m = ENTRY_RE.exec(o.key.slice(dir.length));
        if (!m) continue;
        const attempt = Number(m[1]);
        const kind: JobLogKind = m[2] === 'log' ? 'log' : 'events';
        if (options.kind !== undefined && kind !== options.kind) continue;
        const key = `${dir}attempt-${attempt}.${m[2]}`;
        const ref = found.get(key) ?? { stage, attempt, kind, key, complete: false };
        if (!m[3]) Object.assign(ref, { complete: true, size: o.size });
        found.set(key, ref);
      }
      return [...found.values()];
    }),
  );
  return perStage.flat().sort((a, b) => a.stage.localeCompare(b.stage) || a.attempt - b.attempt || a.kind.localeCompare(b.kind));
}

/** The parts of `key` after part `after`, in order, contiguous (a gap ends the list). */
export async function listJobLogParts(store: ObjectStore, key: string, after = 0): Promise<JobLogPart[]> {
  const prefix = `${layout.jobLogParts(key)}/`;
  const startAfter = after > 0 ? layout.jobLogPart(key, after) : '';
  const parts: JobLogPart[] = [];
  const stream = store.client.listObjectsV2(store.bucket, prefix, true, startAfter);
  for await (const item of stream as AsyncIterable<{ name?: string; size?: number }>) {
    const m = item.name ? PART_RE.exec(item.name) : null;
    if (m && item.name) parts.push({ n: Number(m[1]), key: item.name, size: item.size ?? 0 });
  }
  parts.sort((a, b) => a.n - b.n);
  const out: JobLogPart[] = [];
  for (const p of parts) {
    if (p.n !== after + out.length + 1) break;
    out.push(p);
  }
  return out;
}

/**
 * A job log as far as it is stored: the whole object when there is one, else its parts joined
 * in order (an attempt still running, or killed); undefined when neither exists.
 */
export async function readJobLog(store: ObjectStore, key: string): Promise<Buffer | undefined> {
  const whole = await store.getBytes(key);
  if (whole) return whole;
  const tail = new JobLogTail(store, key);
  const bytes = await tail.read();
  return tail.found ? bytes : undefined;
}

/**
 * A job log as far as it is stored, as readJobLog has it but streamed: the whole object when there
 * is one, else its parts in order, carrying on with the whole object from where the parts stopped
 * when they go away meanwhile (the parts are a prefix of it). Memory is a chunk or two, whatever the
 * log's size. `found` tells, once the chunks are read, whether either form existed.
 */
export function streamJobLog(store: ObjectStore, key: string): { chunks: AsyncIterable<Buffer>; readonly found: boolean } {
  const state = { found: false };
  async function* chunks(): AsyncGenerator<Buffer> {
    const whole = await store.readStream(key);
    if (whole) {
      state.found = true;
      yield* whole;
      return;
    }
    let offset = 0;
    for (const part of await listJobLogParts(store, key)) {
      const body = await store.readStream(part.key);
      // Gone under us: the shipper has written the whole object, and deletes the parts after.
      if (!body) break;
      state.found = true;
      for await (const chunk of body) {
        offset += chunk.length;
        yield chunk;
      }
    }
    // The rest, if the whole object has appeared since (nothing, while the attempt still runs).
    const rest = await streamFrom(store, key, offset);
    if (!rest) return;
    state.found = true;
    yield* rest;
  }
  return {
    chunks: chunks(),
    get found() {
      return state.found;
    },
  };
}

/** The object's bytes from `offset` on, streamed; undefined when it does not exist. */
async function streamFrom(store: ObjectStore, key: string, offset: number): Promise<AsyncIterable<Buffer> | Iterable<Buffer> | undefined> {
  if (offset <= 0) return store.readStream(key);
  try {
    return (await store.client.getPartialObject(store.bucket, key, offset)) as AsyncIterable<Buffer>;
  } catch (err) {
    if (isNotFound(err)) return undefined;
    // Asked from its very end: nothing new.
    if ((err as { code?: string }).code === 'InvalidRange') return [];
    throw err;
  }
}

/**
 * Follows one job log across polls, whichever form it is stored in: each read() returns the
 * bytes stored since the last one, and carries on from the parts to the whole object seamlessly
 * (the parts are a prefix of it).
 */
export class JobLogTail {
  /** Bytes returned so far. */
  offset = 0;
  /** A part or the whole object has been seen. */
  found = false;
  /** The whole object has been read: nothing more will come. */
  complete = false;
  /** Parts seen so far (sizes as last listed). */
  private parts: JobLogPart[] = [];

  constructor(
    readonly store: ObjectStore,
    readonly key: string,
  ) {}

  /** `seen`: what a listing just said about the whole object (saves a request). */
  async read(seen?: { complete: boolean; size?: number }): Promise<Buffer> {
    const out: Buffer[] = [];
    const take = (b: Buffer) => {
      if (b.length === 0) return;
      out.push(b);
      this.offset += b.length;
    };
    if (!seen?.complete && !this.complete) {
      const fromParts = await this.readParts(take);
      if (fromParts === 'ok') return Buffer.concat(out);
    }
    // The whole object (listed as there, or the parts were just replaced by it).
    const size = seen?.complete ? seen.size : undefined;
    if (size === undefined || size > this.offset) {
      const rest = await readFrom(this.store, this.key, this.offset);
      if (rest !== undefined) {
        this.found = true;
        this.complete = true;
        take(rest);
      }
    } else {
      this.found = this.complete = true;
    }
    return Buffer.concat(out);
  }

  /** 'gone' when the parts went away under us (or there are none): look for the whole object. */
  private async readParts(take: (b: Buffer) => void): Promise<'ok' | 'gone'> {
    // Re-list the last part seen too: a part whose upload was retried after a lost reply holds more.
    const last = this.parts.at(-1);
    const from = last ? last.n - 1 : 0;
    const fresh = await listJobLogParts(this.store, this.key, from);
    if (fresh.length === 0) return 'gone';
    this.found = true;
    this.parts = [...this.parts.slice(0, from), ...fresh];
    const wanted: { key: string; from: number }[] = [];
    let start = 0;
    for (const p of this.parts) {
      const end = start + p.size;
      if (end > this.offset) wanted.push({ key: p.key, from: Math.max(0, this.offset - start) });
      start = end;
    }
    // A few at a time, in order (a long-running attempt followed late has thousands of parts).
    for (let i = 0; i < wanted.length; i += PARALLEL_READS) {
      const batch = await Promise.all(wanted.slice(i, i + PARALLEL_READS).map((w) => readFrom(this.store, w.key, w.from)));
      for (const bytes of batch) {
        if (bytes === undefined) return 'gone';
        take(bytes);
      }
    }
    return 'ok';
  }
}

/** The object's bytes from `offset` on; undefined when it does not exist. */
async function readFrom(store: ObjectStore, key: string, offset: number): Promise<Buffer | undefined> {
  if (offset <= 0) return store.getBytes(key);
  try {
    const stream = (await store.client.getPartialObject(store.bucket, key, offset)) as Readable;
    const chunks: Buffer[] = [];
    for await (const c of stream) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    // Asked from its very end: nothing new.
    if ((err as { code?: string }).code === 'InvalidRange') return Buffer.alloc(0);
    throw err;
  }
}
