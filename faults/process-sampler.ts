/**
 * The fault suite's own view of every job process on this machine, independent of what Refinery
 * records: every 100 ms it reads /proc, finds each job session a training worker started (the job's
 * supervisor is a child of the worker process and leads its own session, activities/job-process.ts),
 * reads which run, stage and attempt it trains from its `--config` file, and remembers when any
 * process of that session was first and last seen alive. From that:
 *   - overlap: two attempts of one stage alive at the same time, and for how long;
 *   - orphans: any process of any job session still alive after its run ended — the job's own
 *     children and data-loader workers included, found by session id, never by command line.
 */
import { readFile } from 'node:fs/promises';
import { isLive, listProcesses, type ProcStat } from '../activities/proc.js';

export interface JobSession {
  /** Session id = the supervisor's pid. */
  sid: number;
  /** The worker process that started it. */
  workerPid: number;
  runId: string | null;
  stageId: string | null;
  attempt: number | null;
  firstSeenMs: number;
  lastSeenMs: number;
  /** Every pid seen in the session (the job's children included). */
  pids: Set<number>;
  /** Live at the last sample. */
  alive: boolean;
}

export interface Overlap {
  runId: string;
  stageId: string;
  attempts: [number, number];
  /** How long both were alive (sampling resolution: the interval). */
  ms: number;
}

export class ProcessSampler {
  readonly sessions = new Map<number, JobSession>();
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;

  constructor(
    /** Pids of the training worker processes (they change as workers are killed and started). */
    private readonly workerPids: () => number[],
    private readonly intervalMs = 100,
  ) {}

  start(): void {
    const tick = () => {
      this.running = this.sample().finally(() => {
        if (this.timer) this.timer = setTimeout(tick, this.intervalMs);
      });
    };
    this.timer = setTimeout(tick, 0);
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /** One look at the process table. */
  async sample(): Promise<void> {
    const now = Date.now();
    const procs = await listProcesses();
    const workers = new Set(this.workerPids());
    for (const p of procs) {
      if (!isLive(p) || p.session !== p.pid || !workers.has(p.ppid) || this.sessions.has(p.pid)) continue;
      this.sessions.set(p.pid, { sid: p.pid, workerPid: p.ppid, runId: null, stageId: null, attempt: null, firstSeenMs: now, lastSeenMs: now, pids: new Set([p.pid]), alive: true });
      await this.identify(this.sessions.get(p.pid)!);
    }
    const bySession = new Map<number, ProcStat[]>();
    for (const p of procs) if (isLive(p) && this.sessions.has(p.session)) bySession.set(p.session, [...(bySession.get(p.session) ?? []), p]);
    for (const s of this.sessions.values()) {
      const members = bySession.get(s.sid) ?? [];
      s.alive = members.length > 0;
      if (s.alive) s.lastSeenMs = now;
      for (const m of members) s.pids.add(m.pid);
      if (s.runId === null && s.alive) await this.identify(s);
    }
  }

  /** The run, stage and attempt of a session, from the job config its argv names. */
  private async identify(s: JobSession): Promise<void> {
    for (const pid of [s.sid, ...s.pids]) {
      const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
      const i = argv.indexOf('--config');
      if (i < 0 || !argv[i + 1]) continue;
      const cfg = JSON.parse(await readFile(argv[i + 1]!, 'utf8').catch(() => '{}')) as { run_id?: string; stage_id?: string };
      const m = /job-config\.attempt-(\d+)\.json$/.exec(argv[i + 1]!);
      if (cfg.run_id && cfg.stage_id && m) Object.assign(s, { runId: cfg.run_id, stageId: cfg.stage_id, attempt: Number(m[1]) });
      return;
    }
  }

  /** Sessions of one run. */
  ofRun(runId: string): JobSession[] {
    return [...this.sessions.values()].filter((s) => s.runId === runId);
  }

  /** Pairs of attempts of one stage of `runId` whose job processes were alive at the same time. */
  overlaps(runId: string): Overlap[] {
    const out: Overlap[] = [];
    const sessions = this.ofRun(runId);
    for (const a of sessions) {
      for (const b of sessions) {
        if (a.stageId !== b.stageId || a.attempt === null || b.attempt === null || a.attempt >= b.attempt) continue;
        const ms = Math.min(a.lastSeenMs, b.lastSeenMs) - Math.max(a.firstSeenMs, b.firstSeenMs);
        if (ms >= 0) out.push({ runId, stageId: a.stageId!, attempts: [a.attempt, b.attempt], ms: ms + this.intervalMs });
      }
    }
    return out;
  }

  /** The job sessions `workerPid` has running now (a fresh look), with their live processes. */
  async jobsOf(workerPid: number): Promise<{ sid: number; pids: number[] }[]> {
    await this.sample();
    const sids = [...this.sessions.values()].filter((s) => s.workerPid === workerPid && s.alive).map((s) => s.sid);
    return this.inSessions(sids);
  }

  /** Live processes of the given sessions, by a fresh look at /proc. */
  async inSessions(sids: number[]): Promise<{ sid: number; pids: number[] }[]> {
    const procs = (await listProcesses()).filter(isLive);
    return sids.map((sid) => ({ sid, pids: procs.filter((p) => p.session === sid).map((p) => p.pid) }));
  }

  /** Live processes of every session of `runId` (or of all sessions), by a fresh look at /proc. */
  async alivePids(runId?: string): Promise<number[]> {
    const sids = new Set([...this.sessions.values()].filter((s) => runId === undefined || s.runId === runId || s.runId === null).map((s) => s.sid));
    return (await listProcesses()).filter((p) => isLive(p) && sids.has(p.session)).map((p) => p.pid);
  }
}
