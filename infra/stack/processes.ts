/**
 * Running a server as a detached background process of the state folder: its log and pid file,
 * free ports, whether a pid is alive and ours, TERM-then-KILL, and `launch()`, which starts a
 * binary and polls a health probe until it answers. Nothing here knows Temporal or MinIO.
 */
import { closeSync, constants as fsConstants, openSync, readFileSync, writeSync } from 'node:fs';
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { StackError } from '../../config/errors.js';
import { BOOTSTRAP_FIX } from '../../config/toolchain.js';

export type ServiceName = 'temporal' | 'minio';

export const DEFAULT_TIMEOUT_MS = 60_000;
export const DEFAULT_GRACE_MS = 10_000;
export const POLL_MS = 250;

export async function assertExecutable(binary: string, label: string): Promise<void> {
  try {
    await access(binary, fsConstants.X_OK);
  } catch {
    throw new StackError(`${label} binary not found or not executable at ${binary}; ${BOOTSTRAP_FIX}`);
  }
}

// ------------------------------------------------------------------------------------------------
// Paths, ports, pids

export interface ServicePaths {
  logFile: string;
  pidFile: string;
}

/** Where a service's log and pid file live under a state folder. */
export function servicePaths(stateDir: string, service: ServiceName): ServicePaths {
  return {
    logFile: path.join(stateDir, 'logs', `${service}.log`),
    pidFile: path.join(stateDir, 'run', `${service}.pid`),
  };
}

export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A TCP port nobody is listening on right now (the OS picks it). */
export async function getFreePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host, port: 0, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** True if we can bind `host:port` right now. */
export async function isPortFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE' || err.code === 'EACCES') resolve(false);
      else reject(new StackError(`cannot bind ${formatHostPort(host, port)}: ${err.message}`));
    });
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

export interface PortClaim {
  host: string;
  port: number;
  /** e.g. "Temporal gRPC" */
  what: string;
  /** e.g. "set TEMPORAL_ADDRESS=127.0.0.1:<port>" */
  fix: string;
}

export async function assertPortsFree(claims: PortClaim[]): Promise<void> {
  for (const claim of claims) {
    if (!(await isPortFree(claim.host, claim.port))) {
      throw new StackError(
        `port ${formatHostPort(claim.host, claim.port)} (${claim.what}) is already in use by another process ` +
          `(find it with: lsof -iTCP:${claim.port} -sTCP:LISTEN); stop it or ${claim.fix}`,
      );
    }
  }
}

/** Alive and not a zombie. */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    // Linux: a zombie still answers kill(0); its state letter follows the "(comm)" field.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

/**
 * Whether `pid` is a process we started for this state folder: its command line mentions the
 * folder (db file or data dir). Where /proc is unavailable (macOS) a live pid is trusted.
 */
export function isOurProcess(pid: number, marker: string): boolean {
  if (!isProcessAlive(pid)) return false;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').some((arg) => arg.includes(marker));
  } catch {
    return true;
  }
}

export async function readPidFile(pidFile: string): Promise<number | null> {
  try {
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal); // the whole process group: we start each service as a group leader
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** TERM, then KILL after `graceMs`. Resolves once the process is gone. */
export async function terminate(pid: number, graceMs: number): Promise<'terminated' | 'killed' | 'not-running'> {
  if (!isProcessAlive(pid)) return 'not-running';
  signalGroup(pid, 'SIGTERM');
  const termDeadline = Date.now() + graceMs;
  while (Date.now() < termDeadline) {
    if (!isProcessAlive(pid)) return 'terminated';
    await sleep(100);
  }
  signalGroup(pid, 'SIGKILL');
  const killDeadline = Date.now() + 5_000;
  while (Date.now() < killDeadline && isProcessAlive(pid)) await sleep(50);
  return 'killed';
}

/** Last meaningful log line after `fromByte`, shortened, for error messages. JSON logs give msg+error. */
function lastLogLine(logFile: string, fromByte = 0): string | undefined {
  let text: string;
  try {
    const buffer = readFileSync(logFile);
    text = buffer.subarray(Math.max(fromByte, buffer.length - 16_384)).toString('utf8');
  } catch {
    return undefined;
  }
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('--- refinery stack'));
  const line = lines.at(-1);
  if (!line) return undefined;
  let shown = line;
  try {
    const record = JSON.parse(line) as { msg?: unknown; error?: unknown };
    if (typeof record.msg === 'string') shown = record.error ? `${record.msg}: ${String(record.error)}` : record.msg;
  } catch {
    // plain text
  }
  return shown.length > 200 ? `${shown.slice(0, 197)}...` : shown;
}

