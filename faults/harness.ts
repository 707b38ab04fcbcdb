/**
 * The fault suite's machinery: a private stack (Temporal dev server + MinIO on free ports in a temp
 * state dir, never the user's), training workers as separate OS processes, a size-limited scratch
 * filesystem, and small process and polling helpers. faults/run.ts drives it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { bundleWorkflowCode, DefaultLogger, NativeConnection, Runtime, type Worker } from '@temporalio/worker';
import { execa } from 'execa';
import {
  getFreePort,
  isPortFree,
  isProcessAlive,
  readToolchain,
  startMinio,
  startTemporal,
  type MinioHandle,
  type TemporalHandle,
  type Toolchain,
} from '../infra/stack.js';
import { ObjectStore } from '../storage/object-store.js';
import { REPO_ROOT } from '../config/paths.js';
import { createWorkers } from '../worker/create-workers.js';

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Polls `fn` until it returns something truthy (errors count as "not yet"); undefined on timeout. */
export async function waitFor<T>(fn: () => Promise<T | undefined | null | false> | T | undefined | null | false, timeoutMs: number, everyMs = 100): Promise<T | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let v: T | undefined | null | false;
    try {
      v = await fn();
    } catch {
      v = undefined;
    }
    if (v) return v;
    if (Date.now() > deadline) return undefined;
    await sleep(everyMs);
  }
}

/** mulberry32: small, fast, seeded. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
  shuffle<T>(items: readonly T[]): T[] {
    const out = [...items];
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [out[i], out[j]] = [out[j]!, out[i]!];
    }
    return out;
  }
}

// ------------------------------------------------------------------------------------------------
// The private stack

export interface StackInfo {
  stateDir: string;
  temporalAddress: string;
  namespace: string;
  s3Endpoint: string;
  accessKey: string;
  secretKey: string;
  bucket: string;
}

export class PrivateStack {
  private constructor(
    readonly info: StackInfo,
    private readonly toolchain: Toolchain,
    private readonly ports: { temporal: number; minio: number; console: number },
    public temporal: TemporalHandle,
    public minio: MinioHandle,
  ) {}

  static async start(toolchain: Toolchain = readToolchain()): Promise<PrivateStack> {
    const stateDir = await mkdtemp(path.join(tmpdir(), 'refinery-faults-'));
    const ports = { temporal: await stablePort(), minio: await stablePort(), console: await stablePort() };
    const accessKey = `faults-access-${process.pid}`;
    const secretKey = `faults-secret-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
    const bucket = 'refinery-faults';
    const namespace = 'refinery-faults';
    const [temporal, minio] = await Promise.all([
      startTemporal({ stateDir, port: ports.temporal, namespace, headless: true, stopOnExit: true, binary: toolchain.temporal, timeoutMs: 120_000 }),
      startMinio({ stateDir, port: ports.minio, consolePort: ports.console, accessKey, secretKey, bucket, stopOnExit: true, binary: toolchain.minio, timeoutMs: 120_000 }),
    ]);
    return new PrivateStack(
      { stateDir, temporalAddress: temporal.address, namespace, s3Endpoint: minio.endpoint, accessKey, secretKey, bucket },
      toolchain,
      ports,
      temporal,
      minio,
    );
  }

  /** What a worker, the client code and ObjectStore read. */
  env(): Record<string, string> {
    const s = this.info;
    return {
      TEMPORAL_ADDRESS: s.temporalAddress,
      TEMPORAL_NAMESPACE: s.namespace,
      REFINERY_S3_ENDPOINT: s.s3Endpoint,
      REFINERY_S3_ACCESS_KEY: s.accessKey,
      REFINERY_S3_SECRET_KEY: s.secretKey,
      REFINERY_BUCKET: s.bucket,
    };
  }

  store(): ObjectStore {
    const s = this.info;
    const url = new URL(s.s3Endpoint);
    return new ObjectStore({ endPoint: url.hostname, port: Number(url.port), useSSL: false, accessKey: s.accessKey, secretKey: s.secretKey, bucket: s.bucket, region: 'us-east-1' });
  }

  minioDataDir(): string {
    return path.join(this.info.stateDir, 'minio', 'data');
  }

  /** kill -9 the Temporal dev server (its whole process group). */
  async killTemporal(): Promise<void> {
    await killGroupAndWait(this.temporal.pid);
    await this.temporal.stop({ graceMs: 0 }); // removes the pid file and the exit hook; the process is gone
  }

  /** Starts the dev server again on the same database file and port. */
  async restartTemporal(): Promise<void> {
    this.temporal = await whilePortBusy(() => startTemporal({
      stateDir: this.info.stateDir,
      port: this.ports.temporal,
      namespace: this.info.namespace,
      headless: true,
      stopOnExit: true,
      binary: this.toolchain.temporal,
      timeoutMs: 120_000,
    }));
  }

  /** kill -9 MinIO (no graceful shutdown: in-flight uploads are cut). */
  async killMinio(): Promise<void> {
    await killGroupAndWait(this.minio.pid);
    await this.minio.stop({ graceMs: 0 });
  }

  async restartMinio(): Promise<void> {
    this.minio = await whilePortBusy(() => startMinio({
      stateDir: this.info.stateDir,
      port: this.ports.minio,
      consolePort: this.ports.console,
      accessKey: this.info.accessKey,
      secretKey: this.info.secretKey,
      bucket: this.info.bucket,
      stopOnExit: true,
      binary: this.toolchain.minio,
      timeoutMs: 120_000,
    }));
  }

  async stop(keep = false): Promise<void> {
    await Promise.all([this.temporal.stop({ graceMs: 3000 }), this.minio.stop({ graceMs: 3000 })]);
    if (!keep) await rm(this.info.stateDir, { recursive: true, force: true });
  }
}

