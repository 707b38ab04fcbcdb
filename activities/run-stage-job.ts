/**
 * The training activity: one attempt of a stage on this worker.
 *
 *   output already committed? → return it, run nothing (invariant 4)
 *   take the cache key's lease — or wait while another run trains it, then reuse its output
 *   download inputs (verified) → restore the newest committed checkpoint that verifies
 *   → launch the job → heartbeat its progress, commit each checkpoint while it trains,
 *     flush its log and events to the bucket every few seconds
 *   → commit the output → release the lease → return it.
 *
 * Everything this attempt does is in its own records in the bucket (storage/attempt-records.ts)
 * and its live progress in heartbeat details: no history event per step or checkpoint.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, open, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { activityInfo, cancellationSignal, Context, log } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { AttemptRecorder } from '../storage/attempt-records.js';
import { removeCheckpoints, restoreNewestCheckpoint } from '../storage/checkpoints.js';
import { CommitConflict, commitDirectory, readCommitted, type CommittedArtifact } from '../storage/commit.js';
import { layout } from '../storage/layout.js';
import { isLocalDiskError } from '../storage/local-fs-error.js';
import type { ToolchainParts, WorkerToolchain } from '../worker/toolchain.js';
import { toolchainDifferences } from '../worker/toolchain.js';
import type { ObjectStore } from '../storage/object-store.js';
import { acquireOrWait, LeaseLostError, localHolder, type StageLease } from '../storage/stage-lease.js';
import type { Hyper, StageKind } from '../spec/schema.js';
import { classifyFailure, type FailureDetails } from '../workflows/failures.js';
import type { Reading, StageJobInput, StageJobResult } from '../workflows/types.js';
import { CheckpointUploader } from './checkpoint-uploader.js';
import { DivergenceWatch, type Divergence } from './divergence-watch.js';
import { checkGgufDirectory, GgufCheckError } from './gguf-check.js';
import { CHECKPOINT_SIGNAL, JOB_CONTRACT_VERSION, type JobConfig, type JobEvent } from './job-contract.js';
import { attemptOutcomeOf, throwIfJobFailed } from './job-failure.js';
import { runJobProcess, type LaunchedJob } from './job-process.js';
import { JobRegistry } from './job-registry.js';
import { startLogShipping } from './log-shipper.js';
import { runPreflight, type PreflightResult } from './preflight.js';
import { DEFAULT_INPUT_CACHE_BYTES, InputCache, type InputCacheLogger } from './input-cache.js';
import { fetchStageInputs, type LocalStageInputs } from './stage-inputs.js';
import { ProgressHeartbeat } from './stage-progress.js';
import { isTransientStorageError, storageRetry } from './storage-retry.js';
import type { DrainView, HostHealthView } from './worker-context.js';

export { isTransientStorageError } from './storage-retry.js';

/** GPUs for one job; the worker owns the devices (worker/gpu-allocator.ts). */
export interface GpuLeaser {
  acquire(count: number, signal: AbortSignal): Promise<{ devices: number[]; release: () => void }>;
}

export interface TrainingDeps {
  store: ObjectStore;
  /** This worker's scratch space; each worker process needs its own. */
  scratchDir: string;
  /** argv that runs the job for a stage kind (Python jobs by default; tests plug in their own). */
  jobCommand: (kind: StageJobInput['stage']['kind']) => [string, ...string[]];
  jobCwd: string;
  gpus: GpuLeaser;
  /** Extra environment for a stage kind's job (the gguf job's llama.cpp tool paths). */
  jobEnv?: (kind: StageJobInput['stage']['kind']) => Record<string, string>;
  /** Grace between TERM and KILL when stopping a job. */
  killGraceMs?: number;
  /** How long checkpoint and output commits retry while object storage is unreachable. Default 10 min. */
  storageRetryMs?: number;
  /** Longest time job output waits before it is flushed to the bucket. Default 10 s. */
  logFlushMs?: number;
  /** How long another run waits on this attempt's unrenewed lease before taking over. Default: the stage's heartbeat timeout, ≥ 10 s. */
  leaseTtlMs?: number;
  /** This host's health: quarantine, and where a retry should go (worker/host-health.ts). Without: no placement checks. */
  health?: HostHealthView;
  /** The worker's drain (worker/drain.ts). Without: attempts end only by themselves or by cancellation. */
  drain?: DrainView;
  /** argv of the preflight run before each job (activities/preflight.ts); without: none. */
  preflightCommand?: readonly [string, ...string[]];
  /** The worker's devices, checked by the preflight. */
  devices?: number[];
  /** A memory limit of each job's own (bytes; a cgroup per job, activities/job-memory.ts). */
  jobMemoryLimitBytes?: number;
  /** Cap of the input cache under `<scratchDir>/cache` (bytes; LRU, entries in use never evicted). Default 64 GiB. */
  inputCacheBytes?: number;
  /**
   * What this worker runs stages with (worker/toolchain.ts), described once at startup: part of
   * every stage's cache key. Without: describeToolchain fails and no attempt checks it.
   */
  toolchain?: Promise<WorkerToolchain>;
}