// ------------------------------------------------------------------------------------------------
// Launching a detached service and waiting for it

/** A running service started by this stack manager. */
export interface ServiceHandle {
  readonly service: ServiceName;
  readonly pid: number;
  readonly logFile: string;
  readonly pidFile: string;
  /** TERM, KILL after `graceMs` (default 10 s); removes the pid file. Data stays. */
  stop(options?: { graceMs?: number }): Promise<void>;
}
/** Health probe result: ok, or why not (the last reason ends up in the timeout message). */
export type Probe = { ok: true } | { ok: false; reason: string };

export interface LaunchSpec {
  service: ServiceName;
  label: string;
  binary: string;
  args: string[];
  env?: Record<string, string>;
  stateDir: string;
  timeoutMs: number;
  stopOnExit: boolean;
  probe: (timeoutMs: number) => Promise<Probe>;
}

export interface Launched {
  pid: number;
  paths: ServicePaths;
  stop: (options?: { graceMs?: number }) => Promise<void>;
}

export async function launch(spec: LaunchSpec): Promise<Launched> {
  const paths = servicePaths(spec.stateDir, spec.service);
  await mkdir(path.dirname(paths.logFile), { recursive: true });
  await mkdir(path.dirname(paths.pidFile), { recursive: true });

  const fd = openSync(paths.logFile, 'a');
  let logStart: number;
  // execa's types list only fds 3-9, but any fd number goes straight to child_process.spawn().
  const logFd = fd as 3;
  let subprocess;
  try {
    writeSync(fd, `\n--- refinery stack: starting ${spec.service} at ${new Date().toISOString()} ---\n`);
    logStart = readFileSync(paths.logFile).length;
    // Own process group (detached), output straight to the log file, no shell: it outlives us.
    subprocess = execa(spec.binary, spec.args, {
      cwd: spec.stateDir,
      env: spec.env ?? {},
      extendEnv: true,
      detached: true,
      cleanup: false,
      reject: false,
      stdin: 'ignore',
      stdout: logFd,
      stderr: logFd,
    });
  } finally {
    closeSync(fd); // the child holds its own copy
  }
  let exit: { code: number | undefined; signal: string | undefined } | null = null;
  const exited = subprocess.then((result) => {
    exit = { code: result.exitCode, signal: result.signal };
  });
  const pid = subprocess.pid;
  if (pid === undefined) {
    await exited;
    throw new StackError(`could not start ${spec.label} (${spec.binary}): spawn failed; ${BOOTSTRAP_FIX}`);
  }
  subprocess.unref();
  await writeFile(paths.pidFile, `${pid}\n`);

  const onExit = () => signalGroup(pid, 'SIGKILL');
  if (spec.stopOnExit) process.once('exit', onExit);

  let stopped = false;
  const stop = async ({ graceMs = DEFAULT_GRACE_MS }: { graceMs?: number } = {}) => {
    if (stopped) return;
    stopped = true;
    process.removeListener('exit', onExit);
    if (exit === null) await terminate(pid, graceMs);
    await rm(paths.pidFile, { force: true });
  };

  const deadline = Date.now() + spec.timeoutMs;
  let last: Probe = { ok: false, reason: 'not checked yet' };
  for (;;) {
    if (exit !== null) {
      await stop();
      const { code, signal } = exit as { code: number | undefined; signal: string | undefined };
      const how = signal ? `was killed by ${signal}` : `exited with code ${code ?? '?'}`;
      const line = lastLogLine(paths.logFile, logStart);
      throw new StackError(`${spec.label} ${how} during startup${line ? ` (last log line: ${line})` : ''}; see ${paths.logFile}`);
    }
    const remaining = deadline - Date.now();
    if (remaining <= 0) break;
    last = await spec.probe(Math.min(3_000, Math.max(remaining, 500)));
    if (last.ok) return { pid, paths, stop };
    await Promise.race([sleep(POLL_MS), exited]);
  }
  await stop({ graceMs: 3_000 });
  throw new StackError(
    `${spec.label} did not become healthy within ${Math.round(spec.timeoutMs / 1000)} s ` +
      `(last check: ${last.ok ? 'ok' : last.reason}); see ${paths.logFile}`,
  );
}

/** The first line of an error's message, at most 200 characters, for one-line errors. */
export function errorText(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.split('\n')[0]!.slice(0, 200);
}
