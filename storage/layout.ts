/**
 * Where things live in the bucket. Stage artifacts are content-addressed by their cache key, so a
 * re-run with unchanged inputs finds the committed output (invariant 4) and a resumed run finds the
 * checkpoints of the attempt it continues.
 *
 *   <prefix>/inputs/datasets/<sha256>/          committed copies of the datasets a run read
 *   <prefix>/inputs/models/<tree-sha256>/       committed copies of local base models
 *   <prefix>/artifacts/<kind>-<cachekey>/output/             a stage's committed output
 *   <prefix>/artifacts/<kind>-<cachekey>/checkpoints/step-N/ its committed checkpoints
 *       …/_COMMITTED, …/_manifest.eE.json, …/files.eE/       (E: the committing attempt's lease epoch,
 *                                               storage/commit.ts; unfenced commits: _manifest.json, files/)
 *   <prefix>/runs/<runId>/run.json              run manifest (who, when, spec hash, inputs, versions)
 *   <prefix>/runs/<runId>/status.json           final status (with the audit chain's head)
 *   <prefix>/runs/<runId>/audit/NNNNNN.json     hash-chained audit events
 *   <prefix>/runs/<runId>/logs/<stage>/attempt-N.log|.events.jsonl   job output and events (whole, when the attempt ends)
 *   <prefix>/runs/<runId>/logs/<stage>/attempt-N.log.parts/NNNNNN     the same, flushed while the job runs
 *   (audit records, attempt records and status.json are also written once, under Object Lock, to the
 *    same keys in the locked bucket `<bucket>-audit`: config/audit-lock.ts, docs/security.md)
 *   <prefix>/runs/<runId>/attempts/<stage>/attempt-N/NNNNNN.json      an attempt's own hash-chained records
 *                                               (started, checkpoint committed/skipped, contract violations, ended)
 *   <prefix>/artifacts/<kind>-<cachekey>/_LEASE  which run's attempt trains this cache key now (stage-lease.ts)
 *   <prefix>/pipelines/<name>/last-success.json  {runId, fingerprint, finishedAt} of the last completed run
 *
 * Run ids of scheduled runs are the workflow ids Temporal gives them, "<scheduleId>-<RFC 3339 time>",
 * hence ":" in segments.
 */
const SAFE_SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** Every key segment built from user input goes through here: no "..", no slashes, no surprises. */
export function segment(value: string): string {
  if (!SAFE_SEGMENT.test(value) || value.includes('..')) throw new Error(`unsafe object key segment: ${JSON.stringify(value)}`);
  return value;
}

export const layout = {
  dataset: (prefix: string, sha256: string) => `${prefix}/inputs/datasets/${segment(sha256)}`,
  model: (prefix: string, treeSha256: string) => `${prefix}/inputs/models/${segment(treeSha256)}`,
  artifact: (prefix: string, kind: string, cacheKey: string) => `${prefix}/artifacts/${segment(kind)}-${segment(cacheKey)}`,
  output: (artifactPrefix: string) => `${artifactPrefix}/output`,
  checkpoints: (artifactPrefix: string) => `${artifactPrefix}/checkpoints`,
  checkpoint: (artifactPrefix: string, step: number) => `${artifactPrefix}/checkpoints/step-${String(step).padStart(9, '0')}`,
  run: (prefix: string, runId: string) => `${prefix}/runs/${segment(runId)}`,
  lastSuccess: (prefix: string, pipeline: string) => `${prefix}/pipelines/${segment(pipeline)}/last-success.json`,
  jobLog: (prefix: string, runId: string, stageId: string, attempt: number) =>
    `${prefix}/runs/${segment(runId)}/logs/${segment(stageId)}/attempt-${attempt}.log`,
  /** The job's contract events, one JSON object per line with `at` and `attempt` added. */
  jobEvents: (prefix: string, runId: string, stageId: string, attempt: number) =>
    `${prefix}/runs/${segment(runId)}/logs/${segment(stageId)}/attempt-${attempt}.events.jsonl`,
  /** Parts of a job log or events file flushed while the attempt runs; `file` is jobLog or jobEvents. */
  jobLogParts: (file: string) => `${file}.parts`,
  jobLogPart: (file: string, n: number) => `${file}.parts/${String(n).padStart(6, '0')}`,
  /** An attempt's own hash-chained records (storage/attempt-records.ts). */
  attemptRecords: (prefix: string, runId: string, stageId: string, attempt: number) =>
    `${prefix}/runs/${segment(runId)}/attempts/${segment(stageId)}/attempt-${attempt}`,
  attemptsOfStage: (prefix: string, runId: string, stageId: string) => `${prefix}/runs/${segment(runId)}/attempts/${segment(stageId)}`,
  /** Who trains a cache key right now: one attempt at a time across runs (storage/stage-lease.ts). */
  stageLease: (artifactPrefix: string) => `${artifactPrefix}/_LEASE`,
};
