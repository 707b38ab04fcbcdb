/**
 * Ships a growing local file (a job's log or its contract events) to the bucket while the job
 * runs, so that `refinery logs --follow` can follow a running stage and a worker killed with
 * SIGKILL loses at most the last flush interval of the attempt's log and loss curve.
 *
 *   while it runs   the bytes appended since the last flush go up as a new part object,
 *                   <key>.parts/000001, 000002, … (layout.jobLogPart): every `intervalMs`, or as
 *                   soon as `maxBytes` new bytes are there. One upload in flight at most; each part
 *                   holds at most `maxBytes` and ends at a line end ('\n' or '\r'), so a part of
 *                   the events file holds whole JSON lines (JSON text has no raw CR or LF).
 *   finish()        uploads the whole file as <key> (as before this existed), then deletes the
 *                   parts: a finished attempt has one object.
 *
 * The concatenation of the parts, in order, is always a prefix of the file (storage/job-logs.ts
 * reads either form). Uploads that fail (object storage away) are retried on the next interval and
 * never throw into the activity; they log one warning per outage, not one per try.
 *
 * Reading a growing file is safe: the writers (activities/job-process.ts for the log,
 * the activity's events stream) append with write(2) through fs.WriteStream, and we read, through
 * our own descriptor, only bytes below the size fstat reported; a line torn across two writes is
 * never shipped before its end arrives (the cut is at the last line end).
 */
import { open, stat } from 'node:fs/promises';
import { log } from '@temporalio/activity';
import { layout } from '../storage/layout.js';
import type { ObjectStore } from '../storage/object-store.js';

export interface LogShippingOptions {
  store: ObjectStore;
  /** Local path being appended to (it may not exist yet). */
  file: string;
  /** The object the whole file becomes: layout.jobLog(...) or layout.jobEvents(...). */
  key: string;
  /** Longest time new bytes wait before they go up. Default 10 s. */
  intervalMs?: number;
  /** Upload early once this many new bytes are there; also the most a part holds. Default 1 MiB. */
  maxBytes?: number;
  /** How often the file's size is looked at (one stat). Default min(1 s, intervalMs). */
  pollMs?: number;
  /** How long finish() keeps retrying the whole-file upload while the store is away. Default 15 s. */
  finishRetryMs?: number;
}

export interface LogShipper {
  /** Uploads every complete line appended so far (several parts when more than maxBytes). Never throws. */
  flushNow(): Promise<void>;
  /**
   * Stops shipping; uploads the whole file as `key` and deletes the parts. Call it once the
   * writer has closed the file. Never throws: when the store stays away, the parts stay (and
   * whatever of the file could still go up as parts).
   */
  finish(): Promise<void>;
}

export const DEFAULT_LOG_FLUSH_MS = 10_000;
export const DEFAULT_LOG_PART_BYTES = 1024 * 1024;

/**
 * How many bytes of `chunk` go into a part: up to and including its last line end ('\n' or
 * '\r'); all of it when `final` (the end of the file) or when it is a full part without any line
 * end (a line longer than a part cannot wait for its end); 0 when it must wait for more.
 */
export function partCut(chunk: Buffer, maxBytes: number, final = false): number {
  if (final) return chunk.length;
  const cut = Math.max(chunk.lastIndexOf(0x0a), chunk.lastIndexOf(0x0d)) + 1;
  if (cut > 0) return cut;
  return chunk.length >= maxBytes ? chunk.length : 0;
}

function warn(message: string, meta: Record<string, unknown>): void {
  try {
    log.warn(message, meta);
  } catch {
    // Not in an activity context (tests, tools): the process's own stderr.
    console.warn(`${message} ${JSON.stringify(meta)}`);
  }
}

