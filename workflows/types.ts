/**
 * Types shared by workflows, activities and the CLI. Type-only imports keep this safe to use from
 * workflow code.
 */
import type { DatasetMixRecord } from '../storage/run-manifest.js';
import type { ToolchainParts } from '../worker/toolchain.js';
import type { PipelinePlan, PlannedStage } from '../spec/plan-types.js';
import type { AttemptAdjustments } from './attempt-policy.js';
import type { FailureClass, FailureKind } from './failures.js';

/** A committed artifact in the bucket, identified by the sha256 of its manifest. */
export interface ArtifactRef {
  prefix: string;
  uri: string;
  manifestSha256: string;
}

/**
 * Model inputs by contract name: `model` (+ `base` when `model` is a LoRA adapter), for PPO/GRPO
 * `reward_model` (+ `reward_model_base`), for eval `baseline` and `reference` (+ their `_base`).
 * See jobs/CONTRACT.md.
 */
export type ModelInputs = Partial<Record<'model' | 'base' | 'reward_model' | 'reward_model_base' | 'baseline' | 'baseline_base' | 'reference' | 'reference_base', ArtifactRef>>;

/** What an eval stage's baseline alias pointed at when the stage started (null: nothing yet). */
export interface ResolvedBaseline {
  model: string;
  alias: string;
  target: (ArtifactRef & { runId: string | null; stage: string | null }) | null;
}

/** The promote step's result (status.promoted, the `promoted` audit event). */
export interface PromotionOutcome {
  model: string;
  alias: string;
  stage: string;
  target: ArtifactRef;
  /** What the alias pointed at before (null: nothing). */
  replaced: ArtifactRef | null;
  /** False when the alias already pointed at this output (a run that reused it): nothing written. */
  changed: boolean;
  seq: number | null;
  by: string;
  reason: string;
}

export interface PipelineInput {
  /** Absent or empty for scheduled runs: the run id is then the workflow id the schedule gave. */
  runId?: string;
  plan: PipelinePlan;
  /** Who started the run (flag, environment or OS user): recorded in the audit trail. */
  requestedBy: string;
  /** Stage ids to run again even when a committed output matches their cache key. */
  forceStages?: string[];
  /** Set by `run --resume-from`: the run whose committed outputs and checkpoints this one continues. */
  resumeFrom?: string;
  /**
   * Scheduled runs: end early, state 'unchanged', when the run's inputs (fingerprint) equal those of
   * the pipeline's last successful run.
   */
  skipIfUnchanged?: boolean;
  /** The schedule that started this run (`refinery schedule create`). */
  scheduleId?: string;
}

/** A dataset as a run read it: its committed copy, the sha256 of its bytes, and where it came from. */
export type PreparedDataset = ArtifactRef & {
  sha256: string;
  /** The exact file or object read: for an s3:// prefix ending in "/", the newest object under it. */
  source?: string;
  /** That object's key in the bucket (s3:// datasets only). */
  sourceKey?: string;
  /** sha256 of the source bytes, when what was committed is their canonical form (runs since canonical datasets). */
  sourceSha256?: string;
  /** The general dataset mixed in, and the rows taken from each (data mixing). */
  mix?: DatasetMixRecord;
};

export interface PreparedRun {
  baseModel: ArtifactRef;
  /** By dataset name. */
  datasets: Record<string, PreparedDataset>;
  /** Hash of the job code and its pinned requirements: part of every cache key. */
  jobsVersion: string;
  /** sha256 of (spec sha256, base model manifest sha256, every dataset sha256, jobs version). */
  fingerprint: string;
  /** The pipeline's last successful run (<prefix>/pipelines/<name>/last-success.json), if any. */
  lastSuccess?: LastSuccess;
}

/** <prefix>/pipelines/<name>/last-success.json, written when a run completes. */
export interface LastSuccess {
  runId: string;
  fingerprint: string;
  finishedAt: string;
}

export interface StageWorkflowInput {
  runId: string;
  storagePrefix: string;
  stage: PlannedStage;
  inputs: ModelInputs;
  datasets: { train?: ArtifactRef; eval?: ArtifactRef };
  jobsVersion: string;
  force: boolean;
  /** The toolchain its training workers would run it with (patch toolchain-keys; absent before). */
  toolchain?: StageToolchain;
}

/** A stage's toolchain: the digest in its cache key, and what it was made of (worker/toolchain.ts). */
export interface StageToolchain {
  digest: string;
  parts: ToolchainParts;
}