/** What describeToolchain answers: this worker's toolchain digest per stage kind, and its parts. */
export interface ToolchainReport {
  host: string;
  digests: Partial<Record<StageKind, string>>;
  parts: ToolchainParts;
}

/** The attempt's activity log when there is one (the cache logs from inside attempts), else the console. */
const activityOrConsoleLog: InputCacheLogger = {
  info: (message, fields) => {
    try {
      log.info(message, fields);
    } catch {
      console.log(message, fields ?? '');
    }
  },
  warn: (message, fields) => {
    try {
      log.warn(message, fields);
    } catch {
      console.warn(message, fields ?? '');
    }
  },
};

/** The stage's hyperparameters with this attempt's adjustments (attempt-policy.ts) applied. */
function adjustedHyper(input: StageJobInput): Hyper {
  const a = input.adjustments ?? {};
  return {
    ...input.stage.hyper,
    ...(a.batchSize !== undefined ? { batch_size: a.batchSize } : {}),
    ...(a.gradientAccumulation !== undefined ? { gradient_accumulation: a.gradientAccumulation } : {}),
    ...(a.learningRate !== undefined ? { learning_rate: a.learningRate } : {}),
  };
}

/** The last lines of a job's log (bounded read: logs can be large). */
async function logTail(file: string, bytes = 16_384): Promise<string> {
  try {
    const f = await open(file, 'r');
    try {
      const { size } = await f.stat();
      const start = Math.max(0, size - bytes);
      const buf = Buffer.alloc(size - start);
      await f.read(buf, 0, buf.length, start);
      return buf.toString('utf8');
    } finally {
      await f.close();
    }
  } catch {
    return '';
  }
}

/** A failure raised outside the job (the store away for longer than the retry budget) as the taxonomy's type. */
function asAttemptFailure(err: unknown, host: string): unknown {
  if (err instanceof ApplicationFailure || !(err instanceof Error)) return err;
  if (isTransientStorageError(err)) return ApplicationFailure.retryable(`object storage unavailable: ${err.message}`, 'StorageUnavailable', { host } satisfies FailureDetails);
  // A download into a full (or failing) scratch disk: the node's fault; the next attempt resumes as planned.
  if (isLocalDiskError(err)) return ApplicationFailure.retryable(`scratch disk on ${host}: ${err.message}`, 'ScratchDiskFailed', { host } satisfies FailureDetails);
  return err;
}

/** A GGUF export is committed only after llama.cpp has loaded and checked every file. */
async function checkGgufExport(outputDir: string): Promise<Record<string, number>> {
  try {
    const checks = await checkGgufDirectory(outputDir);
    await writeFile(path.join(outputDir, 'gguf_check.json'), JSON.stringify(checks, null, 2));
    return Object.fromEntries(
      checks.flatMap((c) => [
        [`gguf_${c.type}_greedy_match`, c.greedyMatch],
        [`gguf_${c.type}_tokenizer_match`, c.tokenizerMatch],
        [`gguf_${c.type}_token_agreement`, c.tokenAgreement],
        [`gguf_${c.type}_top5_agreement`, c.top5Agreement],
        ...(c.confidentAgreement !== undefined ? [[`gguf_${c.type}_confident_agreement`, c.confidentAgreement] as const] : []),
      ]),
    );
  } catch (err) {
    if (err instanceof GgufCheckError) throw ApplicationFailure.nonRetryable(err.message, 'GgufCheckFailed');
    throw err;
  }
}

