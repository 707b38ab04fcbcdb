/**
 * Types shared by workflows, activities and the CLI. Type-only imports keep this safe to use from
 * workflow code.
 */
import type { PipelinePlan, PlannedStage } from '../spec/plan-types.js';

/** A committed artifact in the bucket, identified by the sha256 of its manifest. */
export interface ArtifactRef {
  prefix: string;
  uri: string;
  manifestSha256: string;
}

/**
 * Model inputs by contract name: `model` (+ `base` when `model` is a LoRA adapter), and for
 * PPO/GRPO `reward_model` (+ `reward_model_base`). See jobs/CONTRACT.md.
 */
export type ModelInputs = Partial<Record<'model' | 'base' | 'reward_model' | 'reward_model_base', ArtifactRef>>;

export interface PipelineInput {
  runId: string;
  plan: PipelinePlan;
  /** Who started the run (flag, environment or OS user): recorded in the audit trail. */
  requestedBy: string;
  /** Stage ids to run again even when a committed output matches their cache key. */
  forceStages?: string[];
  /** Set by `run --resume-from`: the run whose committed outputs and checkpoints this one continues. */
  resumeFrom?: string;
}

export interface PreparedRun {
  baseModel: ArtifactRef;
  /** By dataset name. */
  datasets: Record<string, ArtifactRef & { sha256: string }>;
  /** Hash of the job code and its pinned requirements: part of every cache key. */
  jobsVersion: string;
}

export interface StageWorkflowInput {
  runId: string;
  storagePrefix: string;
  stage: PlannedStage;
  inputs: ModelInputs;
  datasets: { train?: ArtifactRef; eval?: ArtifactRef };
  jobsVersion: string;
  force: boolean;
}

export interface StageJobInput {
  runId: string;
  storagePrefix: string;
  stage: PlannedStage;
  cacheKey: string;
  artifactPrefix: string;
  inputs: ModelInputs;
  datasets: { train?: ArtifactRef; eval?: ArtifactRef };
}

export interface StageCacheDecision {
  cacheKey: string;
  artifactPrefix: string;
  /** Present when a committed output with this cache key exists: the stage is reused. */
  committed?: { artifact: ArtifactRef; metrics: Record<string, number | null> };
}

export interface StageProgress {
  phase: 'downloading' | 'training' | 'committing';
  step: number;
  totalSteps: number | null;
  loss: number | null;
  lastCommittedStep: number | null;
  attempt: number;
  host: string;
  device?: string;
  metrics?: Record<string, number | null>;
  /** The committed checkpoint this attempt resumed from. */
  resumedFromStep?: number | null;
}

export interface StageJobResult {
  artifact: ArtifactRef;
  metrics: Record<string, number | null>;
  resumedFromStep: number | null;
  /** Checkpoints skipped on restore because they failed verification. */
  skippedCheckpoints: number[];
  /** The output was already committed: nothing ran. */
  alreadyCommitted: boolean;
  attempt: number;
  host: string;
}

export interface StageOutcome {
  artifact: ArtifactRef;
  metrics: Record<string, number | null>;
  reused: boolean;
  cacheKey: string;
  resumedFromStep: number | null;
  attempt: number;
}

export type StageState = 'pending' | 'running' | 'awaiting-approval' | 'completed' | 'reused' | 'failed' | 'cancelled' | 'skipped';
export type RunState = 'running' | 'completed' | 'failed' | 'cancelled';

export interface StageStatus {
  id: string;
  kind: string;
  state: StageState;
  attempt: number;
  step: number;
  totalSteps: number | null;
  loss: number | null;
  metrics: Record<string, number | null>;
  lastCommittedStep: number | null;
  resumedFromStep: number | null;
  artifact?: ArtifactRef;
  error?: string;
  gate?: string;
  startedAt?: string;
  endedAt?: string;
  host?: string;
}

export interface PipelineStatus {
  runId: string;
  pipeline: string;
  state: RunState;
  stages: StageStatus[];
  error?: string;
  /** Last event of the audit trail, recorded at run end so that truncation is detectable. */
  auditHead?: { seq: number; hash: string };
}

export interface ApprovalDecision {
  stageId: string;
  approved: boolean;
  by: string;
  reason: string;
}
