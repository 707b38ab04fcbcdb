/**
 * One run of the fault suite: a pipeline on the private stack with one fault injected at a seeded
 * random point, then every invariant of that run checked (faults/run.ts says which). The kind's
 * own part (target stage setup, the injection, its extra checks) is its module in faults/kinds/.
 */
import { readFile } from 'node:fs/promises';
import { readRun } from '../client/commands/audit.js';
import { summarizeAttempts } from '../storage/attempt-records.js';
import { startRun } from '../client/commands/run.js';
import { runStatus } from '../client/commands/manage.js';
import { listJobLogs, readJobLog } from '../storage/job-logs.js';
import { layout } from '../storage/layout.js';
import type { ObjectStore } from '../storage/object-store.js';
import type { AuditRecord } from '../storage/audit-chain.js';
import type { PipelineStatus } from '../workflows/types.js';
import { writeTestSpec } from '../infra/harness/specs.js';
import type { WorkerProcess } from '../infra/harness/processes.js';
import { sleep, waitFor } from '../infra/harness/wait.js';
import { checkArtifacts, checkOrphans, checkOverlaps, uncommittedCheckpoints } from './checks.js';
import { SAVE_STEPS, type Ctx } from './context.js';
import { jobAttempts, jobProgress, type JobProgress } from './harness.js';
import { FAULTS, type Trial, type TrialPlan } from './kinds/index.js';
import type { FaultRecord, RunReport, TestJobFaultKind } from './types.js';

export type { Ctx } from './context.js';

