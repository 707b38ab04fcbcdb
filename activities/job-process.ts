/**
 * Runs one job process: argv array, its own process group, events read from fd 3, logs to a file.
 * The process is raced against cancellation and a stall timer; whatever stops it, the whole
 * process tree is terminated (TERM, then KILL after a grace period) and the reason is recorded.
 * Inside a worker's launch scope the job is also recorded in the scratch dir until its session is
 * gone (job-registry.ts), for a restarted worker to reap should it outlive worker and supervisor.
 */
import { createWriteStream, existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { execa } from 'execa';
import { EVENTS_FD, parseJobEvent, type JobEvent } from './job-contract.js';
import { hostOomKills, JOB_CGROUP_ENV, JobMemoryCgroup } from './job-memory.js';
import { JOB_TOKEN_ENV, JobRegistry, type JobLaunchScope, type RecordedJob } from './job-registry.js';
import { isLive, processesInSession } from './proc.js';

export interface JobProcessOptions {
  /** Command and arguments; never a shell string. */
  argv: readonly [string, ...string[]];
  cwd: string;
  /** Extra environment (merged over the worker's, minus secrets: see `jobEnvironment`). */
  env: Record<string, string>;
  /** Append-only log of the job's stdout and stderr. */
  logFile: string;
  /** Called for every contract event, in order. */
  onEvent: (event: JobEvent) => void;
  /** Called for every line on the events fd that breaks the contract (the job goes on). */
  onContractViolation?: (message: string) => void;
  /** Kill the job when no event arrives for this long. */
  stallMs: number;
  /** Aborts the job (activity cancellation, worker shutdown). */
  signal: AbortSignal;
  /** Time between TERM and KILL. Default 10 s. */
  killGraceMs?: number;
  /**
   * Where the job is recorded while it runs (activities/job-registry.ts), so that a restarted
   * worker can reap it if it outlives both the worker and its supervisor. Without it the job is not
   * recorded.
   */
  launchScope?: JobLaunchScope;
  /** Problems that do not stop the job (its record could not be written). Default: console.warn. */
  onWarning?: (message: string) => void;
  /** A memory limit of the job's own (a cgroup named `name`, job-memory.ts); without it the job shares the worker's. */
  memoryLimit?: { bytes: number; name: string };
  /** Called once the job is launched, with what lets the caller signal it (drain: "checkpoint now"). */
  onLaunched?: (job: LaunchedJob) => void;
}

export interface LaunchedJob {
  /** Stops the job (TERM, then KILL after the grace) for a reason of the caller's; the result carries it. */
  stop(why: 'diverged' | 'drained'): void;
  /** Sends `sig` to the job's own process (the supervisor's child), never to its group; false if it is not there. */
  signalJob(sig: NodeJS.Signals): Promise<boolean>;
}

/** Why the worker stopped the job; 'exited' when it ended by itself. */
export type StopReason = 'exited' | 'cancelled' | 'stalled' | 'diverged' | 'drained';

export interface JobProcessResult {
  exitCode: number | undefined;
  /** Set when the process ended by a signal. */
  exitSignal: string | undefined;
  reason: StopReason;
  /** Events that broke the contract (not JSON, unknown shape). */
  contractViolations: string[];
  pid: number | undefined;
  /** The kernel's OOM killer ended it (job-memory.ts). */
  oomKilled: boolean;
}

/** Variables a job (or any child the worker starts for it) never inherits: credentials belong to the worker. */
export const SECRET_ENV = /^(REFINERY_S3_|AWS_|MINIO_|TEMPORAL_TLS|REFINERY_PAYLOAD_KEY)/;

export function jobEnvironment(base: NodeJS.ProcessEnv, extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(base)) if (v !== undefined && !SECRET_ENV.test(k)) env[k] = v;
  return { ...env, ...extra, REFINERY_EVENTS_FD: String(EVENTS_FD), PYTHONUNBUFFERED: '1' };
}

