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
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { activityInfo, cancellationSignal, log } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { AttemptRecorder } from '../storage/attempt-records.js';
import { restoreNewestCheckpoint } from '../storage/checkpoints.js';
import { CommitConflict, commitDirectory, readCommitted, type CommittedArtifact } from '../storage/commit.js';
import { layout } from '../storage/layout.js';
import type { ObjectStore } from '../storage/object-store.js';
import { acquireOrWait, LeaseLostError, localHolder, type StageLease } from '../storage/stage-lease.js';
import type { StageJobInput, StageJobResult } from '../workflows/types.js';
import { CheckpointUploader } from './checkpoint-uploader.js';
import { checkGgufDirectory, GgufCheckError } from './gguf-check.js';
import { JOB_CONTRACT_VERSION, type JobConfig, type JobEvent } from './job-contract.js';
import { attemptOutcomeOf, throwIfJobFailed } from './job-failure.js';
import { runJobProcess } from './job-process.js';
import { JobRegistry } from './job-registry.js';
import { startLogShipping } from './log-shipper.js';
import { fetchStageInputs } from './stage-inputs.js';
import { ProgressHeartbeat } from './stage-progress.js';
import { storageRetry } from './storage-retry.js';

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
}

/** A GGUF export is committed only after llama.cpp has loaded and checked every file. */
async function checkGgufExport(outputDir: string): Promise<Record<string, number>> {
  try {
    const checks = await checkGgufDirectory(outputDir);
    await writeFile(path.join(outputDir, 'gguf_check.json'), JSON.stringify(checks, null, 2));
    return Object.fromEntries(checks.flatMap((c) => [[`gguf_${c.type}_greedy_match`, c.greedyMatch], [`gguf_${c.type}_tokenizer_match`, c.tokenizerMatch]]));
  } catch (err) {
    if (err instanceof GgufCheckError) throw ApplicationFailure.nonRetryable(err.message, 'GgufCheckFailed');
    throw err;
  }
}

