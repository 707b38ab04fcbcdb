/**
 * `<prefix>/runs/<runId>/run.json`, the run manifest: who started the run, when, on which spec,
 * with which stored inputs and code versions. One schema for its writer (`prepareRun` in
 * activities/control.ts builds the object as this type and parses it before writing) and its
 * readers (client/run-records.ts; `audit verify` reports a run.json that does not parse).
 *
 * Fields older runs lack are optional: `scheduleId`, `fingerprint` and a dataset's `path` and
 * `sourceKey` were added with nightly schedules (7c933d4). The plan is kept whole
 * (every field passes through); readers rely only on its stage ids, kinds and deps.
 */
import { z } from 'zod';

/** Where a committed input is stored (workflows/types.ts `ArtifactRef`). */
const storedRef = {
  prefix: z.string(),
  uri: z.string(),
  manifestSha256: z.string(),
};

export const RunManifestDataset = z.object({
  /** The dataset's path as the spec gives it. */
  path: z.string().optional(),
  ...storedRef,
  /** sha256 of the stored data.jsonl. */
  sha256: z.string(),
  /** The exact file or object read (for an s3:// prefix ending in "/", the newest object under it). */
  source: z.string().optional(),
  /** That object's key in the bucket (s3:// datasets only). */
  sourceKey: z.string().optional(),
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

/** The manifest's key under a run's key (`<prefix>/runs/<runId>`). */
export const runManifestKey = (runKey: string): string => `${runKey}/run.json`;