/**
 * If the worker itself dies (kill -9, OOM killer), neither the job nor anything it started (data
 * loader workers, a tool it runs) may train on as an orphan. The kernel's parent-death signal
 * (`setpriv --pdeathsig`) reaches only the worker's direct child, so that child is this small,
 * fixed supervisor, the leader of the job's process group: on SIGHUP (its parent died) it kills
 * the whole group. It ignores the TERM of a cancel, which reaches the job itself through the group
 * (its grace period stays the job's), waits for the job, and ends the way the job ended (its exit
 * code, or the same signal). The job's argv is passed as arguments ("$@"): no shell ever parses
 * anything but this constant.
 */
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));
const SH = ['/bin/sh', '/usr/bin/sh'].find((p) => existsSync(p));
export const JOB_SUPERVISOR = [
  "trap 'kill -KILL 0' HUP",
  // A memory limit of the job's own: the supervisor enters the cgroup first, so the job is born in it.
  `[ -z "$${JOB_CGROUP_ENV}" ] || echo "$$" > "$${JOB_CGROUP_ENV}/cgroup.procs" || echo "refinery: could not enter memory cgroup $${JOB_CGROUP_ENV}" >&2`,
  "trap ':' TERM INT",
  '"$@" &',
  'job=$!',
  'while :; do',
  '  wait "$job"; code=$?',
  '  if ! kill -0 "$job" 2>/dev/null; then',
  '    if [ "$code" -gt 128 ]; then trap - HUP TERM INT; kill -s "$(kill -l "$code")" "$$"; fi',
  '    exit "$code"',
  '  fi',
  'done',
].join('\n');

export function withParentDeathSignal(argv: readonly [string, ...string[]]): [string, ...string[]] {
  if (!SETPRIV || !SH || process.platform !== 'linux') return [...argv];
  return [SETPRIV, '--pdeathsig', 'SIGHUP', '--', SH, '-c', JOB_SUPERVISOR, 'refinery-job', ...argv];
}