export function createTrainingActivities(deps: TrainingDeps) {
  // Every job an attempt launches is recorded in the scratch dir while it runs, for a restarted
  // worker to reap should it outlive this one (activities/job-registry.ts, worker/stale-jobs.ts).
  const jobRegistry = new JobRegistry(deps.scratchDir);
  return {
    async runStageJob(input: StageJobInput): Promise<StageJobResult> {
      const info = activityInfo();
      const signal = cancellationSignal();
      const host = hostname();
      const { store } = deps;
      const { stage } = input;
      const outputPrefix = layout.output(input.artifactPrefix);
      const retry = storageRetry({
        budgetMs: deps.storageRetryMs ?? 10 * 60_000,
        signal,
        onWait: () => progress.update({}),
        warn: (message, error) => log.warn(message, { error: String(error) }),
      });
      const records = AttemptRecorder.forAttempt(store, { storagePrefix: input.storagePrefix, runId: input.runId, stageId: stage.id, attempt: info.attempt }, retry);
      const progress = new ProgressHeartbeat({ phase: 'downloading', step: 0, totalSteps: null, loss: null, lastCommittedStep: null, attempt: info.attempt, host });
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
          attempt: info.attempt,
          host,
        };
      };

      let lease: StageLease | undefined;
      try {
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
        const acquired = await acquireOrWait(store, input.artifactPrefix, localHolder(input.runId, stage.id, info.attempt), {
          ttlMs: deps.leaseTtlMs ?? Math.max(stage.timeouts.heartbeatMs, 10_000),
          signal,
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
        const result = await trainWithLease(input, lease, { progress, records, retry, signal, host });
        await records.record('attempt-ended', { outcome: 'completed', artifact: result.artifact.manifestSha256 });
        return result;
      } catch (err) {
        const ended = attemptOutcomeOf(err);
        await records.record('attempt-ended', ended);
        throw err;
      } finally {
        progress.stop();
        // Free the cache key at once for a retry or a waiting run (a dead worker's lease goes stale instead).
        await lease?.release().catch((err: unknown) => log.warn('could not release the stage lease', { error: String(err) }));
        await records.flush();
        if (records.error) log.warn('attempt records incomplete', { error: String(records.error) });
      }
    },
  };

  async function trainWithLease(
    input: StageJobInput,
    lease: StageLease,
    ctx: { progress: ProgressHeartbeat; records: AttemptRecorder; retry: ReturnType<typeof storageRetry>; signal: AbortSignal; host: string },
  ): Promise<StageJobResult> {
    const info = activityInfo();
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
    const work = path.join(deps.scratchDir, 'stages', input.cacheKey, `${input.runId}.${info.attempt}`);
    const dirs = { output: path.join(work, 'output'), checkpoints: path.join(work, 'checkpoints'), cache: path.join(deps.scratchDir, 'cache') };
    await mkdir(dirs.output, { recursive: true });
    await mkdir(dirs.checkpoints, { recursive: true });
    try {
      progress.update({ phase: 'downloading' });
      const local = await fetchStageInputs(store, input, dirs.cache);

      // Resume: only committed checkpoints that verify count.
      const restore = await restoreNewestCheckpoint(store, input.artifactPrefix, dirs.checkpoints);
      for (const s of restore.skipped) {
        log.warn('skipped a checkpoint that failed verification', { step: s.step, reason: s.reason });
        await records.record('checkpoint-skipped', { step: s.step, reason: s.reason });
      }
      const resumeStep = restore.restored?.step ?? null;
      const skippedCheckpoints = restore.skipped.map((s) => s.step);
      await records.record('attempt-started', { host: ctx.host, pid: process.pid, epoch: lease.epoch, resumedFromStep: resumeStep, skippedCheckpoints });
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
        datasets: local.datasets,
        dataset_format: stage.dataset?.format ?? null,
        finetuning: stage.finetuning,
        hyper: stage.hyper,
        params: stage.params,
      };
      const configPath = path.join(work, `job-config.attempt-${info.attempt}.json`);
      await writeFile(configPath, JSON.stringify(config, null, 2));
      const logKey = layout.jobLog(input.storagePrefix, input.runId, stage.id, info.attempt);
      const eventsKey = layout.jobEvents(input.storagePrefix, input.runId, stage.id, info.attempt);
      const logFile = path.join(work, `job.attempt-${info.attempt}.log`);
      // Every contract event, timestamped, for `refinery logs` and the loss curves of `refinery report`.
      const eventsFile = path.join(work, `job.attempt-${info.attempt}.events.jsonl`);
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
      let doneMetrics: Record<string, number | null> = {};
      let lastError: Extract<JobEvent, { event: 'error' }> | undefined;
      let contractViolations = 0;
      const metrics: Record<string, number | null> = {};
      const gpuLease = await deps.gpus.acquire(stage.gpus, stop.signal);
      // Flushed to the bucket while the job runs: a killed worker loses at most the last interval.
      const shippers = [logFile, eventsFile].map((file, i) => startLogShipping({ store, file, key: i === 0 ? logKey : eventsKey, intervalMs: deps.logFlushMs }));
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
          launchScope: { registry: jobRegistry, labels: { runId: input.runId, stageId: stage.id, attempt: info.attempt, workflowId: info.workflowExecution?.workflowId } },
          stallMs: stage.timeouts.stallMs,
          signal: stop.signal,
          killGraceMs: deps.killGraceMs,
          onContractViolation: (message) => {
            contractViolations++;
            progress.update({ contractViolations });
            void records.record('contract-violation', { message: message.slice(0, 500) });
          },
          onEvent: (event) => {
            eventsOut.write(JSON.stringify({ at: new Date().toISOString(), attempt: info.attempt, ...event }) + '\n');
            const p = progress.progress;
            switch (event.event) {
              case 'started':
                progress.update({ totalSteps: event.total_steps ?? null, device: event.device });
                break;
              case 'progress':
                Object.assign(metrics, event.metrics ?? {});
                progress.update({ step: event.step, totalSteps: event.total_steps ?? p.totalSteps, loss: event.loss ?? p.loss, metrics: { ...metrics }, progressAt: new Date().toISOString() });
                break;
              case 'checkpoint':
                uploader.add(event.step, event.path);
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
        gpuLease.release();
        await uploader.drain();
        await new Promise<void>((resolve) => eventsOut.end(resolve));
        await Promise.all(shippers.map((s) => s.finish()));
      }

      if (leaseLost) throw ApplicationFailure.retryable(`attempt stopped: ${leaseLost.message}`, 'LeaseLost');
      throwIfJobFailed({ result, sawDone, lastError, stallMs: stage.timeouts.stallMs, lastStep: progress.progress.step, logUri: store.uri(logKey) });
      if (uploader.error) throw ApplicationFailure.retryable(`checkpoint upload failed: ${String(uploader.error)}`, 'CheckpointUploadFailed');

      const finalMetrics = { ...metrics, ...doneMetrics };
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
        attempt: info.attempt,
        host: ctx.host,
        final: { step: p.step, totalSteps: p.totalSteps, loss: p.loss, lastCommittedStep: p.lastCommittedStep },
        contractViolations,
      };
    } finally {
      ctx.signal.removeEventListener('abort', onAbort);
      lease.stopRenewing();
      await rm(work, { recursive: true, force: true });
    }
  }
}