/**
 * A free port below the kernel's ephemeral range. The services are restarted on their ports while
 * clients keep reconnecting; with a port in the ephemeral range, such a client can be handed the
 * very port as its own source port (a TCP self-connect) and hold it, so the restart finds it taken.
 */
export async function stablePort(): Promise<number> {
  let ephemeralLow = 32768;
  try {
    ephemeralLow = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || ephemeralLow;
  } catch {
    // not Linux: assume the IANA range starts higher still
  }
  const lo = 10_000;
  const hi = ephemeralLow - 1;
  for (let i = 0; hi - lo > 1000 && i < 200; i++) {
    const port = lo + Math.floor(Math.random() * (hi - lo));
    if (await isPortFree('127.0.0.1', port)) return port;
  }
  return getFreePort();
}

/** Retries a service start while its port is still taken (sockets of the killed process, a client's self-connect). */
async function whilePortBusy<T>(start: () => Promise<T>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await start();
    } catch (err) {
      if (!/already in use/.test((err as Error).message) || Date.now() > deadline) throw err;
      await sleep(500);
    }
  }
}

async function killGroupAndWait(pid: number): Promise<void> {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  await waitFor(() => !isProcessAlive(pid), 10_000, 20);
}

// ------------------------------------------------------------------------------------------------
// The control worker (workflows + control activities) in this process

export interface ControlWorker {
  workers: Worker[];
  /** Rejects if a worker fails (e.g. it could not survive a server restart). */
  run: Promise<void>;
  shutdown(): Promise<void>;
}

export async function startControlWorker(stack: PrivateStack, python: string, scratchDir: string): Promise<ControlWorker> {
  try {
    // The SDK logs every worker state change at INFO and every failed activity attempt (expected here) at WARN.
    // Core's own retry warnings (a server that is down on purpose) go through the same logger.
    Runtime.install({ logger: new DefaultLogger('ERROR'), telemetryOptions: { logging: { filter: { core: 'ERROR', other: 'ERROR' }, forward: {} } } });
  } catch {
    // a runtime is already installed in this process (e.g. by a test): keep it
  }
  const quiet = { log: () => undefined, trace: () => undefined, debug: () => undefined, info: () => undefined, warn: () => undefined, error: (m: string) => console.error(m) };
  const [connection, bundle] = await Promise.all([
    NativeConnection.connect({ address: stack.info.temporalAddress }),
    bundleWorkflowCode({ workflowsPath: path.join(REPO_ROOT, 'workflows', 'index.ts'), logger: quiet }),
  ]);
  const workers = await createWorkers({
    connection,
    namespace: stack.info.namespace,
    store: stack.store(),
    control: true,
    trainingQueues: [],
    gpus: [],
    scratchDir,
    python,
    workflowBundle: bundle,
    shutdownGraceTime: '2s',
  });
  const run = Promise.all(workers.map((w) => w.run())).then(() => undefined);
  return {
    workers,
    run,
    shutdown: async () => {
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
      await run.catch(() => undefined);
      await connection.close().catch(() => undefined);
    },
  };
}

export async function connectClient(stack: PrivateStack): Promise<{ client: Client; close: () => Promise<void> }> {
  const connection = await Connection.connect({ address: stack.info.temporalAddress });
  return { client: new Client({ connection, namespace: stack.info.namespace }), close: () => connection.close() };
}

// ------------------------------------------------------------------------------------------------
// Training workers as OS processes

export class WorkerProcess {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  killedByUs = false;