export async function runTrial(ctx: Ctx, kind: TestJobFaultKind, trial: number): Promise<RunReport> {
  const t0 = Date.now();
  const { rng, opts } = ctx;
  const stageIds = opts.short ? ['sft', 'dpo'] : ['sft', 'dpo', 'merge'];
  const target = rng.pick(['sft', 'dpo']);
  const total = opts.short ? 24 : 30;
  const aimedAt = rng.int(SAVE_STEPS + 1, total - 3);
  const mod = FAULTS[kind];
  const worker = mod.worker ? mod.worker(ctx) : ctx.main;
  const runId = `faults-${opts.seed}-${trial}-${kind}`;
  const prefix = `f${opts.seed}/${trial}-${kind}`;
  const expected = mod.expected ?? 'completed';
  const plan: TrialPlan = { ctx, kind, trial, runId, prefix, target, total, aimedAt, worker };
  const setup = mod.setup?.(plan) ?? {};
  const targetParams: Record<string, unknown> = { step_seconds: 0.1, ...setup.params };
  const targetTimeouts: Record<string, string> = { ...setup.timeouts };

  const stages = stageIds.map((id, i) => {
    const isTarget = id === target;
    const base: Record<string, unknown> = {
      id,
      kind: id,
      hyper: isTarget ? { ...setup.hyper, max_steps: setup.maxSteps ?? total, save_steps: SAVE_STEPS } : { max_steps: 6, save_steps: SAVE_STEPS },
      job_params: isTarget ? targetParams : { step_seconds: 0.05 },
      ...(isTarget && Object.keys(targetTimeouts).length ? { timeouts: targetTimeouts } : {}),
      ...(isTarget && setup.retry ? { retry: setup.retry } : {}),
      ...(isTarget && setup.queue ? { resources: { task_queue: setup.queue } } : {}),
    };
    if (id === 'sft') base.dataset = 'chats';
    if (id === 'dpo') Object.assign(base, { from: stageIds[i - 1], dataset: 'prefs' });
    if (id === 'merge') base.from = stageIds[i - 1];
    return base;
  });
  const { file } = await writeTestSpec({
    name: `faults-${kind}`,
    storage: { prefix },
    datasets: { chats: { path: 'data/sft.jsonl', format: 'chat' }, prefs: { path: 'data/preference.jsonl', format: 'preference' } },
    defaults: {
      resources: { task_queue: worker.queue },
      timeouts: { heartbeat: '3s', stall: '60s' },
      retry: { initial_interval: '1s', maximum_interval: '5s', maximum_attempts: 8 },
    },
    stages,
  });

  const fault: FaultRecord = { kind, stage: target, aimedAt, detail: '', stepAtFault: null, furthestStep: null, attemptAtFault: null, resumedFrom: null, retried: false, stepsLost: null, bound: SAVE_STEPS + 1, notes: [] };
  const problems: string[] = [];
  const { handle } = await startRun(ctx.client, file, { id: runId, by: 'faults' });

  // The furthest step each attempt of the target stage reached, as its workers saw it.
  const furthest = new Map<number, number>();
  let tracking = true;
  const tracker = (async () => {
    while (tracking) {
      for (const w of ctx.workers) {
        for (const p of await jobAttempts(w.scratch, runId, target).catch(() => [])) furthest.set(p.attempt, Math.max(furthest.get(p.attempt) ?? 0, p.step));
      }
      await sleep(100);
    }
  })();

  /** The target stage's job on `w`, once it has reached `step`. */
  const reach = async (w: WorkerProcess, step: number, timeoutMs = 90_000): Promise<JobProgress | undefined> =>
    waitFor(async () => {
      const p = await jobProgress(w.scratch, runId, target);
      return p && p.step >= step ? p : undefined;
    }, timeoutMs, 25);

  const t: Trial = { ...plan, setup, params: targetParams, handle, fault, problems, reach };

  try {
    await mod.inject(t);
  } catch (err) {
    problems.push(`fault not injected: ${(err as Error).message}`);
    fault.detail ||= `not injected (${(err as Error).message})`;
  }

  // Wait for the run to end (Temporal may be coming back up: errors mean "not yet").
  const deadline = ctx.fatal ? 1_000 : opts.short ? 90_000 : 240_000;
  const closed = await waitFor(async () => {
    const d = await handle.describe();
    return d.status.name !== 'RUNNING' ? d.status.name : undefined;
  }, deadline, 250);
  if (!closed) {
    problems.push(`the run did not finish within ${deadline / 1000} s; terminated it`);
    await handle.terminate('fault suite: run did not finish in time').catch(() => undefined);
  }
  tracking = false;
  await tracker;
  const status = await finalStatus(ctx, runId, prefix);
  const state = status?.state ?? closed?.toLowerCase() ?? 'unknown';
  if (state !== expected) problems.push(`run ended ${state}${status?.error ? ` (${status.error.split('\n')[0]})` : ''}, expected ${expected}`);

  // --- checks ------------------------------------------------------------------------------
  const { artifactsChecked, artifactsFailed, auditProblems, outputsPerKind } = await checkArtifacts(ctx, { runId, prefix }, problems, (step) => {
    fault.notes.push(`the damaged checkpoint ${step} is still there, still failing verification`);
    return true;
  });
  let records: AuditRecord[] = [];
  try {
    records = (await readRun({ runId, prefix, store: ctx.store })).records;
  } catch (err) {
    problems.push(`cannot read the audit trail: ${(err as Error).message}`);
  }
  const events = records.map((r) => r.event);
  let duplicates = 0;
  for (const id of stageIds) {
    const completions = events.filter((e) => e.type === 'stage-completed' && e.stage === id).length;
    const outputs = outputsPerKind.get(id) ?? 0;
    if (completions > 1) problems.push(`stage ${id} completed ${completions} times in the audit trail`);
    if (outputs > 1) problems.push(`stage ${id} has ${outputs} committed outputs`);
    duplicates += Math.max(0, completions - 1) + Math.max(0, outputs - 1);
  }

  // Steps lost, from the job's own events, for every fault whether it caused a retry or not: at
  // each hand-over from one attempt that ran the job to the next, the furthest step the earlier one
  // (or any attempt in between) reached minus the checkpoint the next one resumed from; summed.
  const summaries = await summarizeAttempts(ctx.store, { storagePrefix: prefix, runId, stageId: target }).catch((err: unknown) => {
    problems.push(`cannot read the attempt records of ${target}: ${(err as Error).message}`);
    return [];
  });
  // An attempt that failed before its job (a restore into a full disk) trained nothing and lost nothing.
  const neverBegan = new Set(summaries.filter((a) => !a.began && a.outcome !== 'lost').map((a) => a.attempt));
  const attempts = new Map([...(await attemptLogs(ctx.store, prefix, runId, target, events))].filter(([n]) => !neverBegan.has(n)));
  for (const [a, info] of attempts) if (info.maxStep !== null) furthest.set(a, Math.max(furthest.get(a) ?? 0, info.maxStep));
  if (fault.attemptAtFault !== null && fault.stepAtFault !== null) furthest.set(fault.attemptAtFault, Math.max(furthest.get(fault.attemptAtFault) ?? 0, fault.stepAtFault));
  const ran = [...attempts.entries()].filter(([, info]) => info.started).sort((x, y) => x[0] - y[0]);
  if (mod.measuresStepsLost ?? true) {
    let lost = 0;
    const handovers: string[] = [];
    for (let i = 1; i < ran.length; i++) {
      const [b, next] = ran[i]!;
      const a = ran[i - 1]![0];
      const reached = Math.max(0, ...[...furthest.entries()].filter(([n]) => n >= a && n < b).map(([, step]) => step));
      const from = next.resumedFrom ?? 0;
      lost += Math.max(0, reached - from);
      handovers.push(`attempt ${a} got to ${reached}, attempt ${b} resumed from ${next.resumedFrom ?? 'scratch'}`);
      if (fault.attemptAtFault !== null && a >= fault.attemptAtFault && !fault.retried) Object.assign(fault, { retried: true, resumedFrom: next.resumedFrom, furthestStep: reached });
    }
    if (ran.length > 1 && !fault.retried) Object.assign(fault, { retried: true, resumedFrom: ran[1]![1].resumedFrom, furthestStep: furthest.get(ran[0]![0]) ?? null });
    if (state === 'completed' || ran.length > 1) fault.stepsLost = lost;
    if (handovers.length) fault.notes.push(`steps lost ${lost}: ${handovers.join('; ')}`);
    if (fault.stepsLost !== null && fault.stepsLost > fault.bound) problems.push(`${fault.stepsLost} steps lost (${handovers.join('; ')}), more than the bound ${fault.bound}`);
  }

  // Every checkpoint the final attempt announced was committed (retention may have pruned it since:
  // its attempt records say it was committed).
  const last = ran.at(-1);
  const uncommitted = last && state === 'completed' ? await uncommittedCheckpoints(ctx, { prefix, runId, stageId: target, attempt: last[0] }, last[1].checkpoints, problems) : [];

  // Overlap: two attempts of one stage training at once, as the sampler saw their processes.
  const { overlaps, jobSessions } = checkOverlaps(ctx, runId, problems);
  // Failed attempts: `attempt` events (outcome failed) since the history-v2 patch, `attempt-failed` before.
  const failures = events
    .filter((e) => e.stage === target && (e.type === 'attempt-failed' || (e.type === 'attempt' && e.outcome === 'failed')))
    .map((e) => String(e.reason));
  mod.check?.(t, { events, failures, attempts: summaries });

  // Orphans: no process of any job session of this run (the job's children included) may be left
  // once the run has ended; the child a job announced in its pid file must be gone too.
  const extra: number[] = [];
  if (setup.childPidFile) {
    const pid = Number(await readFile(setup.childPidFile, 'utf8').catch(() => ''));
    if (pid > 0) extra.push(pid);
  }
  const orphans = await checkOrphans(ctx, runId, extra, problems);
  // The kind's own leftovers (extra workers, a quarantine): gone before the next trial.
  if (mod.cleanup) await mod.cleanup(t).catch((err: unknown) => problems.push(`cleanup after the trial failed: ${(err as Error).message}`));
  return {
    trial,
    kind,
    runId,
    prefix,
    expected,
    state,
    fault,
    artifactsChecked,
    artifactsFailed,
    auditProblems,
    duplicates,
    orphans,
    overlaps,
    uncommitted,
    jobSessions,
    problems,
    durationMs: Date.now() - t0,
  };
}

