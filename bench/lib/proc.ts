/** CPU time and memory of processes, from /proc (Linux). */
import { readFileSync } from 'node:fs';
import { execa } from 'execa';

const CLK_TCK = 100; // USER_HZ on Linux

export interface ProcCpu {
  /** user+system seconds of the process itself */
  self: number;
  /** user+system seconds of its reaped children */
  children: number;
}

export function procCpu(pid: number | 'self'): ProcCpu | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields after "(comm)": state=0 … utime=11 stime=12 cutime=13 cstime=14
    return { self: (Number(f[11]) + Number(f[12])) / CLK_TCK, children: (Number(f[13]) + Number(f[14])) / CLK_TCK };
  } catch {
    return undefined;
  }
}

/** Resident set size in bytes (VmRSS). */
export function procRss(pid: number | 'self'): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Busy and total CPU seconds of the whole machine (all cores), from /proc/stat. */
export function machineCpu(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  const total = v.reduce((a, b) => a + b, 0);
  return { busy: (total - idle) / CLK_TCK, total: total / CLK_TCK };
}

/** Runs a command under bash's `time`; returns wall ms and the command's user+sys CPU seconds. */
export async function timedCommand(argv: string[], env: Record<string, string> = {}): Promise<{ ms: number; cpu: number; stdout: string }> {
  const script = 'TIMEFORMAT="__CPU__ %U %S"; time "$@"';
  const t0 = performance.now();
  const r = await execa('bash', ['-c', script, 'bash', ...argv], { env: { ...process.env, ...env }, reject: false, all: false });
  const ms = performance.now() - t0;
  const m = /__CPU__ ([\d.]+) ([\d.]+)/.exec(r.stderr);
  if (r.exitCode !== 0) throw new Error(`${argv.join(' ')} exited ${r.exitCode}: ${r.stderr.replace(/__CPU__.*$/m, '').trim().slice(-2000)}`);
  return { ms, cpu: m ? Number(m[1]) + Number(m[2]) : NaN, stdout: r.stdout };
}

/** Samples peak RSS of some processes every `intervalMs`, until stopped. */
export function rssSampler(pids: Record<string, number | 'self' | undefined>, intervalMs = 500): { stop: () => Record<string, number> } {
  const peak: Record<string, number> = {};
  const sample = () => {
    for (const [name, pid] of Object.entries(pids)) {
      if (pid === undefined) continue;
      const rss = procRss(pid);
      if (rss !== undefined) peak[name] = Math.max(peak[name] ?? 0, rss);
    }
  };
  sample();
  const timer = setInterval(sample, intervalMs);
  return {
    stop: () => {
      clearInterval(timer);
      sample();
      return peak;
    },
  };
}