  private constructor(
    readonly name: string,
    readonly queue: string,
    readonly scratch: string,
    readonly logFile: string,
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

  /** `bin/refinery worker --no-control --queue Q --scratch DIR`, the contract test job as its trainer. */
  static async spawn(opts: { name: string; queue: string; scratch: string; logDir: string; env: Record<string, string>; python: string }): Promise<WorkerProcess> {
    await mkdir(opts.scratch, { recursive: true });
    await mkdir(opts.logDir, { recursive: true });
    const logFile = path.join(opts.logDir, `${opts.name}.log`);
    const fd = openSync(logFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn(path.join(REPO_ROOT, 'bin', 'refinery'), ['worker', '--no-control', '--queue', opts.queue, '--scratch', opts.scratch], {
        env: {
          ...process.env,
          ...opts.env,
          REFINERY_PYTHON: opts.python,
          REFINERY_JOB_COMMAND: JSON.stringify([opts.python, '-m', 'refinery_jobs.testjob']),
        },
        stdio: ['ignore', fd, fd],
      });
    } finally {
      closeSync(fd);
    }
    const w = new WorkerProcess(opts.name, opts.queue, opts.scratch, logFile, child);
    // Ready once it says so on stdout (it polls right after).
    const ready = await Promise.race([
      waitFor(() => readFileSync(logFile, 'utf8').includes('[worker]'), 60_000, 100).then((ok) => (ok ? 'ready' : 'timeout')),
      w.exited.then(() => 'exited'),
    ]);
    if (ready !== 'ready') throw new Error(`training worker ${opts.name} did not start (${ready}); see ${logFile}`);
    return w;
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
    try {
      return readFileSync(this.logFile, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Job processes and their progress, seen from the worker's scratch dir

/** Pids of job processes launched by the worker owning `scratch` (their argv names a config under it). */
export async function jobPids(scratch: string): Promise<number[]> {
  const r = await execa('pgrep', ['-f', `${path.join(scratch, 'stages')}/`], { reject: false });
  return r.stdout.split('\n').filter(Boolean).map(Number).filter((pid) => pid !== process.pid);
}

export interface JobProgress {
  /** <scratch>/stages/<cacheKey> */
  dir: string;
  cacheKey: string;
  attempt: number;
  /** Last progress step the worker received (0 before the first). */
  step: number;
  /** Steps of the checkpoint events received, in order. */
  checkpoints: number[];
  resumedFrom: number | null;
  sawDone: boolean;
}

/** Every attempt of `runId`/`stageId` the worker owning `scratch` still has on disk, oldest first. */
export async function jobAttempts(scratch: string, runId: string, stageId: string): Promise<JobProgress[]> {
  const stagesDir = path.join(scratch, 'stages');
  const out: JobProgress[] = [];
  // <scratch>/stages/<cacheKey>/<runId>.<attempt>/ (one folder per attempt; removed when it ends)
  const attemptDirs: { dir: string; cacheKey: string }[] = [];
  for (const cacheKey of await readdir(stagesDir).catch(() => [] as string[])) {
    for (const sub of await readdir(path.join(stagesDir, cacheKey)).catch(() => [] as string[])) attemptDirs.push({ dir: path.join(stagesDir, cacheKey, sub), cacheKey });
  }
  for (const { dir, cacheKey } of attemptDirs) {
    for (const f of await readdir(dir).catch(() => [] as string[])) {
      const m = /^job-config\.attempt-(\d+)\.json$/.exec(f);
      if (!m) continue;
      const attempt = Number(m[1]);
      let cfg: { run_id?: string; stage_id?: string };
      try {
        cfg = JSON.parse(await readFile(path.join(dir, f), 'utf8')) as typeof cfg;
      } catch {
        continue;
      }
      if (cfg.run_id !== runId || cfg.stage_id !== stageId) continue;
      const p: JobProgress = { dir, cacheKey, attempt, step: 0, checkpoints: [], resumedFrom: null, sawDone: false };
      const text = await readFile(path.join(dir, `job.attempt-${attempt}.events.jsonl`), 'utf8').catch(() => '');
      for (const line of text.split('\n')) {
        if (!line.trim()) continue;
        let e: { event?: string; step?: number; resumed_from_step?: number | null };
        try {
          e = JSON.parse(line) as typeof e;
        } catch {
          continue; // a line being written
        }
        if (e.event === 'progress' && typeof e.step === 'number') p.step = e.step;
        else if (e.event === 'checkpoint' && typeof e.step === 'number') p.checkpoints.push(e.step);
        else if (e.event === 'started') p.resumedFrom = e.resumed_from_step ?? null;
        else if (e.event === 'done') p.sawDone = true;
      }
      if (p.resumedFrom !== null && p.step < p.resumedFrom) p.step = p.resumedFrom;
      out.push(p);
    }
  }
  return out.sort((a, b) => a.attempt - b.attempt);
}

/** The newest attempt of `runId`/`stageId` on the worker owning `scratch`, read from its events file. */
export async function jobProgress(scratch: string, runId: string, stageId: string): Promise<JobProgress | undefined> {
  return (await jobAttempts(scratch, runId, stageId)).at(-1);
}

export function aliveAll(pids: number[]): number[] {
  return pids.filter((pid) => isProcessAlive(pid));
}

export function killPids(pids: number[], signal: NodeJS.Signals = 'SIGKILL'): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // gone
    }
  }
}

/** kill -9 a job's whole process group (the worker starts each job as a group leader). */
export function killJobGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    killPids([pid]);
  }
}

