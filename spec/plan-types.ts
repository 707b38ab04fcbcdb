/**
 * The plan a pipeline workflow runs: plain JSON computed from the spec by the client. Kept in its
 * own file with type-only imports so workflow code can import it without pulling in zod or Node.
 */
import type { DatasetFormat, Finetuning, Hyper, StageKind } from './schema.js';

/** A model input: the pipeline's base model or the output of another stage. */
export type ModelRef = { base: true } | { stage: string };

export interface PlannedDataset {
  /** Name in the spec's `datasets` (or the path of an inline dataset). */
  name: string;
  /** The source file: local absolute path or s3:// URI. */
  path: string;
  /**
   * The canonical format the job reads (spec/datasets.ts): what prepareRun commits as data.jsonl.
   * In plans without `source` (runs started before canonical datasets), the file's own format:
   * it is committed as it is and read so.
   */
  format: DatasetFormat;
  /** How the source file is read: a Refinery format, or LLaMA-Factory attributes (from a dataset_info.json entry or inline). */
  source?: import('./dataset-info.js').DatasetSource;
  /** Eval rows held out of this dataset by the job, as LLaMA-Factory's val_size: a fraction (< 1) or a count. */
  valSize?: number;
  /** A general dataset mixed in when the canonical file is written: `ratio` of its rows per row of this one, sampled with `seed`. */
  mix?: { dataset: Omit<PlannedDataset, 'mix' | 'valSize'>; ratio: number; seed: number };
}

/** `retry.infrastructure_attempts` by default, and for plans of runs started before it existed. */
export const DEFAULT_INFRASTRUCTURE_ATTEMPTS = 20;

export interface PlannedStage {
  id: string;
  kind: StageKind;
  /** Stage ids this one waits for. */
  deps: string[];
  inputs: { model: ModelRef; reward_model?: ModelRef; reference?: ModelRef };
  /** eval: the registry alias scored beside the candidate, resolved when the stage starts. */
  baseline?: PlannedBaseline;
  dataset?: PlannedDataset;
  evalDataset?: PlannedDataset;
  finetuning: Finetuning;
  hyper: Hyper;
  params: Record<string, unknown>;
  /** `job_params`: free-form, for a job other than the built-in ones. */
  jobParams?: Record<string, unknown>;
  /** Chat template override: a name or Jinja text (absent: the model's own). */
  template?: string;
  gpus: number;
  taskQueue: string;
  /** infrastructureAttempts, oomMinBatchSize and divergence are absent from plans of runs started before them. */
  retry: { maximumAttempts: number; initialIntervalMs: number; maximumIntervalMs: number; backoffCoefficient: number; infrastructureAttempts?: number; oomMinBatchSize?: number };
  divergence?: { lossSpikeFactor?: number; window: number; maxKl?: number; lrFactor: number };
  timeouts: { heartbeatMs: number; stallMs: number; startToCloseMs: number };
  gate?: { metrics: { metric: string; min?: number; max?: number }[]; approvalTimeoutMs?: number };
  /** LoRA training stages output an adapter that later stages stack on their input model. */
  producesAdapter: boolean;
}

export interface PlannedBaseline {
  model: string;
  alias: string;
  /** No target yet: `fail` the stage, or `pass` (score the candidate alone; relative gates pass). */
  ifMissing: 'fail' | 'pass';
}

export interface PlannedPromotion {
  stage: string;
  model: string;
  alias: string;
  reason?: string;
}

export interface PipelinePlan {
  name: string;
  specSha256: string;
  /** Local absolute path or s3:// URI. */
  baseModel: string;
  storage: { bucket?: string; prefix: string };
  /** In a topological order. */
  stages: PlannedStage[];
  /** The registry alias pointed at a stage's output once the run completed (absent: none). */
  promote?: PlannedPromotion;
}
