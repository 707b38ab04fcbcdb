/**
 * Training workers as their own OS processes (`bin/refinery worker --no-control`), so that a test
 * or a fault can SIGKILL them; each with its own scratch dir and the job command of the caller's choosing.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { REPO_ROOT } from '../../config/paths.js';
import { sleep, waitFor } from './wait.js';

export interface SpawnWorkerOptions {
  name: string;
  queue: string;
  scratch: string;
  /** What points it at the stack (stackEnv / PrivateStack.env()). */
  stackEnv: Record<string, string>;
  /** REFINERY_JOB_COMMAND: the argv of every job it launches. */
  jobCommand: string[];
  /** Also the control worker (workflows, control activities); default: training only (`--no-control`). */
  control?: boolean;
  /** Sets REFINERY_PYTHON. */
  python?: string;
  /** More variables, last (they override the above). */
  env?: Record<string, string>;
  /** Its stdout and stderr go to `<logDir>/<name>.log`, and spawn() waits until it says `[worker]`; without: ignored. */
  logDir?: string;
  /** Without logDir: wait for its stdout's `[worker]` line (stderr ignored). */
  waitReady?: boolean;
  /** How long spawn() waits for it to be ready (default 60 s). */
  readyTimeoutMs?: number;
}

export class WorkerProcess {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  killedByUs = false;

  private constructor(
    readonly name: string,
    readonly queue: string,
    readonly scratch: string,
    readonly logFile: string | undefined,
    private readonly child: ChildProcess,
  ) {
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
      });
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  get alive(): boolean {
    return this.exitInfo === undefined;
  }

  /** `bin/refinery worker [--no-control] --queue Q --scratch DIR`. */
  static async spawn(opts: SpawnWorkerOptions): Promise<WorkerProcess> {
    await mkdir(opts.scratch, { recursive: true });
    const env = {
      ...process.env,
      ...opts.stackEnv,
      ...(opts.python ? { REFINERY_PYTHON: opts.python } : {}),
      REFINERY_JOB_COMMAND: JSON.stringify(opts.jobCommand),
      // Tests and faults inject job crashes on purpose, all on this one host: only a test of
      // quarantine itself (which sets it) may quarantine the host (worker/host-health.ts).
      REFINERY_QUARANTINE_AFTER: '1000',
      ...opts.env,
    };
    const argv = ['worker', ...(opts.control ? [] : ['--no-control']), '--queue', opts.queue, '--scratch', opts.scratch];
    const bin = path.join(REPO_ROOT, 'bin', 'refinery');
    const readyTimeoutMs = opts.readyTimeoutMs ?? 60_000;
    if (!opts.logDir) {
      const child = spawn(bin, argv, { env, stdio: ['ignore', opts.waitReady ? 'pipe' : 'ignore', 'ignore'] });
      const w = new WorkerProcess(opts.name, opts.queue, opts.scratch, undefined, child);
      if (!opts.waitReady) return w;
      const ready = await new Promise<string>((resolve) => {
        const timer = setTimeout(() => resolve('timeout'), readyTimeoutMs);
        createInterface({ input: child.stdout! }).on('line', (line) => {
          if (line.startsWith('[worker]')) {
            clearTimeout(timer);
            resolve('ready');
          }
        });
        void w.exited.then(() => resolve('exited'));
      });
      if (ready !== 'ready') throw new Error(`training worker ${opts.name} did not start (${ready})`);
      return w;
    }
    await mkdir(opts.logDir, { recursive: true });
    const logFile = path.join(opts.logDir, `${opts.name}.log`);
    const fd = openSync(logFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn(bin, argv, { env, stdio: ['ignore', fd, fd] });
    } finally {
      closeSync(fd);
    }
    const w = new WorkerProcess(opts.name, opts.queue, opts.scratch, logFile, child);
    // Ready once it says so on stdout (it polls right after).
    const ready = await Promise.race([
      waitFor(() => readFileSync(logFile, 'utf8').includes('[worker]'), readyTimeoutMs, 100).then((ok) => (ok ? 'ready' : 'timeout')),
      w.exited.then(() => 'exited'),
    ]);
    if (ready !== 'ready') throw new Error(`training worker ${opts.name} did not start (${ready}); see ${logFile}`);
    return w;
  }

  /** Sends `signal` (default SIGKILL) without waiting for the exit. */
  signal(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.killedByUs = true;
    if (this.alive) this.child.kill(signal);
  }

  async kill9(): Promise<void> {
    this.killedByUs = true;
    if (!this.alive) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }

  async stop(): Promise<void> {
    this.killedByUs = true;
    if (!this.alive) return;
    this.child.kill('SIGTERM');
    const done = await Promise.race([this.exited.then(() => true), sleep(10_000).then(() => false)]);
    if (!done) await this.kill9();
  }

  logTail(lines = 20): string {
    if (!this.logFile) return '';
    try {
      return readFileSync(this.logFile, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }
}
