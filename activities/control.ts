/**
 * Control activities (CPU task queue): everything a run does besides training.
 *   prepareRun        resolve s3:// dataset prefixes to their newest object, validate datasets, store them and
 *                     the base model content-addressed, write the run manifest; fingerprint the run's inputs
 *   resolveStageCache compute a stage's cache key and find a committed output for it
 *   finishRun         record the final status next to the run (and a completed run as the pipeline's last success);
 *                     its write-once copy first, in the audit bucket (it anchors the trail's head)
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { mkdtemp, rm, stat, symlink } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { activityInfo, cancellationSignal, heartbeat, log } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { formatProblem, type InputProblem } from '../spec/errors.js';
import { mixCounts, mixRows, rowsOfFile, validateDatasetFile, validateJsonlFile, type CanonicalRow } from '../spec/datasets.js';
import type { DatasetSource } from '../spec/dataset-info.js';
import type { PipelinePlan, PlannedDataset, PlannedStage } from '../spec/plan-types.js';
import { commitDirectory, readCommitted, type CommitOptions, type CommitProgress, type CommittedArtifact } from '../storage/commit.js';
import { layout } from '../storage/layout.js';
import { isModelName, pushModelDirectory, resolveModelName } from '../storage/models.js';
import { hashFile } from '../storage/tree-hash.js';
import { canonicalJson } from '../storage/canonical-json.js';
import { isNotFound, jsonBytes, LockedCopyConflict, type ObjectStore } from '../storage/object-store.js';
import { claimRunId } from '../storage/run-claim.js';
import { RunManifest, runManifestKey, type DatasetMixRecord, type RunManifestDataset } from '../storage/run-manifest.js';
import type { ArtifactRef, LastSuccess, ModelInputs, PipelineStatus, PreparedDataset, PreparedRun, StageCacheDecision } from '../workflows/types.js';
import { isDatasetPrefix, pickNewestObject, runFingerprint } from './scheduled-inputs.js';
import { isTransientStorageError } from './storage-retry.js';

export interface ControlDeps {
  store: ObjectStore;
  /** Hash of the job code and requirements (see `jobsVersion`). */
  jobsVersion: string;
  /** Code version recorded in run manifests (git SHA when available). */
  codeVersion: string;
}

/**
 * What prepareRun's heartbeats carry: which input it is on, what it is doing to it, how far it got.
 * A retried attempt resumes from the bucket (files already committed are skipped), not from these.
 */
export interface PrepareProgress {
  phase: 'datasets' | 'base-model';
  /** The dataset being worked on (phase "datasets"). */
  dataset?: string;
  step?: 'downloading' | 'validating' | 'mixing' | 'hashing' | 'uploading' | 'done';
  /** Valid records read so far (step "validating"), rows written (step "mixing"). */
  rowsDone?: number;
  files?: number;
  filesDone?: number;
  bytes?: number;
  bytesDone?: number;
  /** Files already in the bucket with a matching sha256, not uploaded again. */
  skippedFiles?: number;
}

/** prepareRun heartbeats at least this often, whatever it is doing (a large upload, a slow validation). */
const PREPARE_HEARTBEAT_MS = 10_000;

/** Config and data errors: one failure, every problem listed, never retried. */
export function inputFailure(problems: InputProblem[]): ApplicationFailure {
  return ApplicationFailure.nonRetryable(problems.map(formatProblem).join('\n'), 'InputError', problems);
}