export interface StageJobInput {
  runId: string;
  storagePrefix: string;
  stage: PlannedStage;
  cacheKey: string;
  artifactPrefix: string;
  inputs: ModelInputs;
  datasets: { train?: ArtifactRef; eval?: ArtifactRef };
  /** The toolchain the stage was keyed with: a worker with another one declines the attempt. */
  toolchain?: StageToolchain;
  /**
   * Set when the stage workflow keeps the attempt budgets (workflows/attempt-policy.ts): this
   * attempt's number. Absent (runs started before): Temporal's attempt number.
   */
  attempt?: number;
  /** Hosts that should not take this attempt while another host can (the one that just failed it). */
  avoidHosts?: string[];
  /** What this attempt runs with instead of the stage's settings (out of memory, divergence). */
  adjustments?: AttemptAdjustments;
}

export interface StageCacheDecision {
  cacheKey: string;
  artifactPrefix: string;
  /** Present when a committed output with this cache key exists: the stage is reused. */
  committed?: { artifact: ArtifactRef; metrics: Record<string, number | null> };
}

/**
 * Live progress of a training attempt. It travels as the activity's heartbeat details — never as
 * history events — and reaches `status`, `--watch` and the Temporal UI through a describe of the
 * stage workflow (pending activity → heartbeat details): see client/live-progress.ts.
 */
/** A loss or metric as events, heartbeats and status carry it: non-finite values as strings (JSON has no NaN). */
export type Reading = number | 'NaN' | 'Infinity' | '-Infinity';

export interface StageProgress {
  /** 'waiting': another run trains the same cache key; this attempt waits for its output (stage-lease.ts). 'draining': checkpointing before its worker stops. */
  phase: 'waiting' | 'downloading' | 'training' | 'draining' | 'committing';
  step: number;
  totalSteps: number | null;
  loss: Reading | null;
  lastCommittedStep: number | null;
  attempt: number;
  host: string;
  device?: string;
  metrics?: Record<string, Reading | null>;
  /** The committed checkpoint this attempt resumed from. */
  resumedFromStep?: number | null;
  /** Newer checkpoints skipped on restore because they failed verification. */
  skippedCheckpoints?: number[];
  /** Job events that broke the contract so far (each is in the attempt's records). */
  contractViolations?: number;
  /** phase 'waiting': who trains this cache key now. */
  waitingFor?: string;
  /** When the job last reported progress (ISO 8601, worker clock). */
  progressAt?: string;
}

/** Where an attempt ended, as the pipeline reads it from the attempt's own records when the stage ends. */
export interface AttemptStatus {
  attempt: number;
  host: string | null;
  outcome: 'completed' | 'failed' | 'cancelled' | 'reused' | 'lost' | 'drained' | 'declined';
  reason: string | null;
  /** Failed, drained and lost attempts: whose failure it was (workflows/failures.ts). */
  failureClass?: FailureClass;
  failureKind?: FailureKind;
  /** What the attempt ran with instead of the stage's settings. */
  adjustments?: AttemptAdjustments;
  resumedFromStep: number | null;
  checkpoints: number;
  lastCheckpointStep: number | null;
  skippedCheckpoints: number[];
  /** Checkpoints never uploaded because a newer one superseded them in the upload queue. */
  supersededCheckpoints?: number;
  contractViolations: number;
  /** From its own records: its first record, and its `attempt-ended` (a lost one: its last). */
  startedAt?: string | null;
  endedAt?: string | null;
}

/** What a stage or a run cost, computed when the run ends (workflows/cost.ts). */
export interface Cost {
  /** From start to end (a stage: from when it started to when it ended, gates and waits included). */
  wallSeconds: number | null;
  /** Attempts that ran (a cache hit runs none). */
  attempts: number;
  /** The attempts' own time, summed: what a worker held for the stage. */
  attemptSeconds: number;
  /** GPUs × attemptSeconds: GPU time held, whether the job kept the GPUs busy or not. */
  gpuSeconds: number;
}

export interface StageJobResult {
  artifact: ArtifactRef;
  metrics: Record<string, number | null>;
  resumedFromStep: number | null;
  /** Checkpoints skipped on restore because they failed verification. */
  skippedCheckpoints: number[];
  /** The output was already committed: nothing ran. */
  alreadyCommitted: boolean;
  /** The run whose committed output this is, when another run trained it (same cache key). */
  reusedFrom?: string | null;
  attempt: number;
  host: string;
  /** Where training ended: the pipeline's status shows it without live progress signals. */
  final?: { step: number; totalSteps: number | null; loss: Reading | null; lastCommittedStep: number | null };
  contractViolations?: number;
}

