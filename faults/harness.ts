/**
 * The fault suite's own machinery over the shared harness (infra/harness/: the private stack, its
 * control worker, training worker processes, polling): seeded randomness, job processes and their
 * progress seen from a worker's scratch dir, a size-limited scratch filesystem, objects on MinIO's
 * disk. faults/run.ts drives it.
 */
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { isProcessAlive, type Toolchain } from '../infra/stack.js';
import { PrivateStack } from '../infra/harness/stack.js';
import { WorkerProcess } from '../infra/harness/processes.js';
import { installQuietRuntime, startInProcessWorkers, testJobCommand, type InProcessWorkers } from '../infra/harness/workers.js';

// ------------------------------------------------------------------------------------------------
// The private stack, its control worker in this process, training workers as OS processes

/** The suite's private stack: stable ports (it restarts services on them), fresh credentials. */
export function startFaultStack(toolchain: Toolchain): Promise<PrivateStack> {
  return PrivateStack.start({
    stateDirPrefix: 'refinery-faults-',
    namespace: 'refinery-faults',
    bucket: 'refinery-faults',
    accessKey: `faults-access-${process.pid}`,
    secretKey: `faults-secret-${process.pid}-${Math.random().toString(36).slice(2, 10)}`,
    ports: 'stable',
    toolchain,
    stopGraceMs: 3000,
  });
}

export type ControlWorker = InProcessWorkers;

/** Workflows and control activities in this process. */
export function startControlWorker(stack: PrivateStack, python: string, scratchDir: string): Promise<ControlWorker> {
  // The SDK logs every worker state change at INFO and every failed activity attempt (expected here) at WARN.
  // Core's own retry warnings (a server that is down on purpose) go through the same logger.
  installQuietRuntime('ERROR', true);
  return startInProcessWorkers(stack.info, {
    store: stack.store(),
    control: true,
    trainingQueues: [],
    scratchDir,
    python,
    shutdownGraceTime: '2s',
    lenientShutdown: true,
  });
}

/**
 * A training worker process on `queue` with the contract test job as its trainer, logging to the
 * stack's logs dir; `env` adds to its environment (REFINERY_HOST, REFINERY_GPUS: a bad node).
 */
export function spawnFaultWorker(stack: PrivateStack, python: string, w: { name: string; queue: string; scratch: string; env?: Record<string, string> }): Promise<WorkerProcess> {
  return WorkerProcess.spawn({ ...w, logDir: path.join(stack.info.stateDir, 'logs'), stackEnv: stack.env(), python, jobCommand: testJobCommand(python)('sft') });
}

// ------------------------------------------------------------------------------------------------
// Job processes and their progress, seen from the worker's scratch dir

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
