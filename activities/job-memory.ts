/**
 * A job's memory: an optional limit of its own (a memory cgroup per job, REFINERY_JOB_MEMORY_LIMIT),
 * and whether the kernel's OOM killer ended it. With a cgroup the kernel counts the job's own OOM
 * kills; without one, a job killed by SIGKILL that the worker did not send while the host's OOM-kill
 * count rose (/proc/vmstat) was, with high likelihood, the OOM killer's victim.
 *
 * Linux only; cgroup v1 (memory controller) and v2. Where the worker may not create cgroups the job
 * runs without a limit and a warning says so.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** The supervisor (job-process.ts) moves itself into this cgroup before it starts the job. */
export const JOB_CGROUP_ENV = 'REFINERY_JOB_CGROUP';

/** "8G", "512M", "1073741824": bytes. */
export function parseMemoryLimit(raw: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$/i.exec(raw);
  if (!m) throw new Error(`REFINERY_JOB_MEMORY_LIMIT="${raw}": expected a size such as 8G or 512M`);
  const unit = (m[2] ?? 'B').toUpperCase()[0]!;
  const scale = { B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[unit as 'B' | 'K' | 'M' | 'G' | 'T'];
  return Math.floor(Number(m[1]) * scale);
}

/** The host-wide OOM-kill count (kernel ≥ 4.13), or undefined. */
export function hostOomKills(): number | undefined {
  try {
    const m = /^oom_kill (\d+)$/m.exec(readFileSync('/proc/vmstat', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

interface CgroupPaths {
  dir: string;
  limitFile: string;
  countersFile: string;
}

/** This process's memory cgroup directory (v1 memory controller, or the v2 unified one). */
function ownMemoryCgroup(): { version: 1 | 2; dir: string } | undefined {
  let lines: string[];
  try {
    lines = readFileSync('/proc/self/cgroup', 'utf8').trim().split('\n');
  } catch {
    return undefined;
  }
  for (const line of lines) {
    const [, controllers, rel] = line.split(':');
    if (controllers?.split(',').includes('memory') && rel !== undefined) {
      for (const dir of [path.join('/sys/fs/cgroup/memory', rel), '/sys/fs/cgroup/memory']) if (existsSync(path.join(dir, 'memory.limit_in_bytes'))) return { version: 1, dir };
    }
  }
  const unified = lines.find((l) => l.startsWith('0::'));
  if (unified) {
    const dir = path.join('/sys/fs/cgroup', unified.slice(3));
    if (existsSync(path.join(dir, 'cgroup.controllers'))) return { version: 2, dir };
  }
  return undefined;
}

function readOomKills(file: string): number {
  try {
    const m = /^oom_kill (\d+)$/m.exec(readFileSync(file, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** A job's own memory cgroup: created before it starts, read and removed after it ends. */
export class JobMemoryCgroup {
  private constructor(private readonly paths: CgroupPaths) {}

  get dir(): string {
    return this.paths.dir;
  }

  /** A new cgroup limited to `limitBytes`, or an Error saying why there is none. */
  static async create(name: string, limitBytes: number): Promise<JobMemoryCgroup | Error> {
    const own = ownMemoryCgroup();
    if (!own) return new Error('no memory cgroup found for this process (/proc/self/cgroup)');
    const dir = path.join(own.dir, name);
    const paths: CgroupPaths =
      own.version === 1
        ? { dir, limitFile: path.join(dir, 'memory.limit_in_bytes'), countersFile: path.join(dir, 'memory.oom_control') }
        : { dir, limitFile: path.join(dir, 'memory.max'), countersFile: path.join(dir, 'memory.events') };
    try {
      await mkdir(dir);
      if (own.version === 1) await writeFile(path.join(dir, 'memory.memsw.limit_in_bytes'), String(limitBytes)).catch(() => undefined);
      await writeFile(paths.limitFile, String(limitBytes));
      return new JobMemoryCgroup(paths);
    } catch (err) {
      await rmdir(dir).catch(() => undefined);
      return new Error(`cannot create memory cgroup ${dir}: ${String(err)}`);
    }
  }

  /** OOM kills inside this job's cgroup so far. */
  oomKills(): number {
    return readOomKills(this.paths.countersFile);
  }

  /** Removes the (empty, once the job is gone) cgroup. */
  async remove(): Promise<void> {
    for (let i = 0; i < 20; i++) {
      try {
        await rmdir(this.paths.dir);
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 100)); // its last process may still be exiting
      }
    }
  }
}

/** The words an out-of-memory error is written in by PyTorch (CUDA, HIP, MPS) and Python. */
export const OOM_TEXT = /CUDA out of memory|HIP out of memory|MPS backend out of memory|OutOfMemoryError|\bMemoryError\b/;
