/**
 * Reaps the jobs a dead worker left behind, before a new worker on the same scratch dir takes work.
 *
 * Why: a job's supervisor kills the job's process group when its worker dies, but a supervisor that
 * dies with the worker (the OOM killer, `kill -9` of the worker's group, a bug) leaves the job
 * reparented to init, training on and holding its GPU. Every job a worker launches is recorded in
 * `<scratchDir>/jobs/` (activities/job-registry.ts), and a scratch dir belongs to one worker
 * process at a time, so whatever is recorded there when a worker starts is a leftover of an
 * earlier one.
 *
 * For each record, processes are found by the recorded session id (the supervisor led the job's
 * session and process group; everything the job starts inherits them), and killed only when the
 * session is provably the recorded one:
 *   - the record is from this host (else it is left alone: a scratch dir on shared storage) and
 *     from this boot (else it is just deleted);
 *   - the worker that wrote it is gone (a live owner's jobs are never touched);
 *   - the session's leader, when alive, has the recorded start time (else its pid was reused);
 *     when the leader is gone, some process of the session carries the job's token in its
 *     environment. The kernel keeps a session id allocated while any process is in it, so one
 *     verified process vouches for the whole session.
 * Then SIGKILL to the group and to every process of the session (a process may have moved to
 * another group of the session), repeated until none is left or the wait runs out.
 */
import { readdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { JOB_TOKEN_ENV, readJobRecords, removeJobRecord, type JobRecord } from '../activities/job-registry.js';
import { bootId, environHas, processesInSession, readProcStat, type ProcStat } from '../activities/proc.js';

export interface ReapStaleJobsOptions {
  scratchDir: string;
  /** One line per record dealt with. Default: console.warn. */
  log?: (line: string) => void;
  /** How long to wait for the killed processes of one record to be gone. Default 10 s. */
  waitMs?: number;
  /** Log records left alone because their worker still runs (default true; false when sweeping other workers' dirs). */
  reportLiveOwners?: boolean;
}

export type StaleJobOutcome =
  /** Killed; `survivors` are processes still there when the wait ran out (the record then stays). */
  | { kind: 'reaped'; file: string; record: JobRecord; killed: number[]; survivors: number[] }
  /** Nothing of the job is left (or what holds its session id is not the job): record deleted, nothing killed. */
  | { kind: 'gone' | 'not-ours' | 'other-boot' | 'invalid'; file: string; reason: string }
  /** The worker that launched it is still running, or ran on another host: record kept, nothing killed. */
  | { kind: 'owner-alive' | 'other-host'; file: string; reason: string };

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function describeJob(r: JobRecord): string {
  return `run ${r.job.runId} stage ${r.job.stageId} attempt ${r.job.attempt} (session ${r.sessionId}, launched ${r.startedAt} by worker ${r.worker.host}/${r.worker.pid})`;
}

/** Same process as recorded: the pid is alive and started at the recorded time. */
function isSameProcess(p: ProcStat | undefined, startTime: number | null): boolean {
  return p !== undefined && startTime !== null && p.startTime === startTime && p.state !== 'Z';
}

/** Why the live processes holding `record.sessionId` are (undefined) or are not (a reason) the recorded job's. */
async function whyNotOurs(record: JobRecord, members: ProcStat[]): Promise<string | undefined> {
  const leader = members.find((p) => p.pid === record.sessionId);
  if (leader) {
    return leader.startTime === record.supervisorStartTime
      ? undefined
      : `session leader ${leader.pid} started at ${leader.startTime}, the recorded supervisor at ${record.supervisorStartTime}: pid reused`;
  }
  for (const p of members) if (await environHas(p.pid, JOB_TOKEN_ENV, record.token)) return undefined;
  return `no process of session ${record.sessionId} (${members.map((p) => p.pid).join(', ')}) carries the job's token: not the recorded job`;
}

function signal(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone already (or not ours to signal: it shows up as a survivor)
  }
}

