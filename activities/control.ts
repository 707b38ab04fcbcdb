/**
 * Control activities (CPU task queue): everything a run does besides training.
 *   prepareRun        resolve s3:// dataset prefixes to their newest object, validate datasets, store them and
 *                     the base model content-addressed, write the run manifest; fingerprint the run's inputs
 *   resolveStageCache compute a stage's cache key and find a committed output for it
 *   finishRun         record the final status next to the run (and a completed run as the pipeline's last success)
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm, stat, symlink } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { heartbeat } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { formatProblem, type InputProblem } from '../spec/errors.js';
import { validateJsonlFile } from '../spec/datasets.js';
import type { PipelinePlan, PlannedDataset, PlannedStage } from '../spec/plan-types.js';
import { commitDirectory, readCommitted, type CommittedArtifact } from '../storage/commit.js';
import { layout } from '../storage/layout.js';
import { canonicalJson } from '../storage/canonical-json.js';
import { isNotFound, sha256File, type ObjectStore } from '../storage/object-store.js';
import type { ArtifactRef, LastSuccess, ModelInputs, PipelineStatus, PreparedDataset, PreparedRun, StageCacheDecision } from '../workflows/types.js';
import { isDatasetPrefix, pickNewestObject, runFingerprint } from './scheduled-inputs.js';

export interface ControlDeps {
  store: ObjectStore;
  /** Hash of the job code and requirements (see `jobsVersion`). */
  jobsVersion: string;
  /** Code version recorded in run manifests (git SHA when available). */
  codeVersion: string;
}

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

  async function storeDataset(ds: PlannedDataset, prefix: string): Promise<PreparedDataset> {
    let file = ds.path;
    let sourceKey: string | undefined;
    let cleanup: string | undefined;
    try {
      if (ds.path.startsWith('s3://')) {
        sourceKey = isDatasetPrefix(ds.path) ? await newestObjectKey(ds) : bucketKey(store, ds.path, ds.name);
        const uri = store.uri(sourceKey);
        cleanup = await mkdtemp(path.join(tmpdir(), 'refinery-ds-'));
        file = path.join(cleanup, 'data.jsonl');
        await store.getFile(sourceKey, file).catch((err: unknown) => {
          if (isNotFound(err)) throw inputFailure([{ file: uri, message: 'dataset object not found' }]);
          throw err;
        });
      } else if (!(await stat(file).then((s) => s.isFile()).catch(() => false))) {
        throw inputFailure([{ file: ds.path, message: `dataset "${ds.name}" does not exist or is not a file` }]);
      }
      const source = sourceKey === undefined ? ds.path : store.uri(sourceKey);
      const report = await validateJsonlFile(file, ds.format, source);
      if (report.problems.length > 0) throw inputFailure(report.problems);
      const sha256 = await sha256File(file);
      const prefixKey = layout.dataset(prefix, sha256);
      const existing = await readCommitted(store, prefixKey);
      const artifact = existing ?? (await commitSingleFile(store, file, 'data.jsonl', prefixKey, { source, format: ds.format, rows: report.rows }));
      return { ...refOf(artifact), sha256, source, ...(sourceKey !== undefined ? { sourceKey } : {}) };
    } finally {
      if (cleanup) await rm(cleanup, { recursive: true, force: true });
    }
  }

  async function storeBaseModel(source: string, prefix: string): Promise<ArtifactRef> {
    if (source.startsWith('s3://')) {
      const key = bucketKey(store, source, 'base_model').replace(/\/+$/, '');
      const artifact = await readCommitted(store, key);
      if (!artifact) throw inputFailure([{ file: source, message: 'base model prefix has no commit marker (_COMMITTED); push it with `refinery push-model`' }]);
      return refOf(artifact);
    }
    const isDir = await stat(source).then((s) => s.isDirectory()).catch(() => false);
    if (!isDir) throw inputFailure([{ file: source, field: 'base_model', message: 'not a directory (build the demo model with `refinery make-tiny-model`)' }]);
    const treeSha = await treeSha256(source);
    const key = layout.model(prefix, treeSha);
    const artifact = (await readCommitted(store, key)) ?? (await commitDirectory(store, source, key, { source }));
    return refOf(artifact);
  }

  return {
    async prepareRun(input: { runId: string; plan: PipelinePlan; requestedBy: string; resumeFrom?: string; scheduleId?: string }): Promise<PreparedRun> {
      const { plan } = input;
      const prefix = plan.storage.prefix;
      heartbeat('datasets');
      const datasets: PreparedRun['datasets'] = {};
      const seen = new Map<string, PlannedDataset>();
      for (const stage of plan.stages) for (const ds of [stage.dataset, stage.evalDataset]) if (ds) seen.set(ds.name, ds);
      const problems: InputProblem[] = [];
      for (const ds of seen.values()) {
        try {
          datasets[ds.name] = await storeDataset(ds, prefix);
        } catch (err) {
          if (err instanceof ApplicationFailure && err.type === 'InputError') problems.push(...((err.details?.[0] as InputProblem[]) ?? []));
          else throw err;
        }
        heartbeat(`dataset ${ds.name}`);
      }
      if (problems.length > 0) throw inputFailure(problems);
      heartbeat('base model');
      const baseModel = await storeBaseModel(plan.baseModel, prefix);
      const fingerprint = runFingerprint({
        specSha256: plan.specSha256,
        baseModelManifestSha256: baseModel.manifestSha256,
        datasetSha256: Object.fromEntries(Object.entries(datasets).map(([name, d]) => [name, d.sha256])),
        jobsVersion: deps.jobsVersion,
      });
      const lastSuccess = await store.getJson<LastSuccess>(layout.lastSuccess(prefix, plan.name));

      await store.putJson(`${layout.run(prefix, input.runId)}/run.json`, {
        runId: input.runId,
        pipeline: plan.name,
        requestedBy: input.requestedBy,
        startedAt: new Date().toISOString(),
        specSha256: plan.specSha256,
        resumeFrom: input.resumeFrom ?? null,
        scheduleId: input.scheduleId ?? null,
        fingerprint,
        baseModel: { source: plan.baseModel, ...baseModel },
        // `path` as the spec gives it; `source`/`sourceKey` the exact file or object read.
        datasets: Object.fromEntries(Object.entries(datasets).map(([name, d]) => [name, { path: seen.get(name)!.path, ...d }])),
        versions: { code: deps.codeVersion, jobs: deps.jobsVersion, node: process.version },
        controlHost: hostname(),
        plan,
      });
      return { baseModel, datasets, jobsVersion: deps.jobsVersion, fingerprint, ...(lastSuccess ? { lastSuccess } : {}) };
    },

    async resolveStageCache(input: {
      storagePrefix: string;
      stage: PlannedStage;
      inputs: ModelInputs;
      datasets: { train?: ArtifactRef; eval?: ArtifactRef };
      jobsVersion: string;
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
      const finishedAt = new Date().toISOString();
      await store.putJson(`${layout.run(prefix, input.runId)}/status.json`, { ...input.status, finishedAt });
      // What a scheduled run compares its fingerprint with (skipIfUnchanged).
      if (input.status.state === 'completed' && input.status.fingerprint) {
        const last: LastSuccess = { runId: input.runId, fingerprint: input.status.fingerprint, finishedAt };
        await store.putJson(layout.lastSuccess(prefix, input.status.pipeline), last);
      }
    },
  };
}

