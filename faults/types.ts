/** What the fault suite is asked to do and what it reports (faults/run.ts runs it). */

/** Kinds that run the contract test job (faults/kinds/), then the real-trainer kind (faults/real-trial.ts). */
export const TEST_JOB_FAULT_KINDS = [
  'worker-kill',
  'temporal-restart',
  'temporal-outage',
  'minio-outage',
  'corrupt-checkpoint',
  'scratch-full',
  'job-hang',
  'cancel',
  'drain',
  'oom',
  'divergence',
  'bad-node',
] as const;
export const FAULT_KINDS = [...TEST_JOB_FAULT_KINDS, 'real-worker-kill'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];
export type TestJobFaultKind = (typeof TEST_JOB_FAULT_KINDS)[number];

export interface SuiteOptions {
  /** Trials per fault kind (default 8; --short: 1). */
  trials?: number;
  seed?: number;
  short?: boolean;
  kinds?: readonly FaultKind[];
  /** MinIO downtime (default 30 s; --short 5 s). */
  minioOutageMs?: number;
  /** Keep the private stack's state dir (logs, db, objects) for inspection. */
  keep?: boolean;
  /** Kinds that may be skipped when they cannot run here (e.g. scratch-full without root); any other skip fails the suite. */
  allowSkip?: readonly FaultKind[];
  log?: (line: string) => void;
}

export interface FaultRecord {
  kind: FaultKind;
  stage: string;
  /** The step the fault was aimed at (seeded). */
  aimedAt: number;
  /** What was done, in words. */
  detail: string;
  /** Last progress step of the attempt hit, when the fault struck. */
  stepAtFault: number | null;
  /** The furthest step any attempt reached before the one that resumed (work done after the fault counts as lost too). */
  furthestStep: number | null;
  /** The attempt hit. */
  attemptAtFault: number | null;
  /** The committed checkpoint the next attempt resumed from (null: from scratch), when there was one. */
  resumedFrom: number | null;
  /** Whether the stage needed another attempt. */
  retried: boolean;
  stepsLost: number | null;
  /** The most steps this fault may cost. */
  bound: number;
  notes: string[];
}

export interface RunReport {
  trial: number;
  kind: FaultKind;
  runId: string;
  prefix: string;
  expected: 'completed' | 'cancelled';
  state: string;
  fault: FaultRecord;
  /** Stage outputs + inputs re-hashed by `audit verify`, plus committed checkpoints re-hashed. */
  artifactsChecked: number;
  artifactsFailed: string[];
  auditProblems: string[];
  duplicates: number;
  /** Job processes left behind (pids), found by the job sessions' ids (faults/process-sampler.ts). */
  orphans: number[];
  /** Pairs of attempts of one stage whose job processes were alive at the same time, and for how long. */
  overlaps: { stage: string; attempts: [number, number]; ms: number }[];
  /** Checkpoints the final attempt of the target stage announced but that were never committed. */
  uncommitted: number[];
  /** Job sessions of this run the sampler saw (attempts that launched a job). */
  jobSessions: number;
  /** Invariant violations of this run, one line each. */
  problems: string[];
  durationMs: number;
}

export interface KindSummary {
  kind: FaultKind;
  runs: number;
  finishedAsExpected: number;
  artifactsChecked: number;
  artifactsVerified: number;
  maxStepsLost: number | null;
  bound: number;
  duplicates: number;
  orphans: number;
  /** Overlapping attempt pairs beyond the bound, and the longest overlap seen (ms). */
  overlapping: number;
  maxOverlapMs: number;
  problems: number;
}

export interface SuiteResult {
  ok: boolean;
  seed: number;
  trials: number;
  short: boolean;
  runs: RunReport[];
  byKind: KindSummary[];
  /** Every invariant violation, prefixed with its run. */
  problems: string[];
  /** Kinds that could not run here, with why. */
  skipped: { kind: FaultKind; reason: string }[];
  /** Skipped kinds that SuiteOptions.allowSkip did not name: each fails the suite. */
  notAllowed: { kind: FaultKind; reason: string }[];
  table: string;
  durationMs: number;
}