export function createTrainingActivities(deps: TrainingDeps) {
  // Every job an attempt launches is recorded in the scratch dir while it runs, for a restarted
  // worker to reap should it outlive this one (activities/job-registry.ts, worker/stale-jobs.ts).
  const jobRegistry = new JobRegistry(deps.scratchDir);
  // Inputs by manifest hash, shared by this process's attempts; evicted LRU past the cap, never while an attempt holds them.
  const inputCache = new InputCache({ dir: path.join(deps.scratchDir, 'cache'), capBytes: deps.inputCacheBytes ?? DEFAULT_INPUT_CACHE_BYTES, log: activityOrConsoleLog });
  return {
    async runStageJob(input: StageJobInput): Promise<StageJobResult> {
      return deps.drain ? deps.drain.track(runAttempt(input)) : runAttempt(input);
    },
    /** The toolchain a stage of each kind would be trained with here: the run keys its stages with it. */
    async describeToolchain(input: { kinds: StageKind[] }): Promise<ToolchainReport> {
      if (!deps.toolchain) throw ApplicationFailure.nonRetryable('this worker does not describe its toolchain', 'ToolchainUnknown');
      const toolchain = await deps.toolchain;
      return { host: deps.health?.host ?? hostname(), digests: Object.fromEntries(input.kinds.map((k) => [k, toolchain.digest(k)])), parts: toolchain.parts };
    },
  };

  async function runAttempt(input: StageJobInput): Promise<StageJobResult> {
    const info = activityInfo();
    // The stage workflow numbers attempts itself (attempt budgets); runs started before: Temporal's.
    const attempt = input.attempt ?? info.attempt;
    const signal = cancellationSignal();
    const host = deps.health?.host ?? hostname();
    const { store } = deps;
    const { stage } = input;
    const outputPrefix = layout.output(input.artifactPrefix);
    const retry = storageRetry({
      budgetMs: deps.storageRetryMs ?? 10 * 60_000,
      signal,
      onWait: () => progress.update({}),
      warn: (message, error) => log.warn(message, { error: String(error) }),
    });
    const records = AttemptRecorder.forAttempt(store, { storagePrefix: input.storagePrefix, runId: input.runId, stageId: stage.id, attempt }, retry);
    const progress = new ProgressHeartbeat({ phase: 'downloading', step: 0, totalSteps: null, loss: null, lastCommittedStep: null, attempt, host });
    progress.start(Math.min(Math.max((info.heartbeatTimeoutMs ?? 30_000) / 3, 200), 10_000));
    const reuse = (committed: CommittedArtifact): StageJobResult => {
      const by = committed.manifest.meta?.runId;
      return {
        artifact: { prefix: committed.prefix, uri: committed.uri, manifestSha256: committed.manifestSha256 },
        metrics: (committed.manifest.meta?.metrics as Record<string, number>) ?? {},
        resumedFromStep: null,
        skippedCheckpoints: [],
        alreadyCommitted: true,
        reusedFrom: typeof by === 'string' && by !== input.runId ? by : null,
        attempt,
        host,
      };
    };

    let lease: StageLease | undefined;
    try {
      await declineIfMisplaced(input, host, records);
      const already = await readCommitted(store, outputPrefix);
      if (already) {
        log.info('output already committed; not running the job again', { stage: stage.id, uri: already.uri });
        const result = reuse(already);
        // Still an attempt: it is in the trail like any other (nothing ran, nothing is dropped).
        await records.record('attempt-started', { host, pid: process.pid });
        await records.record('attempt-ended', { outcome: 'reused', reason: `output already committed by run ${result.reusedFrom ?? input.runId}`, artifact: already.manifestSha256 });
        return result;
      }
      // One attempt at a time trains a cache key, across runs: wait while another run trains it.
      const acquired = await acquireOrWait(store, input.artifactPrefix, localHolder(input.runId, stage.id, attempt), {
        ttlMs: deps.leaseTtlMs ?? Math.max(stage.timeouts.heartbeatMs, 10_000),
        // A drain ends the wait too: another worker waits instead.
        signal: deps.drain ? AbortSignal.any([signal, deps.drain.signal]) : signal,
        onWait: (w) => progress.update({ phase: 'waiting', waitingFor: w.description }),
        isDone: async () => (await readCommitted(store, outputPrefix)) !== undefined,
      });
      if (acquired.kind === 'done') {
        const committed = (await readCommitted(store, outputPrefix))!;
        const result = reuse(committed);
        await records.record('attempt-started', { host, pid: process.pid, waitedFor: progress.progress.waitingFor ?? null });
        await records.record('attempt-ended', { outcome: 'reused', reason: `output committed by run ${result.reusedFrom ?? input.runId}`, artifact: committed.manifestSha256 });
        return result;
      }
      lease = acquired.lease;
      const result = await trainWithLease(input, lease, { progress, records, retry, signal, host, attempt });
      await records.record('attempt-ended', { outcome: 'completed', artifact: result.artifact.manifestSha256 });
      return result;
    } catch (caught) {
      // Whatever a drain interrupted (a wait for the lease or a GPU) ends drained, like a stopped job.
      const drainedMeanwhile = deps.drain?.signal.aborted && !(caught instanceof ApplicationFailure) && !(caught instanceof CancelledFailure) && !signal.aborted;
      const err = drainedMeanwhile
        ? ApplicationFailure.retryable(`drained before its job ran (${deps.drain?.reason ?? 'worker draining'})`, 'WorkerDrained', { host, step: 0 } satisfies FailureDetails)
        : asAttemptFailure(caught, host);
      const ended = attemptOutcomeOf(err);
      await records.record('attempt-ended', { ...ended, host });
      if (ended.failure?.class === 'job') {
        const c = classifyFailure(err);
        await deps.health?.jobFailed({ runId: input.runId, stageId: stage.id, kind: c.kind, message: c.message }).catch((e: unknown) => log.warn('host health', { error: String(e) }));
      }
      throw err;
    } finally {
      progress.stop();
      // Free the cache key at once for a retry or a waiting run (a dead worker's lease goes stale instead).
      await lease?.release().catch((err: unknown) => log.warn('could not release the stage lease', { error: String(err) }));
      await records.flush();
      if (records.error) log.warn('attempt records incomplete', { error: String(records.error) });
    }
  }

  /**
   * Placement (workflows/failures.ts, class 'placement'): a quarantined host takes no attempt; the
   * host that just failed this stage lets another take the retry while one can; a draining worker
   * takes nothing new. A declined attempt is recorded as such and costs no budget.
   */
  async function declineIfMisplaced(input: StageJobInput, host: string, records: AttemptRecorder): Promise<void> {
    const decline = async (type: 'HostQuarantined' | 'HostAvoided' | 'WorkerDrained' | 'ToolchainDeclined', reason: string) => {
      const err = ApplicationFailure.retryable(reason, type, { host } satisfies FailureDetails);
      await records.record('attempt-started', { host, pid: process.pid });
      throw err; // recorded as ended (declined) by runAttempt
    };
    if (deps.drain?.signal.aborted) await decline('WorkerDrained', `worker on ${host} is draining: it takes no new attempt`);
    // The stage was keyed with another toolchain than this worker's (a fleet mid-upgrade): what it
    // would train is not what the key says. Another worker may have the keyed one; else it is final.
    if (input.toolchain && deps.toolchain) {
      const toolchain = await deps.toolchain;
      const mine = toolchain.digest(input.stage.kind);
      if (mine !== input.toolchain.digest) {
        const differs = toolchainDifferences(input.toolchain.parts, toolchain.parts, input.stage.kind);
        const reason = `host ${host} has toolchain ${mine}, the stage was keyed with ${input.toolchain.digest} (they differ in: ${differs.join(', ') || 'unknown'})`;
        if (deps.health && (await deps.health.anotherHostServes(input.stage.taskQueue))) await decline('ToolchainDeclined', reason);
        await records.record('attempt-started', { host, pid: process.pid });
        throw ApplicationFailure.nonRetryable(`${reason}: no other worker serves ${input.stage.taskQueue}; run the stage again to key it with the fleet's toolchain`, 'ToolchainMismatch', { host } satisfies FailureDetails);
      }
    }
    const quarantined = deps.health?.quarantined();
    if (quarantined) await decline('HostQuarantined', `host ${host} is quarantined (${quarantined}): it takes no GPU work`);
    if (deps.health && input.avoidHosts?.includes(host) && (await deps.health.anotherHostServes(input.stage.taskQueue))) {
      await decline('HostAvoided', `host ${host} failed the previous attempt of this stage; another host serves ${input.stage.taskQueue}`);
    }
  }

  async function trainWithLease(
    input: StageJobInput,
    lease: StageLease,
    ctx: { progress: ProgressHeartbeat; records: AttemptRecorder; retry: ReturnType<typeof storageRetry>; signal: AbortSignal; host: string; attempt: number },
  ): Promise<StageJobResult> {
    const info = activityInfo();
    const { attempt } = ctx;
    const { store } = deps;
    const { stage } = input;
    const { progress, records, retry } = ctx;
    // The job stops when the activity is cancelled or this attempt loses its lease (fencing).
    const stop = new AbortController();
    let leaseLost: LeaseLostError | undefined;
    const onAbort = () => stop.abort();
    if (ctx.signal.aborted) stop.abort();
    else ctx.signal.addEventListener('abort', onAbort, { once: true });
    lease.startRenewing({
      onLost: (err) => {
        leaseLost = err;
        log.warn('lost the stage lease: stopping the job', { error: err.message });
        stop.abort();
      },
      // Storage unreachable: the job trains on, commits wait (each one proves the lease first).
      onUnconfirmed: (unconfirmed) =>
        unconfirmed ? log.warn('cannot renew the stage lease (storage unreachable); the job trains on, commits wait', { lease: lease.key }) : log.info('stage lease confirmed again', { lease: lease.key }),
    });

    // Scratch per attempt: two attempts (of one run, or of two) never share a folder.
    const work = path.join(deps.scratchDir, 'stages', input.cacheKey, `${input.runId}.${attempt}`);
    const dirs = { output: path.join(work, 'output'), checkpoints: path.join(work, 'checkpoints') };
    await mkdir(dirs.output, { recursive: true });
    await mkdir(dirs.checkpoints, { recursive: true });
    // Held in the input cache from download to the attempt's end, however it ends (the finally below).
    let local: LocalStageInputs | undefined;
    try {
      progress.update({ phase: 'downloading' });
      // The node's preflight runs while the inputs download (it must pass before the job starts).
      const preflight: Promise<PreflightResult> | undefined = deps.preflightCommand
        ? runPreflight({ argv: deps.preflightCommand, cwd: deps.jobCwd, devices: deps.devices ?? [], signal: stop.signal })
        : undefined;
      local = await fetchStageInputs(store, input, inputCache);

      // Resume: only committed checkpoints that verify count, and none a diverged attempt took after its divergence began.
      const discard = input.adjustments?.discard ?? [];
      const restore = await restoreNewestCheckpoint(store, input.artifactPrefix, dirs.checkpoints, {
        isDiscarded: (step, epoch) => discard.some((d) => step >= d.fromStep && (epoch ?? 0) <= d.throughEpoch),
      });
      for (const s of restore.skipped) {
        log.warn('skipped a checkpoint that failed verification', { step: s.step, reason: s.reason });
        await records.record('checkpoint-skipped', { step: s.step, reason: s.reason });
      }
      if (restore.discarded.length > 0) {
        // Gone from the bucket, so that retention and later attempts never see them again.
        await lease.assertHeld();
        await retry('removal of diverged checkpoints', () => removeCheckpoints(store, input.artifactPrefix, restore.discarded));
        for (const step of restore.discarded) await records.record('checkpoint-discarded', { step, reason: 'taken after the divergence of an earlier attempt began' });
      }
      const resumeStep = restore.restored?.step ?? null;
      const skippedCheckpoints = restore.skipped.map((s) => s.step);
      const hyper = adjustedHyper(input);
      await records.record('attempt-started', {
        host: ctx.host,
        pid: process.pid,
        epoch: lease.epoch,
        resumedFromStep: resumeStep,
        skippedCheckpoints,
        adjustments: input.adjustments ?? {},
        ...(input.adjustments?.batchSize !== undefined ? { batchSize: hyper.batch_size, gradientAccumulation: hyper.gradient_accumulation } : {}),
      });
      if (preflight) {
        const checked = await preflight;
        await records.record('preflight', { ok: checked.ok, message: checked.message, seconds: checked.seconds });
        if (!checked.ok) {
          await deps.health?.preflightFailed(checked.message);
          throw ApplicationFailure.retryable(`node failed its preflight on ${ctx.host}: ${checked.message}`, 'PreflightFailed', { host: ctx.host } satisfies FailureDetails);
        }
      }
      progress.update({ phase: 'training', step: resumeStep ?? 0, lastCommittedStep: resumeStep, resumedFromStep: resumeStep, skippedCheckpoints });

      const config: JobConfig = {
        contract: JOB_CONTRACT_VERSION,
        kind: stage.kind,
        run_id: input.runId,
        stage_id: stage.id,
        output_dir: dirs.output,
        checkpoint_dir: dirs.checkpoints,
        resume_from: restore.restored?.dir ?? null,
        inputs: local.inputs,
        datasets: { ...local.datasets, val_size: stage.evalDataset ? null : (stage.dataset?.valSize ?? null) },
        dataset_format: stage.dataset?.format ?? null,
        finetuning: stage.finetuning,
        hyper,
        params: stage.params,
        job_params: stage.jobParams ?? {},
        chat_template: stage.template ?? null,
      };
      const configPath = path.join(work, `job-config.attempt-${attempt}.json`);
      await writeFile(configPath, JSON.stringify(config, null, 2));
      const logKey = layout.jobLog(input.storagePrefix, input.runId, stage.id, attempt);
      const eventsKey = layout.jobEvents(input.storagePrefix, input.runId, stage.id, attempt);
      const logFile = path.join(work, `job.attempt-${attempt}.log`);
      // Every contract event, timestamped, for `refinery logs` and the loss curves of `refinery report`.
      const eventsFile = path.join(work, `job.attempt-${attempt}.events.jsonl`);
      const eventsOut = createWriteStream(eventsFile, { flags: 'a' });
      // A full scratch disk fails the job (it cannot write its checkpoint), never the worker process.
      eventsOut.on('error', (err) => log.warn('cannot write the job events file', { file: eventsFile, error: String(err) }));

      const uploader = new CheckpointUploader({
        store,
        artifactPrefix: input.artifactPrefix,
        checkpointDir: dirs.checkpoints,
        keep: stage.hyper.save_total_limit ?? 3,
        resumedFromDir: restore.restored?.dir,
        retry,
        assertMayCommit: () => lease.assertHeld(),
        epoch: lease.epoch,
        signal: lease.signal,
        records,
        onCommitted: (step) => progress.update({ lastCommittedStep: step }),
      });

      let sawDone = false;
      let doneMetrics: Record<string, Reading | null> = {};
      let lastError: Extract<JobEvent, { event: 'error' }> | undefined;
      let contractViolations = 0;
      const metrics: Record<string, Reading | null> = {};
      // The loss logged at each step since the last checkpoint: a checkpoint carries the loss it was taken at.
      let lossAt: { step: number; loss: Reading | null } = { step: resumeStep ?? 0, loss: null };
      const divergence = new DivergenceWatch(stage.divergence ?? { window: 20 });
      let diverged: Divergence | undefined;
      let launched: LaunchedJob | undefined;
      let checkpointSignal = false;
      let drainedAt: number | undefined;
      let onCheckpointEvent: ((step: number) => void) | undefined;
      if (deps.drain?.signal.aborted) {
        throw ApplicationFailure.retryable(`drained before its job started (${deps.drain.reason ?? 'worker draining'})`, 'WorkerDrained', { host: ctx.host, step: resumeStep ?? 0, lastCommittedStep: resumeStep } satisfies FailureDetails);
      }
      const gpuLease = await deps.gpus.acquire(stage.gpus, deps.drain ? AbortSignal.any([stop.signal, deps.drain.signal]) : stop.signal);
      // Flushed to the bucket while the job runs: a killed worker loses at most the last interval.
      const shippers = [logFile, eventsFile].map((file, i) => startLogShipping({ store, file, key: i === 0 ? logKey : eventsKey, intervalMs: deps.logFlushMs }));
      // Drain (a deploy): the job checkpoints now, that checkpoint is committed, then the job stops.
      // The drain comes from the worker, outside this attempt's async context: log through the attempt's own.
      const attemptLog = Context.current().log;
      const onDrain = () => void drainJob();
      const drainJob = async () => {
        if (drainedAt !== undefined) return;
        drainedAt = progress.progress.step;
        progress.update({ phase: 'draining' });
        const target = drainedAt;
        await records.record('drain-requested', { step: target, reason: deps.drain?.reason ?? 'worker draining', checkpointSignal });
        if (checkpointSignal && (await launched?.signalJob(CHECKPOINT_SIGNAL))) {
          // Stopped as soon as the checkpoint is complete on disk (its event), so that it trains no
          // step the next attempt must redo; the commit of that checkpoint follows the job's end.
          const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), deps.drain?.checkpointTimeoutMs ?? 300_000).unref());
          const got = await Promise.race([new Promise<void>((resolve) => (onCheckpointEvent = (step) => step >= target && resolve())), timeout]);
          if (got === 'timeout') attemptLog.warn('drain: the job did not checkpoint in time; stopping it', { step: progress.progress.step });
        }
        launched?.stop('drained');
      };
      deps.drain?.signal.addEventListener('abort', onDrain, { once: true });
      let result;
      try {
        result = await runJobProcess({
          argv: [...deps.jobCommand(stage.kind), '--config', configPath],
          cwd: deps.jobCwd,
          env: {
            CUDA_VISIBLE_DEVICES: gpuLease.devices.join(','),
            HF_HUB_OFFLINE: '1',
            TOKENIZERS_PARALLELISM: 'false',
            ...(deps.jobEnv?.(stage.kind) ?? {}),
          },
          logFile,
          launchScope: { registry: jobRegistry, labels: { runId: input.runId, stageId: stage.id, attempt, workflowId: info.workflowExecution?.workflowId } },
          ...(deps.jobMemoryLimitBytes ? { memoryLimit: { bytes: deps.jobMemoryLimitBytes, name: `refinery-job-${process.pid}-${attempt}-${Date.now().toString(36)}` } } : {}),
          onLaunched: (job) => {
            launched = job;
            if (deps.drain?.signal.aborted) onDrain();
          },
          stallMs: stage.timeouts.stallMs,
          signal: stop.signal,
          killGraceMs: deps.killGraceMs,
          onContractViolation: (message) => {
            contractViolations++;
            progress.update({ contractViolations });
            void records.record('contract-violation', { message: message.slice(0, 500) });
          },
          onEvent: (event) => {
            eventsOut.write(JSON.stringify({ at: new Date().toISOString(), attempt, ...event }) + '\n');
            const p = progress.progress;
            switch (event.event) {
              case 'started':
                checkpointSignal = event.checkpoint_signal === CHECKPOINT_SIGNAL;
                progress.update({ totalSteps: event.total_steps ?? null, device: event.device });
                break;
              case 'progress': {
                Object.assign(metrics, event.metrics ?? {});
                if (event.loss !== undefined && event.loss !== null) lossAt = { step: event.step, loss: event.loss };
                progress.update({ step: event.step, totalSteps: event.total_steps ?? p.totalSteps, loss: event.loss ?? p.loss, metrics: { ...metrics }, progressAt: new Date().toISOString() });
                const bad = divergence.observe(event.step, event.loss, event.metrics);
                if (bad && drainedAt === undefined) {
                  diverged = bad;
                  log.warn('job diverged: stopping it', { step: event.step, reason: bad.reason });
                  void records.record('diverged', { step: bad.firstBadStep, lastGoodStep: bad.lastGoodStep, reason: bad.reason });
                  launched?.stop('diverged');
                }
                break;
              }
              case 'checkpoint':
                // Taken at the loss logged at its step (or the last one before it).
                uploader.add(event.step, event.path, lossAt.step <= event.step ? lossAt.loss : null, event.save_seconds);
                onCheckpointEvent?.(event.step);
                break;
              case 'metrics':
                Object.assign(metrics, event.metrics);
                progress.update({ metrics: { ...metrics } });
                break;
              case 'done':
                sawDone = true;
                doneMetrics = event.metrics ?? {};
                break;
              case 'error':
                lastError = event;
                break;
            }
          },
        });
      } finally {
        deps.drain?.signal.removeEventListener('abort', onDrain);
        gpuLease.release();
        await uploader.drain();
        await new Promise<void>((resolve) => eventsOut.end(resolve));
        await Promise.all(shippers.map((s) => s.finish()));
      }

      const details: FailureDetails = {
        host: ctx.host,
        step: progress.progress.step,
        lastCommittedStep: uploader.lastCommitted ?? resumeStep,
        batchSize: hyper.batch_size,
        gradientAccumulation: hyper.gradient_accumulation,
        epoch: lease.epoch,
      };
      if (leaseLost) throw ApplicationFailure.retryable(`attempt stopped: ${leaseLost.message}`, 'LeaseLost', details);
      const finished = result.exitCode === 0 && sawDone;
      if (!finished && result.reason === 'drained') {
        const lost = progress.progress.step - (details.lastCommittedStep ?? 0);
        throw ApplicationFailure.retryable(
          `drained at step ${progress.progress.step} (${deps.drain?.reason ?? 'worker draining'}); committed step ${details.lastCommittedStep ?? 'none'}, ${lost} step(s) to redo`,
          'WorkerDrained',
          details,
        );
      }
      if (!finished && result.reason === 'diverged' && diverged) {
        throw ApplicationFailure.retryable(
          `diverged at step ${diverged.firstBadStep}: ${diverged.reason}; the retry resumes from a checkpoint before step ${diverged.lastGoodStep ?? 0}`,
          'JobDiverged',
          { ...details, firstBadStep: diverged.firstBadStep, lastGoodStep: diverged.lastGoodStep },
        );
      }
      throwIfJobFailed({ result, sawDone, lastError, stallMs: stage.timeouts.stallMs, lastStep: progress.progress.step, logUri: store.uri(logKey), logTail: await logTail(logFile), details });
      if (uploader.error) throw ApplicationFailure.retryable(`checkpoint upload failed: ${String(uploader.error)}`, 'CheckpointUploadFailed', details);

      // Gates compare numbers: a non-finite reading is no number (null), as before the contract carried them.
      const finalMetrics: Record<string, number | null> = Object.fromEntries(Object.entries({ ...metrics, ...doneMetrics }).map(([k, v]) => [k, typeof v === 'number' ? v : null]));
      if (stage.kind === 'gguf') Object.assign(finalMetrics, await checkGgufExport(dirs.output));

      progress.update({ phase: 'committing' });
      const artifact = await retry('commit of the output', () =>
        commitDirectory(
          store,
          dirs.output,
          layout.output(input.artifactPrefix),
          { stage: stage.id, kind: stage.kind, cacheKey: input.cacheKey, metrics: finalMetrics, runId: input.runId },
          // Fenced: the marker is written only while this attempt holds the stage lease, never
          // over an output already committed, and the files are this epoch's own.
          { beforeCommit: () => lease.assertHeld(), fence: { epoch: lease.epoch, marker: 'first' }, signal: lease.signal },
        ),
      ).catch((err: unknown) => {
        // Another attempt's output got there first: the retry finds it committed and reuses it.
        if (err instanceof CommitConflict) throw ApplicationFailure.retryable(err.message, 'OutputCommitConflict');
        throw err;
      });
      const p = progress.progress;
      return {
        artifact: { prefix: artifact.prefix, uri: artifact.uri, manifestSha256: artifact.manifestSha256 },
        metrics: finalMetrics,
        resumedFromStep: resumeStep,
        skippedCheckpoints,
        alreadyCommitted: false,
        reusedFrom: null,
        attempt,
        host: ctx.host,
        final: { step: p.step, totalSteps: p.totalSteps, loss: p.loss, lastCommittedStep: p.lastCommittedStep },
        contractViolations,
      };
    } finally {
      ctx.signal.removeEventListener('abort', onAbort);
      lease.stopRenewing();
      await local?.release().catch((err: unknown) => log.warn('could not release the stage inputs in the input cache', { error: String(err) }));
      await rm(work, { recursive: true, force: true });
    }
  }
}
