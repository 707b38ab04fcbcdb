/**
 * `logs`: the job output a run stored in the bucket, `logs/<stage>/attempt-N.log` (or with
 * `events`, the contract events beside it), in stage order then attempt order. An attempt still
 * running, or killed, has only the parts its worker flushed so far (storage/job-logs.ts reads
 * both). With `follow`, polls for new attempts and new bytes until the run's status.json appears
 * and every attempt's whole object is there (or the run has been closed for `closeGraceMs`:
 * a killed attempt never gets one).
 */
import { StringDecoder } from 'node:string_decoder';
import { JobLogTail, listJobLogs } from '../../storage/job-logs.js';
import { layout, segment } from '../../storage/layout.js';
import { ObjectStore } from '../../storage/object-store.js';
import { CliError } from '../errors.js';
import { checkRunRef, readManifest, runClosedAt, storeCall, type RunManifest, type RunRef } from '../run-records.js';
import { EXIT } from '../exit-codes.js';

export interface LogsOptions extends RunRef {
  stage?: string;
  /** Only this attempt (1-based). */
  attempt?: number;
  /** Keep polling until the run has finished. */
  follow?: boolean;
  /** The JSON-lines contract events instead of the job's output. */
  events?: boolean;
  /** Poll interval with `follow` (default 2 s). */
  pollMs?: number;
  /** With `follow`, how long to wait for a run that has not appeared yet (default 60 s). */
  appearTimeoutMs?: number;
  /**
   * With `follow`, how long after the run closed to keep waiting for attempts that have only
   * parts (a cancelled attempt still uploading its log; a killed one never will). Default 30 s.
   */
  closeGraceMs?: number;
  /** Stops following. */
  signal?: AbortSignal;
  /** Receives each new piece of a log, in order. */
  onChunk?: (chunk: LogChunk) => void;
}

export interface LogChunk {
  stage: string;
  attempt: number;
  uri: string;
  /** The first piece of this object (print a header). */
  first: boolean;
  text: string;
}

export interface LogFile {
  stage: string;
  attempt: number;
  uri: string;
  bytes: number;
  /** The whole object is stored (false: only the parts flushed while the attempt ran). */
  complete: boolean;
}

export interface LogsResult {
  runId: string;
  files: LogFile[];
  /** True when the run had finished (status.json present) at the last look. */
  finished: boolean;
  exitCode: 0;
}

export async function streamLogs(opts: LogsOptions): Promise<LogsResult> {
  const prefix = checkRunRef(opts.runId, opts.prefix);
  if (opts.stage !== undefined) {
    try {
      segment(opts.stage);
    } catch {
      throw new CliError(`--stage "${opts.stage}" is not a stage id`, undefined, EXIT.badInput);
    }
  }
  if (opts.attempt !== undefined && !(Number.isInteger(opts.attempt) && opts.attempt >= 1)) {
    throw new CliError(`--attempt "${String(opts.attempt)}" is not an attempt number`, 'attempts count from 1', EXIT.badInput);
  }
  const store = opts.store ?? new ObjectStore();
  const runKey = layout.run(prefix, opts.runId);
  const pollMs = opts.pollMs ?? 2000;
  const kind = opts.events ? 'events' : 'log';

  // The run must exist (or, when following, appear soon): a mistyped id is an error, not silence.
  const appearDeadline = Date.now() + (opts.appearTimeoutMs ?? 60_000);
  let manifest: RunManifest | undefined;
  for (;;) {
    manifest = await storeCall(store, () => readManifest(store, runKey));
    if (manifest || (await store.list(`${runKey}/`, false)).length > 0) break;
    if (!opts.follow || Date.now() > appearDeadline || opts.signal?.aborted) {
      throw new CliError(`no run "${opts.runId}" under ${store.uri(`${prefix}/runs/`)}`, 'pass --prefix with the spec\'s storage.prefix (the demo uses "demo")', EXIT.notFound);
    }
    await sleep(pollMs, opts.signal);
  }
  let order = (manifest?.plan?.stages ?? []).map((s) => s.id);
  if (opts.stage !== undefined && order.length > 0 && !order.includes(opts.stage)) {
    throw new CliError(`run ${opts.runId} has no stage "${opts.stage}"`, `its stages: ${order.join(', ')}`, EXIT.badInput);
  }
  const rank = (stage: string) => {
    const i = order.indexOf(stage);
    return i < 0 ? order.length : i;
  };

  const tails = new Map<string, { tail: JobLogTail; decoder: StringDecoder }>();
  const files = new Map<string, LogFile>();
  let finished = false;
  let closedSince: number | undefined;
  for (;;) {
    // Look for status.json before listing: a final listing after the run ends misses nothing.
    const closed = await runClosedAt(store, runKey);
    finished = closed !== undefined;
    if (finished) closedSince = Math.min(closedSince ?? Date.now(), closed ?? Infinity);
    // A run followed from its very start is prepared (run.json, with the stage order) a moment later.
    if (order.length === 0) order = ((await readManifest(store, runKey))?.plan?.stages ?? []).map((s) => s.id);
    const refs = (await listJobLogs(store, runKey, { stage: opts.stage, kind }))
      .filter((r) => opts.attempt === undefined || r.attempt === opts.attempt)
      .sort((a, b) => rank(a.stage) - rank(b.stage) || a.stage.localeCompare(b.stage) || a.attempt - b.attempt);
    let allComplete = true;
    for (const r of refs) {
      const uri = store.uri(r.key);
      let t = tails.get(r.key);
      const first = t === undefined;
      if (!t) {
        t = { tail: new JobLogTail(store, r.key), decoder: new StringDecoder('utf8') };
        tails.set(r.key, t);
      }
      if (!t.tail.complete) {
        const bytes = await t.tail.read({ complete: r.complete, size: r.size });
        // The last piece of a complete object also flushes a character split across pieces.
        const text = t.decoder.write(bytes) + (t.tail.complete ? t.decoder.end() : '');
        if (first || text.length > 0) opts.onChunk?.({ stage: r.stage, attempt: r.attempt, uri, first, text });
      }
      if (!t.tail.complete) allComplete = false;
      files.set(r.key, { stage: r.stage, attempt: r.attempt, uri, bytes: t.tail.offset, complete: t.tail.complete });
    }
    if (!opts.follow || opts.signal?.aborted) break;
    if (finished && (allComplete || Date.now() - closedSince! >= (opts.closeGraceMs ?? 30_000))) break;
    await sleep(pollMs, opts.signal);
  }
  return { runId: opts.runId, files: [...files.values()], finished, exitCode: 0 };
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