/**
 * Cache key = hash of what determines the result: the stage's kind and settings (checkpointing
 * cadence excluded), the exact input artifacts and datasets, and the job code version.
 */
export function stageCacheKey(input: {
  stage: PlannedStage;
  inputs: ModelInputs;
  datasets: { train?: ArtifactRef; eval?: ArtifactRef };
  jobsVersion: string;
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
    salt: input.salt ?? null,
  };
  return createHash('sha256').update(canonicalJson(material)).digest('hex').slice(0, 24);
}

/** Hash of a directory's content: relative paths and file hashes, sorted. */
export async function treeSha256(dir: string): Promise<string> {
  const entries: string[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const abs = path.join(d, e.name);
      if (e.isDirectory()) await walk(abs);
      else if (e.isFile()) entries.push(`${path.relative(dir, abs).split(path.sep).join('/')}\0${await sha256File(abs)}`);
    }
  };
  await walk(dir);
  return createHash('sha256').update(entries.sort().join('\n')).digest('hex');
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

async function commitSingleFile(store: ObjectStore, file: string, name: string, prefix: string, meta: Record<string, unknown>): Promise<CommittedArtifact> {
  const dir = await mkdtemp(path.join(tmpdir(), 'refinery-commit-'));
  try {
    await symlink(path.resolve(file), path.join(dir, name));
    return await commitDirectory(store, dir, prefix, meta);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