export interface StageOutcome {
  artifact: ArtifactRef;
  metrics: Record<string, number | null>;
  reused: boolean;
  cacheKey: string;
  resumedFromStep: number | null;
  attempt: number;
  final?: StageJobResult['final'];
  /** Another run trained this output while this one waited for it. */
  reusedFrom?: string | null;
  /** The attempts that failed before this one succeeded, and why. */
  failedAttempts?: { attempt: number; class: FailureClass; kind: FailureKind; host: string | null; message: string }[];
  /** What the successful attempt ran with instead of the stage's settings. */
  adjustments?: AttemptAdjustments;
}

export type StageState = 'pending' | 'running' | 'awaiting-approval' | 'completed' | 'reused' | 'failed' | 'cancelled' | 'skipped';
/** 'unchanged': a scheduled run whose inputs equal the last successful run's; nothing ran. */
export type RunState = 'running' | 'completed' | 'failed' | 'cancelled' | 'unchanged';

export interface StageStatus {
  id: string;
  kind: string;
  state: StageState;
  attempt: number;
  step: number;
  totalSteps: number | null;
  loss: Reading | null;
  metrics: Record<string, number | null>;
  lastCommittedStep: number | null;
  resumedFromStep: number | null;
  artifact?: ArtifactRef;
  error?: string;
  gate?: string;
  /** eval: the baseline it was scored against (`model@alias -> run/stage`, or why none). */
  baseline?: string;
  /** Why a stage did not run (e.g. the run's inputs were unchanged). */
  note?: string;
  startedAt?: string;
  endedAt?: string;
  host?: string;
  /** Live (client side, from heartbeat details): what the running attempt is doing. */
  phase?: StageProgress['phase'];
  waitingFor?: string;
  progressAt?: string;
  /** Every attempt that ran, from the attempts' own records (filled when the stage ends). */
  attempts?: AttemptStatus[];
  /** GPUs each attempt of the stage holds (the plan's resources.gpus). */
  gpus?: number;
  /** Set when the run ends. */
  cost?: Cost;
  skippedCheckpoints?: number[];
  contractViolations?: number;
}

export interface PipelineStatus {
  runId: string;
  pipeline: string;
  state: RunState;
  stages: StageStatus[];
  error?: string;
  /** Last event of the audit trail, recorded at run end so that truncation is detectable. */
  auditHead?: { seq: number; hash: string };
  /** The run's fingerprint (see PreparedRun): finishRun records it as the last success when completed. */
  fingerprint?: string;
  /** State 'unchanged': the last successful run whose inputs this run found unchanged. */
  unchangedSince?: string;
  /** When the workflow started, and what the whole run cost (set when it ends). */
  startedAt?: string;
  cost?: Cost;
  /** The promote step, once it ran (plan.promote). */
  promoted?: PromotionOutcome;
  /** Set when an audit append failed for good: the trail stops at `auditHead`. */
  auditError?: string;
  /** Filled by the CLI from the bucket (worker/host-health.ts): hosts that ran this run's attempts and are quarantined now. */
  quarantinedHosts?: { host: string; since: string; reason: string }[];
}

export interface PipelineResult {
  status: PipelineStatus;
  artifacts: Record<string, ArtifactRef>;
}

export interface ApprovalDecision {
  stageId: string;
  approved: boolean;
  by: string;
  reason: string;
  /** `refinery approve|reject --key`: the approver's signature (docs/security.md, "Signed approvals"). */
  signed?: ApprovalSignature;
}

/**
 * What a signed decision carries besides its fields: public data only (it is in the history). The
 * signature is over storage/approval-signature.ts approvalPayload(runId, stageId, approved, by, reason, at, nonce).
 */
export interface ApprovalSignature {
  /** When it was signed (ISO 8601). */
  at: string;
  nonce: string;
  /** base64 of the raw 32-byte Ed25519 public key. */
  publicKey: string;
  /** hex sha256 of the raw public key. */
  keyFingerprint: string;
  /** base64 Ed25519 signature. */
  signature: string;
}

/** What verifyApproval found: what the `approval` audit event records besides the decision. */
export type ApprovalVerdict =
  | { signed: false }
  | { signed: true; keyFingerprint: string; publicKey: string; signature: string; signedAt: string; nonce: string; approver: string | null };