interface AttemptLog {
  started: boolean;
  resumedFrom: number | null;
  maxStep: number | null;
  /** Steps of the checkpoint events the job announced. */
  checkpoints: number[];
}

/**
 * Per attempt of a stage, from the job event logs in the bucket (the audit trail as a fallback):
 * whether the job started, the checkpoint it resumed from and the furthest step it reported.
 */
export async function attemptLogs(
  store: ObjectStore,
  prefix: string,
  runId: string,
  stageId: string,
  events: AuditRecord['event'][],
): Promise<Map<number, AttemptLog>> {
  const out = new Map<number, AttemptLog>();
  // Whole events files, or the parts a killed attempt flushed before it died.
  const logs = await listJobLogs(store, layout.run(prefix, runId), { stage: stageId, kind: 'events' }).catch(() => []);
  for (const { key, attempt } of logs) {
    const info: AttemptLog = { started: false, resumedFrom: null, maxStep: null, checkpoints: [] };
    const text = (await readJobLog(store, key))?.toString('utf8') ?? '';
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      try {
        const e = JSON.parse(line) as { event?: string; resumed_from_step?: number | null; step?: number };
        if (e.event === 'started') Object.assign(info, { started: true, resumedFrom: e.resumed_from_step ?? null });
        if (e.event === 'progress' && typeof e.step === 'number') info.maxStep = Math.max(info.maxStep ?? 0, e.step);
        if (e.event === 'checkpoint' && typeof e.step === 'number') info.checkpoints.push(e.step);
      } catch {
        // ignore
      }
    }
    out.set(attempt, info);
  }
  for (const e of events) {
    // An attempt that reused a committed output ran no job, nor did one its host declined (placement).
    if ((e.type === 'attempt-started' || e.type === 'attempt') && e.outcome !== 'reused' && e.outcome !== 'declined' && e.stage === stageId && typeof e.attempt === 'number' && !out.get(e.attempt)?.started) {
      out.set(e.attempt, { started: true, resumedFrom: (e.resumedFromStep as number | null | undefined) ?? null, maxStep: null, checkpoints: [] });
    }
  }
  return out;
}

async function finalStatus(ctx: Ctx, runId: string, prefix: string): Promise<PipelineStatus | undefined> {
  const fromQuery = await waitFor(() => runStatus(ctx.client, runId), 15_000, 250);
  if (fromQuery && fromQuery.state !== 'running') return fromQuery;
  return (await ctx.store.getJson<PipelineStatus>(`${layout.run(prefix, runId)}/status.json`).catch(() => undefined)) ?? fromQuery;
}
