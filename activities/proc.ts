/**
 * The Linux process table as /proc shows it: a process's group, session and start time, and every
 * live process of a session or group. Jobs are found by these ids, never by command line (a job may
 * rename itself, a command line may match anything): the job's supervisor leads its own session and
 * process group (activities/job-process.ts), and everything the job starts inherits both unless it
 * leaves on purpose. Used by the worker (job records, stale job reaping) and by tests and faults
 * looking for orphans. Off Linux (no /proc) every lookup finds nothing.
 */
import { readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';

export interface ProcStat {
  pid: number;
  /** Executable name, as the kernel keeps it (at most 15 characters). */
  comm: string;
  /** R, S, D, Z (zombie), T (stopped), … */
  state: string;
  ppid: number;
  /** Process group id. */
  pgrp: number;
  /** Session id. */
  session: number;
  /**
   * When the process started, in clock ticks since boot (field 22 of /proc/<pid>/stat). A pid with
   * the same start time (and the same boot id) is the same process: this is what defeats pid reuse.
   */
  startTime: number;
}

/** "pid (comm) state ppid pgrp session … starttime …"; comm may hold spaces and parentheses. */
export function parseProcStat(text: string): ProcStat | undefined {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return undefined;
  const pid = Number(text.slice(0, open).trim());
  // After ") ": field 3 (state) is index 0, so field N is index N - 3.
  const f = text.slice(close + 2).trim().split(' ');
  const stat = { pid, comm: text.slice(open + 1, close), state: f[0] ?? '', ppid: Number(f[1]), pgrp: Number(f[2]), session: Number(f[3]), startTime: Number(f[19]) };
  return [stat.pid, stat.ppid, stat.pgrp, stat.session, stat.startTime].every(Number.isInteger) ? stat : undefined;
}

/** /proc/<pid>/stat, or undefined when there is no such process (or no /proc). Synchronous: procfs never blocks on a disk. */
export function readProcStat(pid: number): ProcStat | undefined {
  try {
    return parseProcStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

async function readProcStatAsync(pid: number): Promise<ProcStat | undefined> {
  try {
    return parseProcStat(await readFile(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined; // gone between readdir and read
  }
}

/** Processes that are not dead: a zombie has exited and only waits for its parent to reap it. */
export function isLive(p: ProcStat): boolean {
  return p.state !== 'Z' && p.state !== 'X' && p.state !== 'x';
}

/** Every process (not thread) in the table, zombies included. */
export async function listProcesses(): Promise<ProcStat[]> {
  let entries: string[];
  try {
    entries = await readdir('/proc');
  } catch {
    return [];
  }
  const stats = await Promise.all(entries.filter((e) => /^\d+$/.test(e)).map((e) => readProcStatAsync(Number(e))));
  return stats.filter((s): s is ProcStat => s !== undefined);
}

/** Live processes of session `sid` (its leader included while it lives), by pid. */
export async function processesInSession(sid: number): Promise<ProcStat[]> {
  return (await listProcesses()).filter((p) => p.session === sid && isLive(p)).sort((a, b) => a.pid - b.pid);
}

/** Live processes of process group `pgid`, by pid. */
export async function processesInGroup(pgid: number): Promise<ProcStat[]> {
  return (await listProcesses()).filter((p) => p.pgrp === pgid && isLive(p)).sort((a, b) => a.pid - b.pid);
}

/** This boot's id (/proc/sys/kernel/random/boot_id): start times and pids only mean something within one boot. */
export function bootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether `pid`'s initial environment (/proc/<pid>/environ: what it was exec'd with) holds the
 * entry `name=value`. Undefined when it cannot be read (gone, a zombie, another user's process).
 */
export async function environHas(pid: number, name: string, value: string): Promise<boolean | undefined> {
  let raw: Buffer;
  try {
    raw = await readFile(`/proc/${pid}/environ`);
  } catch {
    return undefined;
  }
  if (raw.length === 0) return undefined; // a zombie (or a kernel thread) shows an empty environment
  return raw.toString('utf8').split('\0').includes(`${name}=${value}`);
}
