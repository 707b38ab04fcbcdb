/**
 * What one fault kind is to a trial (faults/trial.ts): how the target stage is set up for it, how
 * the fault is injected, and the checks only it has. One module per kind in this folder.
 */
import type { WorkflowHandle } from '@temporalio/client';
import type { WorkerProcess } from '../../infra/harness/processes.js';
import type { AttemptSummary } from '../../storage/attempt-records.js';
import type { AuditRecord } from '../../storage/audit-chain.js';
import type { Ctx } from '../context.js';
import type { JobProgress } from '../harness.js';
import type { FaultKind, FaultRecord } from '../types.js';

/** A trial as planned, before its pipeline starts. */
export interface TrialPlan {
  ctx: Ctx;
  kind: FaultKind;
  trial: number;
  runId: string;
  prefix: string;
  /** The target stage's id. */
  target: string;
  /** The target stage's max_steps (unless the kind sets its own). */
  total: number;
  /** The step the fault aims at. */
  aimedAt: number;
  /** The worker process that runs the target stage. */
  worker: WorkerProcess;
}

/** The kind's part of the target stage. */
export interface TargetSetup {
  /** Job params beyond `step_seconds`. */
  params?: Record<string, unknown>;
  timeouts?: Record<string, string>;
  maxSteps?: number;
  /** Hyperparameters beyond `max_steps` and `save_steps` (batch_size, gradient_accumulation, …). */
  hyper?: Record<string, unknown>;
  /**
   * The target stage's own retry settings over the trial's defaults (`maximum_attempts: 1`: a
   * failure that used a job attempt would fail the stage).
   */
  retry?: Record<string, unknown>;
  /** A task queue of the target stage's own (the other stages stay on the trial worker's queue). */
  queue?: string;
  /** A file the job writes a child's pid to: that process must be gone at the end too. */
  childPidFile?: string;
}

/** A running trial: what inject(), check() and cleanup() work with. */
export interface Trial extends TrialPlan {
  setup: TargetSetup;
  /** The target stage's params as the spec has them. */
  params: Record<string, unknown>;
  handle: WorkflowHandle;
  fault: FaultRecord;
  problems: string[];
  /** The target stage's job on `w`, once it has reached `step`. */
  reach(w: WorkerProcess, step: number, timeoutMs?: number): Promise<JobProgress | undefined>;
}

/** What the run left, for the kind's own checks. */
export interface Outcome {
  events: AuditRecord['event'][];
  /** Reasons of the target stage's failed attempts, from the audit trail. */
  failures: string[];
  /** The target stage's attempts as their own records tell them (storage/attempt-records.ts), by attempt number. */
  attempts: AttemptSummary[];
}

export interface FaultKindModule {
  /** The run's expected end state (default completed). */
  expected?: 'completed' | 'cancelled';
  /** The worker that runs the target stage (default ctx.main). */
  worker?(ctx: Ctx): WorkerProcess;
  /** Whether steps lost are measured against the bound (default true). */
  measuresStepsLost?: boolean;
  setup?(plan: TrialPlan): TargetSetup;
  inject(t: Trial): Promise<void>;
  check?(t: Trial, outcome: Outcome): void;
  /** Undoes what the kind left beyond the run (extra workers, a quarantine), once every check is done, whether or not inject succeeded. */
  cleanup?(t: Trial): Promise<void>;
}
