/**
 * Jobs that outlive their worker AND their supervisor (both SIGKILLed, so nothing kills the job's
 * group) are reaped by the next worker on the same scratch dir before it takes work; processes that
 * merely hold a recorded session id (pid reuse, another boot) are left alone. Processes are found
 * by session id through /proc (activities/proc.ts), never by command line.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { startRun } from '../../client/commands/run.js';
import { runStatus } from '../../client/commands/manage.js';
import { JOB_TOKEN_ENV, jobRecordsDir, readJobRecords, type JobRecord } from '../../activities/job-registry.js';
import { bootId, environHas, parseProcStat, processesInSession, readProcStat } from '../../activities/proc.js';
import { reapStaleJobsOfHost } from '../../worker/stale-jobs.js';
import { WorkerProcess } from '../../infra/harness/processes.js';
import { startTestWorkers, testClient, testJobCommand, testStackEnv, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';

let control: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;
const workers: WorkerProcess[] = [];
/** Processes this file started or left behind, with their start times (never kill a reused pid). */
const strays: { pid: number; startTime: number }[] = [];

function keep(pid: number): void {
  const st = readProcStat(pid);
  if (st) strays.push({ pid, startTime: st.startTime });
}

beforeAll(async () => {
  useTestStackEnv();
  control = await startTestWorkers({ trainingQueues: [] });
  ({ client, close: closeClient } = await testClient());
});
afterAll(async () => {
  for (const w of workers) w.signal('SIGKILL');
  for (const s of strays) if (readProcStat(s.pid)?.startTime === s.startTime) kill(s.pid, 'SIGKILL');
  await closeClient?.();
  await control?.shutdown();
});

function kill(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // gone
  }
}

function alive(pid: number): boolean {
  const st = readProcStat(pid);
  return st !== undefined && st.state !== 'Z';
}

async function spawnWorker(name: string, queue: string, scratch: string, logDir: string): Promise<WorkerProcess> {
  const w = await WorkerProcess.spawn({ name, queue, scratch, logDir, stackEnv: testStackEnv(), jobCommand: testJobCommand()('sft') });
  workers.push(w);
  return w;
}

/** A process in a session of its own (its pid is the session id), as a stranger that got a recorded pid. */
function strangerSessionLeader(): number {
  const p = spawn('sleep', ['1000'], { detached: true, stdio: 'ignore' });
  p.unref();
  keep(p.pid!);
  return p.pid!;
}