async function sizeOf(file: string): Promise<number | undefined> {
  try {
    return (await stat(file)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

export function startLogShipping(options: LogShippingOptions): LogShipper {
  const { store, file, key } = options;
  const intervalMs = Math.max(1, options.intervalMs ?? DEFAULT_LOG_FLUSH_MS);
  const maxBytes = Math.max(1, options.maxBytes ?? DEFAULT_LOG_PART_BYTES);
  const pollMs = Math.max(1, options.pollMs ?? Math.min(1000, intervalMs));
  const finishRetryMs = options.finishRetryMs ?? 15_000;

  /** Bytes of the file already in parts; the next part's number. */
  let shipped = 0;
  let nextPart = 1;
  /** Parts a crashed earlier holder of this very key left behind go first (once). */
  let staleChecked = false;
  /** The flush running now, if any: never more than one. */
  let running: Promise<void> | undefined;
  let lastFlushAt = Date.now();
  let failingSince: number | undefined;
  let failures = 0;
  let stopped = false;
  let finishing: Promise<void> | undefined;

  const partsPrefix = `${layout.jobLogParts(key)}/`;

  /** One round: ships every complete line there (and a last line without its end when `final`). */
  const ship = async (final: boolean): Promise<void> => {
    const size = await sizeOf(file);
    if (size === undefined || size <= shipped) return;
    if (!staleChecked) {
      const stale = (await store.list(partsPrefix)).filter((o) => !o.key.endsWith('/')).map((o) => o.key);
      await store.remove(stale);
      staleChecked = true;
    }
    const fh = await open(file, 'r');
    try {
      while (shipped < size) {
        const want = Math.min(maxBytes, size - shipped);
        const buf = Buffer.allocUnsafe(want);
        const { bytesRead } = await fh.read(buf, 0, want, shipped);
        if (bytesRead === 0) return; // the file was truncated under us: nothing more to say
        const chunk = buf.subarray(0, bytesRead);
        const len = partCut(chunk, maxBytes, final && shipped + bytesRead >= size);
        if (len === 0) return;
        await store.putBytes(layout.jobLogPart(key, nextPart), chunk.subarray(0, len));
        shipped += len;
        nextPart++;
      }
    } finally {
      await fh.close();
    }
  };

  /** A flush that never throws; failures wait for the next interval. */
  const flush = (final = false): Promise<void> => {
    const previous = running ?? Promise.resolve();
    const next: Promise<void> = previous.then(async () => {
      lastFlushAt = Date.now();
      try {
        await ship(final);
        if (failingSince !== undefined) {
          warn('job log shipping caught up', { key, failedFlushes: failures, outageMs: Date.now() - failingSince, bytes: shipped });
          failingSince = undefined;
          failures = 0;
        }
      } catch (err) {
        failures++;
        if (failingSince === undefined) {
          failingSince = Date.now();
          warn('could not ship the job log; retrying on the next interval', { key, error: String(err) });
        }
      }
    });
    running = next;
    void next.finally(() => {
      if (running === next) running = undefined;
    });
    return next;
  };

  let checking = false;
  const tick = async () => {
    if (stopped || running || checking) return;
    checking = true;
    try {
      const size = (await sizeOf(file).catch(() => undefined)) ?? 0;
      const pending = size - shipped;
      if (pending <= 0 || stopped || running) return;
      const due = Date.now() - lastFlushAt >= intervalMs;
      // Early for a full part, but not again right after a failure: that waits for the interval.
      if (due || (pending >= maxBytes && failingSince === undefined)) await flush();
    } finally {
      checking = false;
    }
  };
  const timer = setInterval(() => void tick(), pollMs);
  timer.unref();

  const finishOnce = async (): Promise<void> => {
    stopped = true;
    clearInterval(timer);
    await running;
    const size = await sizeOf(file).catch(() => undefined);
    if (size === undefined) return; // the job never started writing: nothing to keep
    const deadline = Date.now() + finishRetryMs;
    for (let delay = 500; ; delay = Math.min(delay * 2, 4000)) {
      try {
        await store.putFile(key, file);
        break;
      } catch (err) {
        if (Date.now() + delay > deadline) {
          warn('could not upload a job log; its parts stay in the bucket', { key, error: String(err) });
          // What the parts do not hold yet goes up too if the store came back meanwhile.
          await flush(true);
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
    try {
      const parts = (await store.list(partsPrefix)).filter((o) => !o.key.endsWith('/')).map((o) => o.key);
      await store.remove(parts);
    } catch (err) {
      // Harmless: readers take the whole object when it is there.
      warn('could not delete the parts of a job log', { key, error: String(err) });
    }
  };

  return {
    flushNow: () => (stopped ? Promise.resolve() : flush()),
    finish: () => (finishing ??= finishOnce()),
  };
}
