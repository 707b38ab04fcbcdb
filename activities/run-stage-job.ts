/**
 * The training activity: runs one stage's job on this worker and commits what it produces.
 *
 *   committed output already there? → return it, run nothing (invariant 4)
 *   download inputs (verified) → restore the newest committed checkpoint that verifies
 *   → launch the job → heartbeat its progress → commit each checkpoint while it trains
 *   → commit the output → return it.
 *
 * Failures are classified by the job's exit code (jobs/CONTRACT.md): config / data / unsupported
 * are non-retryable; crashes, stalls and lost workers are retried by Temporal per the stage policy.
 */
import { hostname } from 'node:os';
import { createWriteStream } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { activityInfo, cancellationSignal, getClient, heartbeat, log } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { commitDirectory, downloadCommitted, readCommitted } from '../storage/commit.js';
import { commitCheckpoint, pruneCheckpoints, restoreNewestCheckpoint } from '../storage/checkpoints.js';
import { layout } from '../storage/layout.js';
import type { ObjectStore } from '../storage/object-store.js';
import type { ArtifactRef, StageJobInput, StageJobResult, StageProgress } from '../workflows/types.js';
import { classifyExit, JOB_CONTRACT_VERSION, type JobConfig, type JobEvent } from './job-contract.js';
import { runJobProcess } from './job-process.js';
import { checkGgufDirectory, GgufCheckError } from './gguf-check.js';
import type { GpuAllocator } from '../worker/gpu-allocator.js';
import { llamaCppToolEnv } from '../worker/config.js';
import { stageAttemptFailedSignal, stageProgressSignal } from '../workflows/messages.js';

export interface TrainingDeps {
  store: ObjectStore;
  /** This worker's scratch space; each worker process needs its own. */
  scratchDir: string;
  /** argv that runs the job for a stage kind (Python jobs by default; tests plug in their own). */
  jobCommand: (kind: StageJobInput['stage']['kind']) => [string, ...string[]];
  jobCwd: string;
  gpus: GpuAllocator;
  /** Grace between TERM and KILL when stopping a job. */
  killGraceMs?: number;
  /** Minimum time between progress signals to the run workflow. Default 2 s. */
  progressSignalMs?: number;
  /** How long checkpoint and output commits retry while object storage is unreachable. Default 10 min. */
  storageRetryMs?: number;
}

