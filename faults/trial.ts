/**
 * One run of the fault suite: a pipeline on the private stack with one fault injected at a seeded
 * random point, then every invariant of that run checked (faults/run.ts says which).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { readRun, verifyRun } from '../client/commands/audit.js';
import { startRun } from '../client/commands/run.js';
import { runStatus } from '../client/commands/manage.js';
import { listJobLogs, readJobLog } from '../storage/job-logs.js';
import { verifyCommitted } from '../storage/commit.js';
import { layout } from '../storage/layout.js';
import type { ObjectStore } from '../storage/object-store.js';
import type { AuditRecord } from '../storage/audit-chain.js';
import type { PipelineStatus } from '../workflows/types.js';
import { writeTestSpec } from '../test/helpers/specs.js';
import {
  aliveAll,
  jobAttempts,
  jobPids,
  jobProgress,
  killJobGroup,
  killPids,
  objectOnDisk,
  objectsOnDisk,
  PrivateStack,
  Rng,
  sleep,
  waitFor,
  WorkerProcess,
  type ControlWorker,
  type JobProgress,
  type SmallFs,
} from './harness.js';
import type { FaultKind, FaultRecord, RunReport, SuiteOptions } from './types.js';

const SAVE_STEPS = 5;

/** What every trial of one suite shares. */
export interface Ctx {
  opts: Required<Pick<SuiteOptions, 'short' | 'minioOutageMs'>> & { seed: number };
  rng: Rng;
  log: (line: string) => void;
  stack: PrivateStack;
  store: ObjectStore;
  client: Client;
  control: ControlWorker;
  controlFailed?: string;
  python: string;
  workDir: string;
  main: WorkerProcess;
  small?: { fs: SmallFs; worker: WorkerProcess };
  workerSeq: number;
  /** Every worker ever started (for the orphan scan over their scratch dirs). */
  workers: WorkerProcess[];
  /** Checkpoints damaged on purpose: `${artifactPrefix}@${step}`. */
  corrupted: Set<string>;
  /** Set when the stack itself could not be brought back: the suite stops. */
  fatal?: string;
}

