/**
 * `<prefix>/runs/<runId>/run.json`, the run manifest: who started the run, when, on which spec,
 * with which stored inputs and code versions. One schema for its writer (`prepareRun` in
 * activities/control.ts builds the object as this type and parses it before writing) and its
 * readers (client/run-records.ts; `audit verify` reports a run.json that does not parse).
 *
 * Fields older runs lack are optional: `scheduleId`, `fingerprint` and a dataset's `path` and
 * `sourceKey` were added with nightly schedules (7c933d4); `sourceSha256`, `sourceFormat`, `format`,
 * `rows` and `mix` with canonical datasets (LLaMA-Factory sources, mixing). The plan is kept whole
 * (every field passes through); readers rely only on its stage ids, kinds and deps.
 */
import { z } from 'zod';

/** Where a committed input is stored (workflows/types.ts `ArtifactRef`). */
const storedRef = {
  prefix: z.string(),
  uri: z.string(),
  manifestSha256: z.string(),
};

/** A general dataset mixed into a run's dataset when its canonical file was written (spec `mix`). */
export const DatasetMixRecord = z.object({
  /** The general dataset's name in the spec. */
  dataset: z.string(),
  /** General rows per row of the dataset, and the seed of the sampling and interleaving. */
  ratio: z.number(),
  seed: z.number(),
  /** Rows in the committed file from each dataset, by name. */
  rows: z.record(z.string(), z.number()),
  /** Valid rows the general dataset has (it gave rows[dataset] of them). */
  generalRows: z.number(),
  /** The general dataset's file or object read, and the sha256 of its bytes. */
  source: z.string(),
  sourceKey: z.string().optional(),
  sourceSha256: z.string(),
});

export const RunManifestDataset = z.object({
  /** The dataset's path as the plan gives it (absolute, or s3://). */
  path: z.string().optional(),
  ...storedRef,
  /** sha256 of the stored data.jsonl: canonical rows (spec/datasets.ts), or, before them, the file as read. */
  sha256: z.string(),
  /** The exact file or object read (for an s3:// prefix ending in "/", the newest object under it). */
  source: z.string().optional(),
  /** That object's key in the bucket (s3:// datasets only). */
  sourceKey: z.string().optional(),
  /** sha256 of the source bytes read (equal to sha256 when they were committed as they are). */
  sourceSha256: z.string().optional(),
  /** How the source was read: {kind: "refinery", format} or {kind: "llama-factory", datasetInfo?, entry?, formatting, ranking, columns, tags}. */
  sourceFormat: z.looseObject({ kind: z.string() }).optional(),
  /** The format of the committed rows (what the jobs read). */
  format: z.string().optional(),
  /** Rows committed. */
  rows: z.number().optional(),
  mix: DatasetMixRecord.optional(),
});

/** What readers use of the plan: stage order, kinds, deps. */
export interface RunManifestPlan {
  name?: string;
  stages?: { id: string; kind: string; deps?: string[] }[];
}

/**
 * The whole plan (spec/plan-types.ts `PipelinePlan`): loose objects, so every field of the plan
 * passes through a parse; typed as the part readers rely on (a `PipelinePlan` is one).
 */
const manifestPlan: z.ZodType<RunManifestPlan, RunManifestPlan> = z.looseObject({
  name: z.string().optional(),
  stages: z.array(z.looseObject({ id: z.string(), kind: z.string(), deps: z.array(z.string()).optional() })).optional(),
});

export const RunManifest = z.object({
  runId: z.string(),
  pipeline: z.string(),
  requestedBy: z.string(),
  startedAt: z.string(),
  specSha256: z.string(),
  resumeFrom: z.string().nullable(),
  scheduleId: z.string().nullable().optional(),
  /** sha256 of (spec sha256, base model manifest sha256, every dataset sha256, jobs version). */
  fingerprint: z.string().optional(),
  baseModel: z.object({ source: z.string(), ...storedRef }).optional(),
  /** By dataset name. */
  datasets: z.record(z.string(), RunManifestDataset).optional(),
  /** code, jobs, node. */
  versions: z.record(z.string(), z.string()).optional(),
  controlHost: z.string().optional(),
  plan: manifestPlan.optional(),
});

export type RunManifest = z.infer<typeof RunManifest>;
export type RunManifestDataset = z.infer<typeof RunManifestDataset>;
export type DatasetMixRecord = z.infer<typeof DatasetMixRecord>;

/** The manifest's key under a run's key (`<prefix>/runs/<runId>`). */
export const runManifestKey = (runKey: string): string => `${runKey}/run.json`;