/** Errors worth retrying: the store is unreachable, restarting or overloaded (not a local file problem). */
export function isTransientStorageError(err: unknown): boolean {
  const e = err as { code?: unknown; statusCode?: unknown; syscall?: unknown; message?: unknown } | undefined;
  const code = typeof e?.code === 'string' ? e.code : '';
  if (['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'UND_ERR_SOCKET'].includes(code)) return true;
  if (['SlowDown', 'ServiceUnavailable', 'InternalError', 'RequestTimeout', 'XMinioServerNotInitialized'].includes(code)) return true;
  if (typeof e?.statusCode === 'number' && e.statusCode >= 500) return true;
  return typeof e?.message === 'string' && /socket hang up|ECONNRESET|ECONNREFUSED|server not initialized/i.test(e.message);
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

function signalProgress(runId: string, stageId: string, progress: StageProgress): void {
  try {
    getClient().workflow.getHandle(runId).signal(stageProgressSignal, { stageId, progress }).catch(() => undefined);
  } catch {
    // No client in this context (unit tests): progress still goes out through heartbeats.
  }
}

export function createTrainingActivities(deps: TrainingDeps) {
  return {
    /** One attempt of a stage; a failure is also reported to the run (for its audit trail). */
    async runStageJob(input: StageJobInput): Promise<StageJobResult> {
      const cleanup: (() => void)[] = [];
      try {
        return await runAttempt(input, cleanup);
      } catch (err) {
        if (!(err instanceof CancelledFailure)) {
          const { attempt } = activityInfo();
          const reason = err instanceof Error ? err.message : String(err);
          try {
            await getClient().workflow.getHandle(input.runId).signal(stageAttemptFailedSignal, { stageId: input.stage.id, attempt, host: hostname(), reason });
          } catch {
            // best effort: the next attempt reports this one as lost
          }
        }
        throw err;
      } finally {
        for (const done of cleanup) done();
      }
    },
  };

  async function runAttempt(input: StageJobInput, cleanup: (() => void)[]): Promise<StageJobResult> {
    const info = activityInfo();
    const signal = cancellationSignal();
    const { store } = deps;
    const { stage } = input;
    const outputPrefix = layout.output(input.artifactPrefix);
    const host = hostname();

    const already = await readCommitted(store, outputPrefix);
    if (already) {
      log.info('output already committed; not running the job again', { stage: stage.id, uri: already.uri });
      return {
        artifact: { prefix: already.prefix, uri: already.uri, manifestSha256: already.manifestSha256 },
        metrics: (already.manifest.meta?.metrics as Record<string, number>) ?? {},
        resumedFromStep: null,
        skippedCheckpoints: [],
        alreadyCommitted: true,
        attempt: info.attempt,
        host,
      };
    }

    const work = path.join(deps.scratchDir, 'stages', input.cacheKey);
    const dirs = { output: path.join(work, 'output'), checkpoints: path.join(work, 'checkpoints'), cache: path.join(deps.scratchDir, 'cache') };
    await rm(dirs.output, { recursive: true, force: true });
    await mkdir(dirs.output, { recursive: true });
    await mkdir(dirs.checkpoints, { recursive: true });

    let progress: StageProgress = { phase: 'downloading', step: 0, totalSteps: null, loss: null, lastCommittedStep: null, attempt: info.attempt, host };
    // Heartbeats carry progress to Temporal (and liveness); a throttled signal carries it to the
    // run's `status` query. Signals are best effort: a lost one only delays the display.
    // The first signal waits for the checkpoint restore, so that it can say what the attempt resumed from.
    let lastSignal = Date.now();
    const beat = (patch: Partial<StageProgress>, urgent = false) => {
      progress = { ...progress, ...patch };
      heartbeat(progress);
      const now = Date.now();
      if (urgent || now - lastSignal >= (deps.progressSignalMs ?? 2000)) {
        lastSignal = now;
        signalProgress(input.runId, stage.id, progress);
      }
    };
    beat({});
    // Liveness on a timer as well as on job events: a quiet phase (large downloads, a slow job setup,
    // the kill grace after a cancel, uploads after the job ended) must not read as a dead worker.
    // A job that makes no progress is the stall timeout's business, not the heartbeat timeout's.
    if (info.heartbeatTimeoutMs) {
      const ticker = setInterval(() => heartbeat(progress), Math.min(Math.max(info.heartbeatTimeoutMs / 3, 200), 10_000));
      cleanup.push(() => clearInterval(ticker));
    }

    // Inputs: model stacks and datasets, cached per worker by manifest hash and verified.
    const fetchArtifact = async (ref: ArtifactRef): Promise<string> => {
      const artifact = await readCommitted(store, ref.prefix);
      if (!artifact || artifact.manifestSha256 !== ref.manifestSha256) {
        throw ApplicationFailure.nonRetryable(`input ${ref.uri} is missing or changed since it was committed`, 'InputMissing');
      }
      const dir = path.join(dirs.cache, ref.manifestSha256);
      await downloadCommitted(store, artifact, dir);
      return dir;
    };
    const inputs: Record<string, string> = {};
    for (const [name, ref] of Object.entries(input.inputs)) if (ref) inputs[name] = await fetchArtifact(ref);
    const datasetFile = async (ref: ArtifactRef | undefined) => (ref ? path.join(await fetchArtifact(ref), 'data.jsonl') : null);
    const datasets = { train: await datasetFile(input.datasets.train), eval: await datasetFile(input.datasets.eval) };

    // Resume: only committed checkpoints count; anything else local is stale.
    for (const entry of await readdir(dirs.checkpoints)) await rm(path.join(dirs.checkpoints, entry), { recursive: true, force: true });
    const restore = await restoreNewestCheckpoint(store, input.artifactPrefix, dirs.checkpoints);
    for (const s of restore.skipped) log.warn('skipped a checkpoint that failed verification', { step: s.step, reason: s.reason });
    const resumeStep = restore.restored?.step ?? null;
    beat({ phase: 'training', step: resumeStep ?? 0, lastCommittedStep: resumeStep, resumedFromStep: resumeStep }, true);

    const config: JobConfig = {
      contract: JOB_CONTRACT_VERSION,
      kind: stage.kind,
      run_id: input.runId,
      stage_id: stage.id,
      output_dir: dirs.output,
      checkpoint_dir: dirs.checkpoints,
      resume_from: restore.restored?.dir ?? null,
      inputs,
      datasets,
      dataset_format: stage.dataset?.format ?? null,
      finetuning: stage.finetuning,
      hyper: stage.hyper,
      params: stage.params,
    };
    const configPath = path.join(work, `job-config.attempt-${info.attempt}.json`);
    await writeFile(configPath, JSON.stringify(config, null, 2));
    const logFile = path.join(work, `job.attempt-${info.attempt}.log`);
    // Every contract event, timestamped, for `refinery logs` and the loss curves of `refinery report`.
    const eventsFile = path.join(work, `job.attempt-${info.attempt}.events.jsonl`);
    const eventsOut = createWriteStream(eventsFile, { flags: 'a' });
    // A full scratch disk fails the job (it cannot write its checkpoint), never the worker process.
    eventsOut.on('error', (err) => log.warn('cannot write the job events file', { file: eventsFile, error: String(err) }));

    /**
     * Retries a storage operation that failed with a transient error (connection refused or reset,
     * timeout, 5xx) for up to `storageRetryMs`, heartbeating meanwhile so the attempt stays alive.
     */
    const retryStorage = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
      const deadline = Date.now() + (deps.storageRetryMs ?? 10 * 60_000);
      for (let delay = 500; ; delay = Math.min(delay * 2, 8_000)) {
        try {
          return await fn();
        } catch (err) {
          if (signal.aborted || !isTransientStorageError(err) || Date.now() + delay > deadline) throw err;
          log.warn(`${what} failed; retrying`, { error: String(err), retryInMs: delay });
          for (let waited = 0; waited < delay && !signal.aborted; waited += 1000) {
            beat({});
            await new Promise((resolve) => setTimeout(resolve, Math.min(1000, delay - waited)));
          }
        }
      }
    };

    // Checkpoints are committed one at a time, in order, while the job keeps training.
    let uploads: Promise<void> = Promise.resolve();
    let uploadError: unknown;
    const keep = stage.hyper.save_total_limit ?? 3;
    const onCheckpoint = (step: number, dir: string) => {
      uploads = uploads.then(async () => {
        if (uploadError) return;
        try {
          // Object storage may be away for a while (restart, network): keep trying, the job trains on.
          await retryStorage(`commit of checkpoint ${step}`, () => commitCheckpoint(store, input.artifactPrefix, step, dir));
          beat({ lastCommittedStep: step }, true);
          await retryStorage('checkpoint retention', () => pruneCheckpoints(store, input.artifactPrefix, keep));
          // Locally only the newest committed checkpoint is worth keeping (and the one the job
          // resumed from, which it may still read).
          for (const entry of await readdir(dirs.checkpoints)) {
            const m = /^checkpoint-(\d+)$/.exec(entry);
            const dir = path.join(dirs.checkpoints, entry);
            if (m && Number(m[1]) < step && dir !== restore.restored?.dir) await rm(dir, { recursive: true, force: true });
          }
        } catch (err) {
          uploadError = err;
        }
      });
    };

    let sawDone = false;
    let doneMetrics: Record<string, number | null> = {};
    let lastError: Extract<JobEvent, { event: 'error' }> | undefined;
    const metrics: Record<string, number | null> = {};
    const gpuLease = await deps.gpus.acquire(stage.gpus, signal);
    let result;
    try {
      result = await runJobProcess({
        argv: [...deps.jobCommand(stage.kind), '--config', configPath],
        cwd: deps.jobCwd,
        env: {
          CUDA_VISIBLE_DEVICES: gpuLease.devices.join(','),
          HF_HUB_OFFLINE: '1',
          TOKENIZERS_PARALLELISM: 'false',
          ...(stage.kind === 'gguf' ? llamaCppToolEnv() : {}),
        },
        logFile,
        stallMs: stage.timeouts.stallMs,
        signal,
        killGraceMs: deps.killGraceMs,
        onEvent: (event) => {
          eventsOut.write(JSON.stringify({ at: new Date().toISOString(), attempt: info.attempt, ...event }) + '\n');
          switch (event.event) {
            case 'started':
              beat({ totalSteps: event.total_steps ?? null, device: event.device });
              break;
            case 'progress':
              Object.assign(metrics, event.metrics ?? {});
              beat({ step: event.step, totalSteps: event.total_steps ?? progress.totalSteps, loss: event.loss ?? progress.loss, metrics: { ...metrics } });
              break;
            case 'checkpoint':
              onCheckpoint(event.step, event.path);
              break;
            case 'metrics':
              Object.assign(metrics, event.metrics);
              beat({ metrics: { ...metrics } });
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
    }
    await uploads;
    await new Promise<void>((resolve) => eventsOut.end(resolve));
    for (const [key, file] of [
      [layout.jobLog(input.storagePrefix, input.runId, stage.id, info.attempt), logFile],
      [layout.jobEvents(input.storagePrefix, input.runId, stage.id, info.attempt), eventsFile],
    ] as const) {
      await store.putFile(key, file).catch((err: unknown) => log.warn('could not upload a job log', { key, error: String(err) }));
    }

    if (result.reason === 'cancelled') throw new CancelledFailure('stage cancelled: job process tree terminated');
    if (result.reason === 'stalled') {
      throw ApplicationFailure.retryable(`job stalled: no progress event for ${stage.timeouts.stallMs} ms; killed it (last step ${progress.step})`, 'JobStalled');
    }
    const exitClass = classifyExit(result.exitCode, sawDone);
    if (exitClass !== 'ok') {
      const detail = lastError
        ? [lastError.file && `${lastError.file}${lastError.line ? `:${lastError.line}` : ''}`, lastError.field, lastError.message].filter(Boolean).join(': ')
        : `exit code ${result.exitCode ?? 'none'}${result.exitSignal ? ` (${result.exitSignal})` : ''}; see ${layout.jobLog(input.storagePrefix, input.runId, stage.id, info.attempt)}`;
      if (exitClass === 'crash') throw ApplicationFailure.retryable(`job failed: ${detail}`, 'JobCrashed');
      throw ApplicationFailure.nonRetryable(`${exitClass} error: ${detail}`, exitClass === 'config' ? 'ConfigError' : exitClass === 'data' ? 'DataError' : 'Unsupported');
    }
    if (uploadError) throw ApplicationFailure.retryable(`checkpoint upload failed: ${String(uploadError)}`, 'CheckpointUploadFailed');

    const finalMetrics = { ...metrics, ...doneMetrics };
    if (stage.kind === 'gguf') Object.assign(finalMetrics, await checkGgufExport(dirs.output));

    beat({ phase: 'committing' });
    const artifact = await retryStorage('commit of the output', () =>
      commitDirectory(store, dirs.output, outputPrefix, {
        stage: stage.id,
        kind: stage.kind,
        cacheKey: input.cacheKey,
        metrics: finalMetrics,
        runId: input.runId,
      }),
    );
    await rm(work, { recursive: true, force: true });
    return {
      artifact: { prefix: artifact.prefix, uri: artifact.uri, manifestSha256: artifact.manifestSha256 },
      metrics: finalMetrics,
      resumedFromStep: resumeStep,
      skippedCheckpoints: restore.skipped.map((s) => s.step),
      alreadyCommitted: false,
      attempt: info.attempt,
      host,
    };
  }
}