export async function runTrial(ctx: Ctx, kind: FaultKind, trial: number): Promise<RunReport> {
  const t0 = Date.now();
  const { rng, opts } = ctx;
  const stageIds = opts.short ? ['sft', 'dpo'] : ['sft', 'dpo', 'merge'];
  const target = rng.pick(['sft', 'dpo']);
  const total = opts.short ? 24 : 30;
  const aimedAt = rng.int(SAVE_STEPS + 1, total - 3);
  const worker = kind === 'scratch-full' ? ctx.small!.worker : ctx.main;
  const runId = `faults-${opts.seed}-${trial}-${kind}`;
  const prefix = `f${opts.seed}/${trial}-${kind}`;
  const expected = kind === 'cancel' ? 'cancelled' : 'completed';

  const targetParams: Record<string, unknown> = { step_seconds: 0.1 };
  const targetTimeouts: Record<string, string> = {};
  let childPidFile: string | undefined;
  if (kind === 'minio-outage') targetParams.checkpoint_bytes = (opts.short ? 16 : 24) << 20;
  if (kind === 'scratch-full') targetParams.checkpoint_bytes = 2 << 20;
  if (kind === 'corrupt-checkpoint') targetParams.checkpoint_bytes = rng.pick([0, 64 << 10]);
  if (kind === 'job-hang') {
    targetParams.hang_at_step = aimedAt;
    targetTimeouts.stall = '2s';
  }
  if (kind === 'cancel') {
    childPidFile = path.join(ctx.workDir, `${runId}.child.pid`);
    targetParams.child_pid_file = childPidFile;
    // Every other trial of the long form, SIGTERM is ignored: the worker must escalate to SIGKILL.
    targetParams.ignore_sigterm = !opts.short && trial % 2 === 1;
  }
  // Survive the server restart without a heartbeat timeout (a timeout would only cost a retry).
  if (kind === 'temporal-restart') targetTimeouts.heartbeat = '20s';

  const stages = stageIds.map((id, i) => {
    const isTarget = id === target;
    const base: Record<string, unknown> = {
      id,
      kind: id,
      // A cancelled job must still be training when the kill grace ends (SIGTERM ignored: SIGKILL).
      hyper: { max_steps: isTarget ? (kind === 'cancel' ? 1000 : total) : 6, save_steps: SAVE_STEPS },
      params: isTarget ? targetParams : { step_seconds: 0.05 },
      ...(isTarget && Object.keys(targetTimeouts).length ? { timeouts: targetTimeouts } : {}),
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

  const inject = async (): Promise<void> => {
    switch (kind) {
      case 'worker-kill': {
        const p = await reach(worker, aimedAt);
        if (!p) throw new Error(`the job never reached step ${aimedAt}`);
        const pids = await jobPids(worker.scratch);
        const now = (await jobProgress(worker.scratch, runId, target)) ?? p;
        await worker.kill9();
        Object.assign(fault, { stepAtFault: now.step, attemptAtFault: now.attempt, detail: `kill -9 worker ${worker.name} at step ${now.step} (attempt ${now.attempt})` });
        // The job dies with its worker (parent-death signal), before anyone takes over.
        const left = await waitFor(() => aliveAll(pids).length === 0, 10_000, 50);
        if (!left) problems.push(`the killed worker's job (pids ${aliveAll(pids).join(', ')}) outlived it`);
        const takeover = await WorkerProcess.spawn({
          name: `worker-${++ctx.workerSeq}`,
          queue: worker.queue,
          scratch: path.join(ctx.workDir, `scratch-${ctx.workerSeq}`),
          logDir: path.join(ctx.stack.info.stateDir, 'logs'),
          env: ctx.stack.env(),
          python: ctx.python,
        });
        ctx.workers.push(takeover);
        ctx.main = takeover;
        const resumed = await reach(takeover, 0, 60_000);
        fault.notes.push(resumed ? `${takeover.name} took over at attempt ${resumed.attempt}` : `${takeover.name} did not pick the stage up within 60 s`);
        return;
      }
      case 'temporal-restart': {
        const p = await reach(worker, aimedAt);
        if (!p) throw new Error(`the job never reached step ${aimedAt}`);
        await ctx.stack.killTemporal();
        const down = rng.int(0, opts.short ? 1500 : 5000);
        Object.assign(fault, { stepAtFault: p.step, attemptAtFault: p.attempt });
        await sleep(down);
        const r0 = Date.now();
        await ctx.stack.restartTemporal().catch((err: unknown) => {
          ctx.fatal = `could not restart Temporal: ${(err as Error).message}`;
          throw err;
        });
        fault.detail = `kill -9 Temporal at step ${p.step}; restarted after ${down} ms (+${Date.now() - r0} ms to come up) on the same db file and port`;
        return;
      }
      case 'minio-outage': {
        // Strike right after the worker got a checkpoint event: its upload is (most likely) under way.
        const p = await waitFor(async () => {
          const q = await jobProgress(worker.scratch, runId, target);
          return q && q.checkpoints.some((s) => s >= aimedAt) ? q : undefined;
        }, 90_000, 10);
        if (!p) throw new Error(`the job never checkpointed at or after step ${aimedAt}`);
        await sleep(rng.int(0, 60));
        await ctx.stack.killMinio();
        const now = (await jobProgress(worker.scratch, runId, target)) ?? p;
        const ckpt = p.checkpoints.filter((s) => s >= aimedAt)[0]!;
        const ckptPrefix = layout.checkpoint(`${prefix}/artifacts/${target}-${p.cacheKey}`, ckpt);
        const marker = objectOnDisk(ctx.stack.minioDataDir(), ctx.stack.info.bucket, `${ckptPrefix}/_COMMITTED`);
        const objects = await objectsOnDisk(ctx.stack.minioDataDir(), ctx.stack.info.bucket, ckptPrefix);
        Object.assign(fault, { stepAtFault: now.step, attemptAtFault: now.attempt });
        fault.notes.push(marker ? `checkpoint ${ckpt} was already committed when MinIO died` : `checkpoint ${ckpt} cut mid-upload (${objects} object(s) on disk, no commit marker)`);
        await sleep(opts.minioOutageMs);
        await ctx.stack.restartMinio().catch((err: unknown) => {
          ctx.fatal = `could not restart MinIO: ${(err as Error).message}`;
          throw err;
        });
        fault.detail = `kill -9 MinIO at step ${now.step} during the upload of checkpoint ${ckpt}; down ${opts.minioOutageMs / 1000} s`;
        return;
      }
      case 'corrupt-checkpoint': {
        fault.bound = 2 * SAVE_STEPS + 1; // the damaged checkpoint's interval is lost too
        // Right after a checkpoint at or past the aim is committed: damage it, then kill the job
        // before the next one is committed, so that the retry has to skip it.
        const base = await reach(worker, 1);
        if (!base) throw new Error('the job never started');
        const artifact = `${prefix}/artifacts/${target}-${base.cacheKey}`;
        const steps = await waitFor(async () => {
          const s = await committedSteps(ctx.store, artifact);
          return s.length >= 2 && s[0]! >= aimedAt ? s : undefined;
        }, 90_000, 20);
        if (!steps) throw new Error(`no two committed checkpoints by step ${aimedAt}`);
        const newest = steps[0]!;
        const files = (await ctx.store.list(`${layout.checkpoint(artifact, newest)}/files/`)).map((o) => o.key);
        const how = rng.pick(['flip a bit in', 'delete', 'flip a bit in the manifest of'] as const);
        const victim = how === 'flip a bit in the manifest of' ? `${layout.checkpoint(artifact, newest)}/_manifest.json` : rng.pick(files);
        if (how === 'delete') await ctx.store.remove([victim]);
        else {
          const bytes = (await ctx.store.getBytes(victim))!;
          const at = rng.int(0, bytes.length - 1);
          bytes[at] = bytes[at]! ^ (1 << rng.int(0, 7));
          await ctx.store.putBytes(victim, bytes);
        }
        ctx.corrupted.add(`${artifact}@${newest}`);
        const now = (await jobProgress(worker.scratch, runId, target))!;
        for (const pid of await jobPids(worker.scratch)) killJobGroup(pid);
        Object.assign(fault, { stepAtFault: now.step, attemptAtFault: now.attempt });
        fault.detail = `${how} ${victim.slice(artifact.length + 1)} of committed checkpoint ${newest}, then kill -9 the job at step ${now.step}`;
        fault.notes.push(`expect resume from ${steps[1]}`);
        (fault as FaultRecord & { expectResume?: number }).expectResume = steps[1]!;
        return;
      }
      case 'scratch-full': {
        const small = ctx.small!;
        const p = await reach(worker, aimedAt);
        if (!p) throw new Error(`the job never reached step ${aimedAt}`);
        const pids = await jobPids(worker.scratch);
        let filled = await small.fs.fill();
        Object.assign(fault, { stepAtFault: p.step, attemptAtFault: p.attempt });
        // Keep it full (the worker frees space when it prunes a committed checkpoint) until the
        // attempt has failed: the job exited, or the worker gave up.
        const failed = await waitFor(async () => {
          filled += await small.fs.fill();
          return aliveAll(pids).length === 0 || !worker.alive;
        }, 30_000, 20);
        await small.fs.unfill();
        // The job got as far as its next checkpoint, which it could not write.
        fault.furthestStep = Math.min(total, Math.ceil((p.step + 1) / SAVE_STEPS) * SAVE_STEPS);
        fault.detail = `filled the scratch ${small.fs.how} (${(filled / 2 ** 20).toFixed(1)} MB) at step ${p.step}`;
        if (!failed) problems.push('the job kept running for 30 s on a full scratch disk');
        if (!worker.alive) {
          const exit = await worker.exited;
          problems.push(`the worker process died on a full scratch disk (${exit.signal ?? `exit ${exit.code}`}): ${lastErrorLine(worker.logTail(40))}`);
          // Serve on, so that the run can still finish (its attempt is retried once the heartbeat times out).
          worker.killedByUs = true;
          small.worker = await WorkerProcess.spawn({
            name: `worker-small-${++ctx.workerSeq}`,
            queue: worker.queue,
            scratch: small.fs.dir,
            logDir: path.join(ctx.stack.info.stateDir, 'logs'),
            env: ctx.stack.env(),
            python: ctx.python,
          });
          ctx.workers.push(small.worker);
        }
        return;
      }
      case 'job-hang': {
        const p = await reach(worker, aimedAt - 1);
        if (!p) throw new Error(`the job never reached step ${aimedAt - 1}`);
        const pids = await jobPids(worker.scratch);
        Object.assign(fault, { stepAtFault: p.step, attemptAtFault: p.attempt });
        const killed = await waitFor(() => aliveAll(pids).length === 0, 30_000, 50);
        fault.detail = `the job hung at step ${aimedAt}${killed ? '' : ' and was NOT killed within 30 s'}`;
        if (!killed) problems.push('a hung job was not killed within 30 s (stall timeout 2 s)');
        return;
      }
      case 'cancel': {
        const p = await reach(worker, aimedAt);
        if (!p) throw new Error(`the job never reached step ${aimedAt}`);
        Object.assign(fault, { stepAtFault: p.step, attemptAtFault: p.attempt });
        await handle.cancel();
        fault.detail = `cancel at step ${p.step}${targetParams.ignore_sigterm ? ' (the job ignores SIGTERM)' : ''}`;
        fault.bound = 0;
        return;
      }
    }
  };

  try {
    await inject();
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
  const verify = await verifyRun({ runId, prefix, store: ctx.store, env: ctx.stack.env() }).catch((err: unknown) => ({
    ok: false,
    problems: [`audit verify failed to run: ${(err as Error).message}`],
    checked: { artifacts: 0, inputs: 0 },
  }));
  const auditProblems = verify.problems;
  problems.push(...auditProblems.map((p) => `audit verify: ${p}`));
  let artifactsChecked = verify.checked.artifacts + verify.checked.inputs;
  const artifactsFailed = verify.problems.filter((p) => /artifact|dataset|base model/.test(p));

  const objects = await ctx.store.list(`${prefix}/artifacts/`);
  const outputsPerKind = new Map<string, number>();
  for (const { key } of objects) {
    const ckpt = /^(.*)\/checkpoints\/step-(\d+)\/_COMMITTED$/.exec(key);
    if (ckpt) {
      artifactsChecked++;
      const bad = await verifyCommitted(ctx.store, key.replace(/\/_COMMITTED$/, ''));
      if (bad.length > 0) {
        if (ctx.corrupted.has(`${ckpt[1]}@${Number(ckpt[2])}`)) fault.notes.push(`the damaged checkpoint ${Number(ckpt[2])} is still there, still failing verification`);
        else {
          artifactsFailed.push(...bad);
          problems.push(`committed checkpoint does not verify: ${bad[0]}`);
        }
      }
    }
    const out = /\/artifacts\/([a-z]+)-[^/]+\/output\/_COMMITTED$/.exec(key);
    if (out) outputsPerKind.set(out[1]!, (outputsPerKind.get(out[1]!) ?? 0) + 1);
  }
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

  // Steps lost: the furthest step reached before the next attempt (at least the step at fault
  // time) minus the checkpoint that attempt resumed from.
  if (fault.attemptAtFault !== null && fault.stepAtFault !== null && kind !== 'cancel') {
    const attempts = await attemptLogs(ctx.store, prefix, runId, target, events);
    for (const [a, info] of attempts) if (info.maxStep !== null) furthest.set(a, Math.max(furthest.get(a) ?? 0, info.maxStep));
    const next = [...attempts.entries()].filter(([a, info]) => a > fault.attemptAtFault! && info.started).sort((x, y) => x[0] - y[0])[0];
    if (next) {
      fault.retried = true;
      fault.resumedFrom = next[1].resumedFrom;
      const before = [...furthest.entries()].filter(([a]) => a >= fault.attemptAtFault! && a < next[0]).map(([, step]) => step);
      // An attempt got at least as far as the checkpoint the next one resumed from.
      fault.furthestStep = Math.max(fault.stepAtFault, fault.furthestStep ?? 0, next[1].resumedFrom ?? 0, ...before);
      fault.stepsLost = fault.furthestStep - (next[1].resumedFrom ?? 0);
    } else if (state === 'completed') {
      fault.stepsLost = 0;
    }
    if (fault.stepsLost !== null && fault.stepsLost > fault.bound) {
      problems.push(
        `${fault.stepsLost} steps lost (fault at step ${fault.stepAtFault}, the attempt got to ${fault.furthestStep}, the next resumed from ${fault.resumedFrom ?? 'scratch'}), more than the bound ${fault.bound}`,
      );
    }
  }
  const expectResume = (fault as FaultRecord & { expectResume?: number }).expectResume;
  if (kind === 'corrupt-checkpoint' && expectResume !== undefined && fault.retried && fault.resumedFrom !== expectResume) {
    problems.push(`resumed from ${fault.resumedFrom ?? 'scratch'}, expected ${expectResume} (the newest checkpoint that verifies)`);
  }
  // Failed attempts: `attempt` events (outcome failed) since the history-v2 patch, `attempt-failed` before.
  const failures = events
    .filter((e) => e.stage === target && (e.type === 'attempt-failed' || (e.type === 'attempt' && e.outcome === 'failed')))
    .map((e) => String(e.reason));
  if (kind === 'scratch-full') {
    const clear = failures.find((r) => /No space left|ENOSPC/i.test(r));
    if (clear) fault.notes.push(`failure recorded: ${clear.split('\n')[0]!.slice(0, 160)}`);
    else problems.push(`no attempt failure names the full disk (ENOSPC) in the audit trail${failures.length ? `; recorded: ${failures.map((f) => f.slice(0, 120)).join(' | ')}` : ''}`);
    if (!fault.retried) problems.push('the stage was not retried after the disk filled');
  }
  if (kind === 'job-hang') {
    if (!failures.some((r) => /stalled/.test(r))) problems.push(`no attempt failure says "stalled" in the audit trail${failures.length ? `; recorded: ${failures.join(' | ')}` : ''}`);
    if (!fault.retried) problems.push('the hung job was not retried');
  }
  if (kind === 'worker-kill' && !fault.retried) problems.push('the stage was not retried on another worker');
  if (kind === 'cancel') {
    if (!events.some((e) => e.type === 'stage-cancelled' && e.stage === target)) problems.push(`the audit trail has no stage-cancelled event for ${target}`);
    const finished = events.find((e) => e.type === 'run-finished');
    if (finished?.state !== 'cancelled') problems.push(`the audit trail's run-finished says ${String(finished?.state)}, expected cancelled`);
  }

  // Orphans: no job process of any worker may be left once the run has ended.
  const extra: number[] = [];
  if (childPidFile) {
    const pid = Number(await readFile(childPidFile, 'utf8').catch(() => ''));
    if (pid > 0) extra.push(pid);
  }
  const leftovers = async () => [...(await Promise.all(ctx.workers.map((w) => jobPids(w.scratch)))).flat(), ...aliveAll(extra)];
  await waitFor(async () => (await leftovers()).length === 0, 20_000, 200);
  const orphans = await leftovers();
  if (orphans.length > 0) {
    problems.push(`${orphans.length} job process(es) left running: ${orphans.join(', ')}`);
    killPids(orphans);
  }
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
    problems,
    durationMs: Date.now() - t0,
  };
}

async function committedSteps(store: ObjectStore, artifactPrefix: string): Promise<number[]> {
  const keys = await store.list(`${layout.checkpoints(artifactPrefix)}/`, true);
  return keys
    .map((o) => /\/step-(\d+)\/_COMMITTED$/.exec(o.key))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => b - a);
}

/**
 * Per attempt of a stage, from the job event logs in the bucket (the audit trail as a fallback):
 * whether the job started, the checkpoint it resumed from and the furthest step it reported.
 */
async function attemptLogs(
  store: ObjectStore,
  prefix: string,
  runId: string,
  stageId: string,
  events: AuditRecord['event'][],
): Promise<Map<number, { started: boolean; resumedFrom: number | null; maxStep: number | null }>> {
  const out = new Map<number, { started: boolean; resumedFrom: number | null; maxStep: number | null }>();
  // Whole events files, or the parts a killed attempt flushed before it died.
  const logs = await listJobLogs(store, layout.run(prefix, runId), { stage: stageId, kind: 'events' }).catch(() => []);
  for (const { key, attempt } of logs) {
    const info = { started: false, resumedFrom: null as number | null, maxStep: null as number | null };
    const text = (await readJobLog(store, key))?.toString('utf8') ?? '';
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      try {
        const e = JSON.parse(line) as { event?: string; resumed_from_step?: number | null; step?: number };
        if (e.event === 'started') Object.assign(info, { started: true, resumedFrom: e.resumed_from_step ?? null });
        if (e.event === 'progress' && typeof e.step === 'number') info.maxStep = Math.max(info.maxStep ?? 0, e.step);
      } catch {
        // ignore
      }
    }
    out.set(attempt, info);
  }
  for (const e of events) {
    if ((e.type === 'attempt-started' || e.type === 'attempt') && e.stage === stageId && typeof e.attempt === 'number' && !out.get(e.attempt)?.started) {
      out.set(e.attempt, { started: true, resumedFrom: (e.resumedFromStep as number | null | undefined) ?? null, maxStep: null });
    }
  }
  return out;
}

async function finalStatus(ctx: Ctx, runId: string, prefix: string): Promise<PipelineStatus | undefined> {
  const fromQuery = await waitFor(() => runStatus(ctx.client, runId), 15_000, 250);
  if (fromQuery && fromQuery.state !== 'running') return fromQuery;
  return (await ctx.store.getJson<PipelineStatus>(`${layout.run(prefix, runId)}/status.json`).catch(() => undefined)) ?? fromQuery;
}

function lastErrorLine(text: string): string {
  const lines = text.split('\n').filter((l) => /error|ENOSPC|space/i.test(l));
  return (lines.at(-1) ?? text.split('\n').filter(Boolean).at(-1) ?? '').trim().slice(0, 240);
}