export function createControlActivities(deps: ControlDeps) {
  const { store } = deps;

  /** For an s3:// prefix ending in "/": the key of the newest dataset object under it. */
  async function newestObjectKey(ds: PlannedDataset): Promise<string> {
    const newest = pickNewestObject(await store.list(bucketKey(store, ds.path, ds.name), true));
    if (!newest) throw inputFailure([{ file: ds.path, message: `dataset "${ds.name}": no object under this prefix` }]);
    return newest.key;
  }

  /** Commits content-addressed input: deterministic bytes, so concurrent runs storing the same content agree. */
  async function commitInput(
    key: string,
    commit: (options: CommitOptions) => Promise<CommittedArtifact>,
    onProgress: (p: CommitProgress) => void,
  ): Promise<CommittedArtifact> {
    // A commit of the same content racing this one writes the same manifest and marker.
    return (await readCommitted(store, key)) ?? (await commit({ resume: true, deterministic: true, onProgress, signal: activitySignal() }));
  }

  /** A dataset's source as a local file: the file itself, or the s3:// object downloaded (named as its key, for its layout). */
  async function fetchSource(ds: Pick<PlannedDataset, 'name' | 'path'>, at: (p: Omit<PrepareProgress, 'phase' | 'dataset'>) => void, tmp: string): Promise<FetchedSource> {
    if (!ds.path.startsWith('s3://')) {
      if (!(await stat(ds.path).then((s) => s.isFile()).catch(() => false))) {
        throw inputFailure([{ file: ds.path, message: `dataset "${ds.name}" does not exist or is not a file` }]);
      }
      return { file: ds.path, source: ds.path };
    }
    const sourceKey = isDatasetPrefix(ds.path) ? await newestObjectKey(ds as PlannedDataset) : bucketKey(store, ds.path, ds.name);
    const uri = store.uri(sourceKey);
    const file = path.join(await mkdtemp(path.join(tmp, 'src-')), path.posix.basename(sourceKey) || 'data.jsonl');
    at({ step: 'downloading' });
    await store.getFile(sourceKey, file).catch((err: unknown) => {
      if (isNotFound(err)) throw inputFailure([{ file: uri, message: 'dataset object not found' }]);
      throw err;
    });
    return { file, source: uri, sourceKey };
  }

  /**
   * Stores one dataset content-addressed: its source validated and converted, streaming, into
   * canonical JSONL (spec/datasets.ts; a general dataset mixed in when the spec says so), which is
   * what is committed as data.jsonl and what the jobs read. Plans from before canonical datasets
   * (no `source`) commit the validated file as it is, as they did.
   */
  async function storeDataset(ds: PlannedDataset, prefix: string, beat: (p: PrepareProgress) => void): Promise<StoredDataset> {
    const at = (p: Omit<PrepareProgress, 'phase' | 'dataset'>) => beat({ phase: 'datasets', dataset: ds.name, ...p });
    const tmp = await mkdtemp(path.join(tmpdir(), 'refinery-ds-'));
    try {
      const fetched = await fetchSource(ds, at, tmp);
      const { size } = await stat(fetched.file);
      const validating = (bytes: number, offset = 0) => (p: { rows: number; bytesRead: number }) => at({ step: 'validating', rowsDone: p.rows, bytes, bytesDone: offset + p.bytesRead });
      at({ step: 'validating', rowsDone: 0, bytes: size, bytesDone: 0 });

      let file = fetched.file;
      let rows: number;
      let sourceSha256: string;
      let mixRecord: DatasetMixRecord | undefined;
      if (ds.source === undefined) {
        const report = await validateJsonlFile(fetched.file, ds.format, fetched.source, { onProgress: validating(size) });
        if (report.problems.length > 0) throw inputFailure(report.problems);
        rows = report.rows;
        sourceSha256 = await hashFile(fetched.file, (bytesDone) => at({ step: 'hashing', bytes: size, bytesDone }));
      } else if (ds.mix === undefined) {
        // One pass: read, validate, convert, write, hash the source.
        file = path.join(tmp, 'data.jsonl');
        const sourceHash = createHash('sha256');
        const out = jsonlWriter(file);
        const report = await validateDatasetFile(fetched.file, ds, fetched.source, { onProgress: validating(size), onRow: out.write, onBytes: (b) => sourceHash.update(b) });
        await out.close();
        if (report.problems.length > 0) throw inputFailure(report.problems);
        rows = report.rows;
        sourceSha256 = sourceHash.digest('hex');
      } else {
        // Mixing needs both row counts first: a validating pass over each, then the mixed one.
        const general = ds.mix.dataset;
        const generalFile = await fetchSource(general, at, tmp);
        const generalSize = (await stat(generalFile.file)).size;
        const [own, mixed] = [createHash('sha256'), createHash('sha256')];
        const ownReport = await validateDatasetFile(fetched.file, ds, fetched.source, { onProgress: validating(size + generalSize), onBytes: (b) => own.update(b) });
        const generalReport = await validateDatasetFile(generalFile.file, general, generalFile.source, { onProgress: validating(size + generalSize, size), onBytes: (b) => mixed.update(b) });
        const problems = [...ownReport.problems, ...generalReport.problems];
        if (problems.length > 0) throw inputFailure(problems);
        sourceSha256 = own.digest('hex');
        const counts = mixCounts(ownReport.rows, generalReport.rows, ds.mix.ratio, ds.mix.seed);
        const taken = counts.reduce((a, b) => a + b, 0);
        file = path.join(tmp, 'data.jsonl');
        const out = jsonlWriter(file);
        rows = 0;
        for await (const row of mixRows(rowsOfFile(fetched.file, ds), ownReport.rows, rowsOfFile(generalFile.file, general), counts, ds.mix.seed)) {
          await out.write(row);
          if (++rows % 10_000 === 0) at({ step: 'mixing', rowsDone: rows });
        }
        await out.close();
        mixRecord = {
          dataset: general.name,
          ratio: ds.mix.ratio,
          seed: ds.mix.seed,
          rows: { [ds.name]: ownReport.rows, [general.name]: taken },
          generalRows: generalReport.rows,
          source: generalFile.source,
          ...(generalFile.sourceKey !== undefined ? { sourceKey: generalFile.sourceKey } : {}),
          sourceSha256: mixed.digest('hex'),
        };
      }
      const committedSize = (await stat(file)).size;
      const sha256 = file === fetched.file ? sourceSha256 : await hashFile(file, (bytesDone) => at({ step: 'hashing', bytes: committedSize, bytesDone }));
      const prefixKey = layout.dataset(prefix, sha256);
      // Only facts of the content in the manifest (the same bytes may be read from anywhere, as any
      // format that accepts them): where this run read it, and as what, is in its run.json.
      let uploaded: CommitProgress | undefined;
      const artifact = await commitInput(
        prefixKey,
        (options) => commitSingleFile(store, file, 'data.jsonl', prefixKey, { rows }, { ...options, knownSha256: new Map([['data.jsonl', sha256]]) }),
        (p) => at({ step: 'uploading', ...(uploaded = p) }),
      );
      at({ step: 'done', rowsDone: rows, ...uploaded });
      const prepared: PreparedDataset = {
        ...refOf(artifact),
        sha256,
        source: fetched.source,
        ...(fetched.sourceKey !== undefined ? { sourceKey: fetched.sourceKey } : {}),
        ...(sha256 !== sourceSha256 ? { sourceSha256 } : {}),
        ...(mixRecord ? { mix: mixRecord } : {}),
      };
      return {
        prepared,
        record: {
          path: ds.path,
          ...prepared,
          sourceSha256,
          ...(ds.source !== undefined ? { sourceFormat: describeSource(ds.source), format: ds.format } : { format: ds.format }),
          rows,
          ...(mixRecord ? { mix: mixRecord } : {}),
        },
      };
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }

  /**
   * The run's base model as a committed input: an s3:// commit as it is, a pushed model by its name
   * (what the name points at now; run.json records which), or a local directory pushed here with
   * the code `refinery model push` runs (storage/models.ts), resuming whatever is already there.
   */
  async function storeBaseModel(source: string, prefix: string, beat: (p: PrepareProgress) => void): Promise<ArtifactRef> {
    const at = (p: Omit<PrepareProgress, 'phase'>) => beat({ phase: 'base-model', ...p });
    if (source.startsWith('s3://')) {
      const key = bucketKey(store, source, 'base_model').replace(/\/+$/, '');
      const artifact = await readCommitted(store, key);
      if (!artifact) throw inputFailure([{ file: source, field: 'base_model', message: 'base model prefix has no commit marker (_COMMITTED); store a model with `refinery model push DIR --name NAME`' }]);
      return refOf(artifact);
    }
    if (isModelName(source)) {
      const named = await resolveModelName(store, prefix, source).catch((err: Error) => {
        throw inputFailure([{ file: source, field: 'base_model', message: err.message }]);
      });
      if (!named) throw inputFailure([{ file: source, field: 'base_model', message: `no model named "${source}" in ${store.uri(prefix)} (push one with \`refinery model push DIR --name ${source}\`; see \`refinery model list\`)` }]);
      return refOf(named.artifact);
    }
    const isDir = await stat(source).then((s) => s.isDirectory()).catch(() => false);
    if (!isDir) throw inputFailure([{ file: source, field: 'base_model', message: 'not a directory on the control worker (push it from where it is with `refinery model push DIR --name NAME`; the demo builds one with `refinery make-tiny-model`)' }]);
    const pushed = await pushModelDirectory(store, {
      dir: source,
      prefix,
      ...(activitySignal() ? { signal: activitySignal()! } : {}),
      onProgress: (p) => at(p.phase === 'hashing' ? { step: 'hashing', files: p.files, filesDone: p.filesDone, bytes: p.bytes, bytesDone: p.bytesDone } : { step: 'uploading', files: p.files, filesDone: p.filesDone, bytes: p.bytes, bytesDone: p.bytesDone, skippedFiles: p.skippedFiles }),
    });
    const files = pushed.artifact.manifest.files.length;
    at({ step: 'done', files, filesDone: files, bytes: pushed.bytes, bytesDone: pushed.bytes, skippedFiles: pushed.skippedFiles });
    return refOf(pushed.artifact);
  }

  return {
    async prepareRun(input: { runId: string; plan: PipelinePlan; requestedBy: string; resumeFrom?: string; scheduleId?: string }): Promise<PreparedRun> {
      const { plan } = input;
      const prefix = plan.storage.prefix;
      const execution = activityInfo().workflowExecution;
      if (execution) await claimRunId(store, prefix, { runId: input.runId, workflowId: execution.workflowId, workflowRunId: execution.runId });
      const datasets: PreparedRun['datasets'] = {};
      const records: Record<string, RunManifestDataset> = {};
      const seen = new Map<string, PlannedDataset>();
      for (const stage of plan.stages) for (const ds of [stage.dataset, stage.evalDataset]) if (ds) seen.set(ds.name, ds);
      const baseModel = await withHeartbeats({ phase: 'datasets' }, async (beat) => {
        const problems: InputProblem[] = [];
        for (const ds of seen.values()) {
          try {
            const stored = await storeDataset(ds, prefix, beat);
            datasets[ds.name] = stored.prepared;
            records[ds.name] = stored.record;
          } catch (err) {
            if (err instanceof ApplicationFailure && err.type === 'InputError') problems.push(...((err.details?.[0] as InputProblem[]) ?? []));
            else throw err;
          }
        }
        if (problems.length > 0) throw inputFailure(problems);
        beat({ phase: 'base-model' });
        return storeBaseModel(plan.baseModel, prefix, beat);
      });
      const fingerprint = runFingerprint({
        specSha256: plan.specSha256,
        baseModelManifestSha256: baseModel.manifestSha256,
        datasetSha256: Object.fromEntries(Object.entries(datasets).map(([name, d]) => [name, d.sha256])),
        jobsVersion: deps.jobsVersion,
      });
      const lastSuccess = await store.getJson<LastSuccess>(layout.lastSuccess(prefix, plan.name));

      const manifest: RunManifest = {
        runId: input.runId,
        pipeline: plan.name,
        requestedBy: input.requestedBy,
        startedAt: new Date().toISOString(),
        specSha256: plan.specSha256,
        resumeFrom: input.resumeFrom ?? null,
        scheduleId: input.scheduleId ?? null,
        fingerprint,
        baseModel: { source: plan.baseModel, ...baseModel },
        // `path` as the plan gives it; `source`/`sourceKey` the exact file or object read, `sha256`
        // what was committed (canonical rows), `sourceSha256` the bytes read; `mix` what was mixed in.
        datasets: records,
        versions: { code: deps.codeVersion, jobs: deps.jobsVersion, node: process.version },
        controlHost: hostname(),
        plan,
      };
      // Checked against the schema its readers parse with; written as built (the plan's key order kept).
      RunManifest.parse(manifest);
      await store.putJson(runManifestKey(layout.run(prefix, input.runId)), manifest);
      return { baseModel, datasets, jobsVersion: deps.jobsVersion, fingerprint, ...(lastSuccess ? { lastSuccess } : {}) };
    },

    async resolveStageCache(input: {
      storagePrefix: string;
      stage: PlannedStage;
      inputs: ModelInputs;
      datasets: { train?: ArtifactRef; eval?: ArtifactRef };
      jobsVersion: string;
      toolchain?: string;
      salt?: string;
    }): Promise<StageCacheDecision> {
      const cacheKey = stageCacheKey(input);
      const artifactPrefix = layout.artifact(input.storagePrefix, input.stage.kind, cacheKey);
      const committed = await readCommitted(store, layout.output(artifactPrefix));
      return {
        cacheKey,
        artifactPrefix,
        committed: committed
          ? { artifact: refOf(committed), metrics: (committed.manifest.meta?.metrics as Record<string, number | null>) ?? {} }
          : undefined,
      };
    },

    async finishRun(input: { runId: string; status: PipelineStatus; storagePrefix?: string }): Promise<void> {
      const prefix = input.storagePrefix ?? 'refinery';
      const key = `${layout.run(prefix, input.runId)}/status.json`;
      let finishedAt = new Date().toISOString();
      let bytes = jsonBytes({ ...input.status, finishedAt });
      if (store.auditBucket) {
        const locked = await lockFinalStatus(store, key, bytes, input.status);
        if (locked) ({ bytes, finishedAt } = locked);
      }
      // The same bytes as the write-once copy (a retry keeps the first attempt's finishedAt).
      await store.putBytes(key, bytes, 'application/json');
      // What a scheduled run compares its fingerprint with (skipIfUnchanged).
      if (input.status.state === 'completed' && input.status.fingerprint) {
        const last: LastSuccess = { runId: input.runId, fingerprint: input.status.fingerprint, finishedAt };
        await store.putJson(layout.lastSuccess(prefix, input.status.pipeline), last);
      }
    },
  };
}

/**
 * Writes the write-once copy of status.json (it anchors the audit chain's head outside the main
 * bucket); returns what the main copy must hold. A retried finishRun finds the first attempt's copy:
 * the same status but for finishedAt, which is kept. A copy of another status, or no usable audit
 * bucket, is logged and the main copy written anyway: the run's own result must not depend on it,
 * and `audit verify` reports both (a write-once status.json that disagrees, or none).
 */
async function lockFinalStatus(store: ObjectStore, key: string, bytes: Buffer, status: PipelineStatus): Promise<{ bytes: Buffer; finishedAt: string } | undefined> {
  try {
    await store.putLocked(key, bytes);
    return undefined;
  } catch (err) {
    if (!(err instanceof LockedCopyConflict)) {
      if (isTransientStorageError(err)) throw err; // the activity's retry policy rides it out
      log.warn('status.json: no write-once copy', { error: (err as Error).message });
      return undefined;
    }
  }
  const there = await store.getLocked(key);
  if (there) {
    try {
      const { finishedAt, ...rest } = JSON.parse(there.body.toString('utf8')) as PipelineStatus & { finishedAt?: string };
      if (typeof finishedAt === 'string' && canonicalJson(rest) === canonicalJson(JSON.parse(JSON.stringify(status)))) return { bytes: there.body, finishedAt };
    } catch {
      // not JSON: another status
    }
  }
  log.warn('status.json: the write-once copy holds another status; it stays, audit verify reports the difference', { uri: store.auditUri(key) });
  return undefined;
}

/**
 * Cache key = hash of what determines the result: the stage's kind and settings (checkpointing
 * cadence excluded), the exact input artifacts and datasets, the job code version, and the
 * toolchain its workers train it with (trainer, Python environment, llama.cpp tools: worker/toolchain.ts).
 */
export function stageCacheKey(input: {
  stage: PlannedStage;
  inputs: ModelInputs;
  datasets: { train?: ArtifactRef; eval?: ArtifactRef };
  jobsVersion: string;
  /** The digest of the toolchain its workers train it with (worker/toolchain.ts); absent for runs before it. */
  toolchain?: string;
  salt?: string;
}): string {
  const { save_steps: _s, save_total_limit: _l, ...hyper } = input.stage.hyper;
  const material = {
    v: 1,
    kind: input.stage.kind,
    // LoRA settings do not matter to a full fine-tune.
    finetuning: input.stage.finetuning.type === 'full' ? { type: 'full' } : input.stage.finetuning,
    hyper,
    params: input.stage.params,
    datasetFormat: input.stage.dataset?.format ?? null,
    inputs: Object.fromEntries(Object.entries(input.inputs).filter(([, a]) => a).map(([k, a]) => [k, a!.manifestSha256])),
    datasets: { train: input.datasets.train?.manifestSha256 ?? null, eval: input.datasets.eval?.manifestSha256 ?? null },
    jobs: input.jobsVersion,
    ...(input.toolchain ? { toolchain: input.toolchain } : {}),
    salt: input.salt ?? null,
  };
  return createHash('sha256').update(canonicalJson(material)).digest('hex').slice(0, 24);
}

/**
 * Runs fn heartbeating: on its progress reports (at most once a second unless the phase, dataset or
 * step changes) and on a timer in between (quiet stretches: a slow request, a large part in flight),
 * at least every 10 s and three times per heartbeat timeout. A big input must not read as a dead worker.
 */
async function withHeartbeats<T>(first: PrepareProgress, fn: (beat: (p: PrepareProgress) => void) => Promise<T>): Promise<T> {
  let progress = first;
  let lastBeat = Date.now();
  heartbeat(progress);
  const beat = (p: PrepareProgress) => {
    const changed = p.phase !== progress.phase || p.dataset !== progress.dataset || p.step !== progress.step;
    progress = p;
    const now = Date.now();
    if (changed || now - lastBeat >= 1000) {
      lastBeat = now;
      heartbeat(progress);
    }
  };
  const timeoutMs = activityInfo().heartbeatTimeoutMs;
  const every = timeoutMs ? Math.min(Math.max(timeoutMs / 3, 200), PREPARE_HEARTBEAT_MS) : PREPARE_HEARTBEAT_MS;
  const ticker = setInterval(() => heartbeat(progress), every);
  try {
    return await fn(beat);
  } finally {
    clearInterval(ticker);
  }
}

/** The running activity's cancellation (a timed-out or cancelled attempt stops uploading); none outside one. */
function activitySignal(): AbortSignal | undefined {
  try {
    return cancellationSignal();
  } catch {
    return undefined;
  }
}

function refOf(a: CommittedArtifact): ArtifactRef {
  return { prefix: a.prefix, uri: a.uri, manifestSha256: a.manifestSha256 };
}

/** s3://bucket/key → key, refusing other buckets (a store serves one bucket). */
function bucketKey(store: ObjectStore, uri: string, field: string): string {
  const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(uri);
  if (!m || m[1] !== store.bucket) throw inputFailure([{ file: uri, field, message: `expected s3://${store.bucket}/<key>` }]);
  return m[2]!;
}

async function commitSingleFile(
  store: ObjectStore,
  file: string,
  name: string,
  prefix: string,
  meta: Record<string, unknown>,
  options: CommitOptions = {},
): Promise<CommittedArtifact> {
  const dir = await mkdtemp(path.join(tmpdir(), 'refinery-commit-'));
  try {
    await symlink(path.resolve(file), path.join(dir, name));
    return await commitDirectory(store, dir, prefix, meta, options);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

interface FetchedSource {
  /** A local file: the dataset's own, or its s3:// object downloaded. */
  file: string;
  /** The exact file or object read. */
  source: string;
  sourceKey?: string;
}

interface StoredDataset {
  prepared: PreparedDataset;
  /** What run.json records of it. */
  record: RunManifestDataset;
}

/** How run.json describes a dataset's source format (LLaMA-Factory: the entry and the attributes read). */
function describeSource(source: DatasetSource): Record<string, unknown> & { kind: string } {
  if (source.kind === 'refinery') return { kind: 'refinery', format: source.format };
  return {
    kind: 'llama-factory',
    ...(source.datasetInfo !== undefined ? { datasetInfo: source.datasetInfo, entry: source.entry } : {}),
    formatting: source.attrs.formatting,
    ranking: source.attrs.ranking,
    columns: source.attrs.columns,
    tags: source.attrs.tags,
  };
}

/** Canonical rows to a JSONL file, one write at a time, waiting when the stream says so. */
function jsonlWriter(file: string): { write: (row: CanonicalRow) => Promise<void>; close: () => Promise<void> } {
  const out = createWriteStream(file);
  let failed: Error | undefined;
  out.on('error', (err) => (failed = err));
  return {
    write: async (row) => {
      if (failed) throw failed;
      if (!out.write(`${JSON.stringify(row)}\n`)) await once(out, 'drain');
    },
    close: async () => {
      if (failed) throw failed;
      await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
    },
  };
}