// ------------------------------------------------------------------------------------------------
// A small filesystem for a worker's scratch space, to fill up on purpose

export interface SmallFs {
  dir: string;
  how: string;
  fill(): Promise<number>;
  unfill(): Promise<void>;
  release(): Promise<void>;
}

/**
 * A size-limited mount for a worker's scratch: tmpfs if this process may mount (root), else an ext4
 * image on a loop device; undefined (with the reason) when neither works here.
 */
export async function smallFilesystem(parent: string, sizeMb: number): Promise<SmallFs | { unavailable: string }> {
  const dir = path.join(parent, `small-scratch-${Date.now()}`);
  await mkdir(dir, { recursive: true });
  const filler = path.join(dir, 'filler.bin');
  const fs = (how: string, extraRelease: () => Promise<void> = async () => undefined): SmallFs => ({
    dir,
    how,
    fill: () => fillUp(filler),
    unfill: () => rm(filler, { force: true }),
    release: async () => {
      await execa('umount', [dir], { reject: false }).then((r) => (r.exitCode === 0 ? r : execa('umount', ['-l', dir], { reject: false })));
      await extraRelease();
      await rm(dir, { recursive: true, force: true });
    },
  });
  const tmpfs = await execa('mount', ['-t', 'tmpfs', '-o', `size=${sizeMb}m`, 'refinery-faults', dir], { reject: false });
  if (tmpfs.exitCode === 0) return fs(`tmpfs of ${sizeMb} MB`);
  const image = path.join(parent, `small-scratch-${Date.now()}.img`);
  const steps: [string, string[]][] = [
    ['truncate', ['-s', `${sizeMb}M`, image]],
    ['mkfs.ext4', ['-q', '-F', image]],
    ['mount', ['-o', 'loop', image, dir]],
  ];
  for (const [cmd, args] of steps) {
    const r = await execa(cmd, args, { reject: false });
    if (r.exitCode !== 0) {
      await rm(image, { force: true });
      await rm(dir, { recursive: true, force: true });
      return { unavailable: `cannot mount a small filesystem here (tmpfs: ${tmpfs.stderr.trim() || `exit ${tmpfs.exitCode}`}; loop: ${cmd}: ${r.stderr.trim() || `exit ${r.exitCode}`}); the scratch-full fault needs root` };
    }
  }
  return fs(`ext4 image of ${sizeMb} MB on a loop device`, () => rm(image, { force: true }));
}

/** Appends to `file` until the filesystem is full; returns the bytes written. */
async function fillUp(file: string): Promise<number> {
  const chunk = Buffer.alloc(1 << 20, 0x5a);
  const handle = await open(file, 'a');
  let written = 0;
  try {
    for (;;) {
      try {
        const { bytesWritten } = await handle.write(chunk);
        written += bytesWritten;
        if (bytesWritten < chunk.length) break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC' || (err as NodeJS.ErrnoException).code === 'EDQUOT') break;
        throw err;
      }
    }
    // Top up the last partial block: small writes until even those fail.
    for (let size = 4096; size >= 1; size = Math.floor(size / 4)) {
      for (;;) {
        try {
          const { bytesWritten } = await handle.write(Buffer.alloc(size, 0x5a));
          written += bytesWritten;
          if (bytesWritten < size) break;
        } catch {
          break;
        }
      }
    }
  } finally {
    await handle.close().catch(() => undefined);
  }
  return written;
}

/** Whether an object has been written to the (single-drive) MinIO data dir: its xl.meta exists. */
export function objectOnDisk(dataDir: string, bucket: string, key: string): boolean {
  return existsSync(path.join(dataDir, bucket, ...key.split('/'), 'xl.meta'));
}

/** Files of an object prefix present on disk (MinIO xl-single layout), counted. */
export async function objectsOnDisk(dataDir: string, bucket: string, prefix: string): Promise<number> {
  let n = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      if (e.isDirectory()) await walk(path.join(dir, e.name));
      else if (e.name === 'xl.meta') n++;
    }
  };
  const root = path.join(dataDir, bucket, ...prefix.split('/'));
  if (await stat(root).then((s) => s.isDirectory()).catch(() => false)) await walk(root);
  return n;
}