async function reapOne(file: string, record: JobRecord, boot: string | undefined, waitMs: number): Promise<StaleJobOutcome> {
  if (record.worker.host !== hostname()) return { kind: 'other-host', file, reason: `launched on ${record.worker.host}, this is ${hostname()}` };
  if (boot === undefined || record.bootId !== boot) return { kind: 'other-boot', file, reason: `recorded in boot ${record.bootId}, this is ${boot ?? 'unknown'}` };
  if (isSameProcess(readProcStat(record.worker.pid), record.worker.startTime)) {
    return { kind: 'owner-alive', file, reason: `worker ${record.worker.host}/${record.worker.pid} that launched it still runs` };
  }
  let members = await processesInSession(record.sessionId);
  if (members.length === 0) return { kind: 'gone', file, reason: 'no process of its session is left' };
  const notOurs = await whyNotOurs(record, members);
  if (notOurs) return { kind: 'not-ours', file, reason: notOurs };

  const killed = new Set<number>();
  const deadline = Date.now() + waitMs;
  for (;;) {
    // A session id stays allocated while any process holds it, and once it is free Linux hands it
    // out again only after the pid counter wraps: every process found here belongs to the verified
    // session. Still, should the leader's pid turn up as a different process, stop.
    const leader = members.find((p) => p.pid === record.sessionId);
    if (leader && leader.startTime !== record.supervisorStartTime) {
      members = [];
      break;
    }
    signal(-record.sessionId);
    for (const p of members) {
      signal(p.pid);
      killed.add(p.pid);
    }
    await sleep(50);
    members = await processesInSession(record.sessionId);
    if (members.length === 0 || Date.now() >= deadline) break;
  }
  return { kind: 'reaped', file, record, killed: [...killed].sort((a, b) => a - b), survivors: members.map((p) => p.pid) };
}

/**
 * Deals with every job record in `scratchDir` (see the module comment) and resolves once the
 * leftovers are gone or the wait for them ran out. Never throws for a record it cannot handle.
 */
export async function reapStaleJobs(options: ReapStaleJobsOptions): Promise<StaleJobOutcome[]> {
  const log = options.log ?? ((line: string) => console.warn(line));
  const boot = bootId();
  const outcomes: StaleJobOutcome[] = [];
  for (const stored of await readJobRecords(options.scratchDir)) {
    const outcome = 'invalid' in stored
      ? ({ kind: 'invalid', file: stored.file, reason: stored.invalid } as const)
      : await reapOne(stored.file, stored.record, boot, options.waitMs ?? 10_000);
    outcomes.push(outcome);
    switch (outcome.kind) {
      case 'reaped':
        if (outcome.survivors.length > 0) {
          log(`[stale-jobs] job left by a dead worker: ${describeJob(outcome.record)}; SIGKILLed pids ${outcome.killed.join(', ')}, still alive: ${outcome.survivors.join(', ')} (record kept)`);
        } else {
          log(`[stale-jobs] reaped a job left by a dead worker: ${describeJob(outcome.record)}; SIGKILLed pids ${outcome.killed.join(', ')}`);
          await removeJobRecord(outcome.file);
        }
        break;
      case 'owner-alive':
        if (options.reportLiveOwners ?? true) log(`[stale-jobs] ${outcome.file}: ${outcome.reason}; another worker shares this scratch dir? left alone`);
        break;
      case 'other-host':
        log(`[stale-jobs] ${outcome.file}: ${outcome.reason}; left alone`);
        break;
      case 'not-ours':
        log(`[stale-jobs] ${outcome.file}: ${outcome.reason}; killed nothing, record deleted`);
        await removeJobRecord(outcome.file);
        break;
      default:
        await removeJobRecord(outcome.file);
    }
  }
  return outcomes;
}

/**
 * `reapStaleJobs` for every scratch dir `<root>/<host>-<pid>` of this host but `except`: a worker
 * without --scratch gets a new dir per process (worker/main.ts), so its predecessor's records are
 * in a sibling. Dirs whose worker still runs are left alone (their records name a live owner).
 */
export async function reapStaleJobsOfHost(root: string, except: string, options: Omit<ReapStaleJobsOptions, 'scratchDir'> = {}): Promise<StaleJobOutcome[]> {
  let names: string[];
  try {
    names = await readdir(root);
  } catch {
    return [];
  }
  const prefix = `${hostname()}-`;
  const outcomes: StaleJobOutcome[] = [];
  for (const name of names.filter((n) => n.startsWith(prefix) && /^\d+$/.test(n.slice(prefix.length))).sort()) {
    const dir = path.join(root, name);
    if (path.resolve(dir) === path.resolve(except)) continue;
    outcomes.push(...(await reapStaleJobs({ reportLiveOwners: false, ...options, scratchDir: dir })));
  }
  return outcomes;
}