/** A session whose leader has exited, one `sleep` left in it: [session id, the sleep's pid]. */
async function strangerLeaderlessSession(): Promise<[number, number]> {
  const sh = spawn('/bin/sh', ['-c', 'sleep 1000 >/dev/null & echo $!'], { detached: true, stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  sh.stdout.on('data', (d: Buffer) => (out += d.toString()));
  await new Promise((resolve) => sh.once('close', resolve)); // exited, and its output read
  const member = Number(out.trim());
  keep(member);
  expect(readProcStat(member)?.session).toBe(sh.pid);
  return [sh.pid!, member];
}

/** A session whose leader is gone, two `sleep`s carrying `REFINERY_JOB_TOKEN=<token>` left in it: like a job orphaned by worker and supervisor. */
async function orphanedSession(token: string): Promise<{ session: number; members: number[] }> {
  const sh = spawn('/bin/sh', ['-c', 'sleep 1000 >/dev/null & echo $!; sleep 1000 >/dev/null & echo $!'], { detached: true, stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, [JOB_TOKEN_ENV]: token } });
  let out = '';
  sh.stdout.on('data', (d: Buffer) => (out += d.toString()));
  await new Promise((resolve) => sh.once('close', resolve)); // exited, and its output read
  const members = out.trim().split('\n').map(Number);
  for (const pid of members) keep(pid);
  expect(members.map((pid) => readProcStat(pid)?.session)).toEqual([sh.pid, sh.pid]);
  return { session: sh.pid!, members };
}

/** A record as a worker would have written it for `session` (token, worker identity of choice). */
function recordFor(session: number, token: string, worker: JobRecord['worker']): JobRecord {
  return {
    version: 1,
    sessionId: session,
    supervisorPid: session,
    supervisorStartTime: 1,
    bootId: bootId()!,
    token,
    worker,
    job: { runId: 'r', stageId: 's', attempt: 1 },
    argv: ['job'],
    startedAt: new Date().toISOString(),
  };
}

async function writeRecord(scratch: string, record: JobRecord): Promise<void> {
  await mkdir(jobRecordsDir(scratch), { recursive: true });
  await writeFile(path.join(jobRecordsDir(scratch), `${record.sessionId}-${record.supervisorStartTime}.json`), JSON.stringify(record));
}

describe('stale jobs', () => {
  it('parses /proc/<pid>/stat whatever the command name holds', () => {
    const line = '4242 (a) b (c) S 1 4240 4239 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 0';
    expect(parseProcStat(line)).toEqual({ pid: 4242, comm: 'a) b (c', state: 'S', ppid: 1, pgrp: 4240, session: 4239, startTime: 987654 });
    const self = readProcStat(process.pid)!;
    expect(self.pid).toBe(process.pid);
    expect(self.startTime).toBeGreaterThan(0);
  });

  it("a worker without --scratch sweeps this host's other default scratch dirs, leaving live workers' jobs alone", async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'refinery-stale-root-'));
    const dead = spawn('true');
    const deadPid = dead.pid!;
    const deadStart = readProcStat(deadPid)?.startTime ?? 1;
    await new Promise((resolve) => dead.once('exit', resolve));
    const [orphanToken, ownedToken] = [randomUUID(), randomUUID()];
    const orphan = await orphanedSession(orphanToken);
    const owned = await orphanedSession(ownedToken);
    const host = hostname();
    const deadDir = path.join(root, `${host}-${deadPid}`);
    const liveDir = path.join(root, `${host}-${process.pid}`);
    await writeRecord(deadDir, recordFor(orphan.session, orphanToken, { host, pid: deadPid, startTime: deadStart }));
    await writeRecord(liveDir, recordFor(owned.session, ownedToken, { host, pid: process.pid, startTime: readProcStat(process.pid)!.startTime }));
    const lines: string[] = [];
    const outcomes = await reapStaleJobsOfHost(root, path.join(root, `${host}-0`), { log: (l) => lines.push(l) });
    expect(outcomes.map((o) => o.kind).sort()).toEqual(['owner-alive', 'reaped']);
    expect(await processesInSession(orphan.session)).toEqual([]);
    expect(owned.members.every(alive)).toBe(true);
    expect(await readdir(jobRecordsDir(deadDir))).toEqual([]);
    expect(await readdir(jobRecordsDir(liveDir))).toHaveLength(1);
    expect(lines.join('\n')).toMatch(new RegExp(`SIGKILLed pids ${orphan.members.join(', ')}$`, 'm'));
    for (const pid of owned.members) kill(pid, 'SIGKILL');
    await rm(root, { recursive: true, force: true });
  });

  it('a restarted worker reaps the job (and its child) that outlived its worker and supervisor, and kills no stranger', async () => {
    const queue = `gpu-stale-${Date.now()}`;
    const scratch = await mkdtemp(path.join(tmpdir(), 'refinery-stale-scratch-'));
    const logDir = await mkdtemp(path.join(tmpdir(), 'refinery-stale-logs-'));
    const first = await spawnWorker('first', queue, scratch, logDir);
    const childPidFile = path.join(logDir, 'child.pid');
    const { file } = await writeTestSpec({
      name: 'stale-test',
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 5000 }, job_params: { step_seconds: 0.1, child_pid_file: childPidFile, hang_at_step: 4 }, resources: { task_queue: queue }, timeouts: { heartbeat: '3s', stall: '10m' }, retry: { maximum_attempts: 1 } }],
    });
    const { runId, handle } = await startRun(client, file, { id: `stale-${Date.now()}` });
    // The job stops writing at step 4 (in the middle of a long step, as it were): a job writing to
    // its dead worker's pipes would die of EPIPE by itself, but its children (data loader workers)
    // and a job busy in a step, an eval or a checkpoint write train on.
    await until('the job to make progress', async () => (await runStatus(client, runId)).stages[0]!.step >= 3);
    await new Promise((resolve) => setTimeout(resolve, 600));
    const childPid = Number(await readFile(childPidFile, 'utf8'));
    const session = readProcStat(childPid)!.session;
    const supervisor = session; // the supervisor leads the job's session
    const members = (await processesInSession(session)).map((p) => p.pid);
    for (const pid of members) keep(pid); // killed in afterAll should the test fail before they are reaped
    expect(members).toContain(supervisor);
    expect(members).toContain(childPid);
    const jobPids = members.filter((pid) => pid !== supervisor && pid !== childPid);
    expect(jobPids.length).toBeGreaterThanOrEqual(1); // the job itself

    // The worker recorded the job, and every process of the job carries the record's token.
    const records = (await readJobRecords(scratch)).flatMap((r) => ('record' in r ? [r.record] : []));
    const record = records.find((r) => r.sessionId === session);
    expect(record).toBeDefined();
    expect(record!.supervisorStartTime).toBe(readProcStat(supervisor)!.startTime);
    expect(record!.job).toMatchObject({ runId, stageId: 'sft', attempt: 1 });
    expect(record!.worker.pid).toBe(first.pid);
    expect(await environHas(childPid, JOB_TOKEN_ENV, record!.token)).toBe(true);

    // Worker and supervisor die together, neither able to act: both stopped first (so the
    // supervisor cannot run its HUP trap, nor the worker react to its child's death), then killed.
    kill(first.pid, 'SIGSTOP');
    kill(supervisor, 'SIGSTOP');
    await until('worker and supervisor stopped', async () => readProcStat(first.pid)?.state === 'T' && readProcStat(supervisor)?.state === 'T', 10_000, 20);
    kill(supervisor, 'SIGKILL');
    await until('the supervisor dead', async () => !alive(supervisor), 10_000, 20);
    kill(first.pid, 'SIGKILL');
    await first.exited;
    await new Promise((resolve) => setTimeout(resolve, 1500));
    // The scenario is real: the job and its child train on, orphaned, with nobody to kill them.
    const orphans = (await processesInSession(session)).map((p) => p.pid);
    expect(orphans).toContain(childPid);
    for (const pid of jobPids) expect(orphans).toContain(pid);
    expect(orphans).not.toContain(supervisor);

    // Records whose ids are now held by strangers: a session leader with another start time (pid
    // reuse), a leaderless session without the job's token, and a record from another boot.
    const recordsDir = jobRecordsDir(scratch);
    const leader = strangerSessionLeader();
    await until('the stranger to run', async () => readProcStat(leader)?.session === leader, 5_000, 20);
    const [leaderless, leaderlessMember] = await strangerLeaderlessSession();
    const stranger = (over: Partial<JobRecord>): JobRecord => ({ ...record!, token: randomUUID(), ...over });
    await writeFile(path.join(recordsDir, `${leader}-1.json`), JSON.stringify(stranger({ sessionId: leader, supervisorPid: leader, supervisorStartTime: readProcStat(leader)!.startTime - 1 })));
    await writeFile(path.join(recordsDir, `${leaderless}-1.json`), JSON.stringify(stranger({ sessionId: leaderless, supervisorPid: leaderless })));
    await writeFile(path.join(recordsDir, `${leader}-2.json`), JSON.stringify(stranger({ sessionId: leader, supervisorPid: leader, supervisorStartTime: readProcStat(leader)!.startTime, bootId: 'another-boot' })));

    // The next worker on this scratch dir is ready (says `[worker]`) only once it has reaped.
    const second = await spawnWorker('second', queue, scratch, logDir);
    expect(await processesInSession(session)).toEqual([]);
    for (const pid of [childPid, ...jobPids]) expect(alive(pid)).toBe(false);
    expect(alive(leader)).toBe(true);
    expect(alive(leaderlessMember)).toBe(true);
    expect(await readdir(recordsDir)).toEqual([]);
    const log = second.logTail(200);
    expect(log).toMatch(new RegExp(`reaped a job left by a dead worker: run ${runId} stage sft attempt 1 \\(session ${session}[^\\n]*SIGKILLed pids [^\\n]*\\b${childPid}\\b`));
    expect(log).toMatch(/pid reused; killed nothing/);
    expect(log).toMatch(/carries the job's token: not the recorded job; killed nothing/);
    await handle.cancel();
    await handle.result().catch(() => undefined);

    // A job that ends is recorded while it runs, and its record is gone once its session is.
    const { file: short } = await writeTestSpec({
      name: 'stale-short',
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 30 }, job_params: { step_seconds: 0.1 }, resources: { task_queue: queue } }],
    });
    const run = await startRun(client, short, { id: `stale-short-${Date.now()}` });
    const live = await until('the running job\'s record', async () => {
      const [r] = await readJobRecords(scratch);
      return r && 'record' in r ? r.record : undefined;
    }, 60_000, 50);
    expect(live.worker.pid).toBe(second.pid);
    // The record is written as the supervisor starts, before it has started the job: on a busy
    // machine the session may hold only the supervisor for a moment.
    await until('the job in the recorded session', async () => (await processesInSession(live.sessionId)).length >= 2 || undefined, 30_000, 50);
    expect((await run.handle.result()).status.stages[0]!.state).toBe('completed');
    expect(await readdir(recordsDir)).toEqual([]);
    await second.stop();
  });
});