export async function runJobProcess(options: JobProcessOptions): Promise<JobProcessResult> {
  const { signal } = options;
  const argv = withParentDeathSignal(options.argv);
  const warnEarly = options.onWarning ?? ((message: string) => console.warn(`[job-process] ${message}`));
  let cgroup: JobMemoryCgroup | undefined;
  if (options.memoryLimit && process.platform === 'linux') {
    const made = await JobMemoryCgroup.create(options.memoryLimit.name, options.memoryLimit.bytes);
    if (made instanceof Error) warnEarly(`job runs without its memory limit: ${made.message}`);
    else cgroup = made;
  }
  const hostKillsBefore = hostOomKills();
  const killGraceMs = options.killGraceMs ?? 10_000;
  const log = createWriteStream(options.logFile, { flags: 'a' });
  const contractViolations: string[] = [];
  let reason: StopReason = 'exited';
  const warn = options.onWarning ?? ((message: string) => console.warn(`[job-process] ${message}`));
  // Records need /proc (start times, session ids); elsewhere the supervisor is all there is.
  const scope = process.platform === 'linux' ? options.launchScope : undefined;
  // Every process of the job inherits the token: how a restarted worker tells the job's leftovers
  // from strangers once the supervisor (whose start time it also checks) is gone.
  const token = scope ? JobRegistry.newToken() : undefined;

  const child = execa(argv[0], argv.slice(1), {
    cwd: options.cwd,
    env: jobEnvironment(process.env, { ...options.env, ...(token ? { [JOB_TOKEN_ENV]: token } : {}), ...(cgroup ? { [JOB_CGROUP_ENV]: cgroup.dir } : {}) }),
    extendEnv: false,
    detached: true, // own process group: we kill the whole tree, not just the leader
    stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    reject: false,
    buffer: false,
    cleanup: true,
  });
  let recorded: RecordedJob | undefined;
  if (scope && token && child.pid !== undefined) {
    try {
      recorded = scope.registry.record({ supervisorPid: child.pid, token, argv: options.argv, labels: scope.labels });
    } catch (err) {
      // The supervisor still kills the job if this worker dies; only the restart's safety net is missing.
      warn(`job (session ${child.pid}) not recorded in ${scope.registry.dir}: ${String(err)}`);
    }
  }
  child.stdout?.pipe(log, { end: false });
  child.stderr?.pipe(log, { end: false });
  // A full scratch disk (ENOSPC) must fail the job, not the worker: without a listener the stream's
  // error is thrown as an uncaught exception. Keep draining the job's output so it never blocks.
  log.on('error', () => {
    child.stdout?.resume();
    child.stderr?.resume();
  });

  let stallTimer: NodeJS.Timeout | undefined;
  const armStall = () => {
    clearTimeout(stallTimer);
    stallTimer = setTimeout(() => stop('stalled'), options.stallMs);
  };

  let killTimer: NodeJS.Timeout | undefined;
  const stop = (why: StopReason) => {
    if (reason !== 'exited' || child.exitCode !== null || child.signalCode !== null) return;
    reason = why;
    killGroup(child.pid, 'SIGTERM');
    killTimer = setTimeout(() => killGroup(child.pid, 'SIGKILL'), killGraceMs);
  };
  const supervisorPid = child.pid;
  options.onLaunched?.({
    stop: (why) => stop(why),
    signalJob: async (sig) => {
      if (supervisorPid === undefined) return false;
      // The job is the supervisor's child (without a supervisor, the launched process itself).
      const session = await processesInSession(supervisorPid);
      const job = SETPRIV && SH ? session.find((p) => p.ppid === supervisorPid && isLive(p)) : session.find((p) => p.pid === supervisorPid);
      if (!job) return false;
      try {
        process.kill(job.pid, sig);
        return true;
      } catch {
        return false;
      }
    },
  });
  const onAbort = () => stop('cancelled');
  if (signal.aborted) onAbort();
  else signal.addEventListener('abort', onAbort, { once: true });

  const eventsStream = child.stdio[EVENTS_FD] as Readable | undefined;
  const eventsDone = (async () => {
    if (!eventsStream) return;
    for await (const line of createInterface({ input: eventsStream, crlfDelay: Infinity })) {
      const event = parseJobEvent(line);
      if (event === undefined) continue;
      if (event instanceof Error) {
        contractViolations.push(event.message);
        options.onContractViolation?.(event.message);
        continue;
      }
      armStall();
      options.onEvent(event);
    }
  })();

  armStall();
  // The leader's exit ends the job. Whatever it left behind (a dataloader worker, a stray child)
  // still holds our pipes, and the subprocess promise waits for them to close: kill the group now,
  // or a finished (or cancelled) job would hang here until the stall timer fires.
  await Promise.race([
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once('exit', () => resolve());
    }),
    child.then(() => undefined, () => undefined),
  ]);
  killGroup(child.pid, 'SIGKILL');
  const result = await child;
  await eventsDone.catch(() => undefined);
  clearTimeout(stallTimer);
  signal.removeEventListener('abort', onAbort);
  // The leader is gone; make sure nothing it spawned outlives it (dataloader workers and the like).
  killGroup(child.pid, 'SIGKILL');
  clearTimeout(killTimer);
  if (recorded && !(await recorded.release())) {
    warn(`processes of job session ${recorded.record.sessionId} outlived SIGKILL; its record stays for the next worker start to reap`);
  }
  await new Promise<void>((resolve) => log.end(resolve));
  const exitSignal = result.signal ?? undefined;
  // A SIGKILL the worker did not send, and the kernel's OOM killer struck meanwhile: in the job's own
  // cgroup (certain), or on the host (without a cgroup: near certain for the job that vanished).
  const killedUnasked = exitSignal === 'SIGKILL' && reason === 'exited';
  const hostKillsAfter = hostOomKills();
  const oomKilled = killedUnasked && (cgroup ? cgroup.oomKills() > 0 : hostKillsBefore !== undefined && hostKillsAfter !== undefined && hostKillsAfter > hostKillsBefore);
  await cgroup?.remove();
  return {
    exitCode: result.exitCode,
    exitSignal,
    reason,
    contractViolations,
    pid: child.pid,
    oomKilled,
  };
}


function killGroup(pid: number | undefined, sig: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, sig);
  } catch {
    // already gone
  }
}
