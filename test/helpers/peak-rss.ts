/**
 * Runs a command and reports its peak resident memory: the kernel's own high-water mark (VmHWM in
 * /proc/<pid>/status) of the process and of every descendant, read every 50 ms while they live.
 * bin/refinery execs node, so the pid execa starts is the CLI's node process itself.
 */
import { readdir, readFile } from 'node:fs/promises';
import { execa, type Options } from 'execa';

export interface PeakRssResult {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
  /** The largest VmHWM seen, in bytes, of the process or any one descendant. */
  peakRssBytes: number;
  /** The sum over the process and its descendants of each one's VmHWM: an upper bound of their peak together. */
  peakRssSumBytes: number;
}

async function hwmOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const kb = /^VmHWM:\s+(\d+) kB/m.exec(status)?.[1];
  return kb ? Number(kb) * 1024 : 0;
}

async function childrenOf(pid: number): Promise<number[]> {
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  const out: number[] = [];
  for (const t of tasks) {
    const list = await readFile(`/proc/${pid}/task/${t}/children`, 'utf8').catch(() => '');
    for (const c of list.trim().split(/\s+/)) if (c) out.push(Number(c));
  }
  return out;
}

export async function runMeasuringPeakRss(file: string, args: string[], options: Options = {}): Promise<PeakRssResult> {
  const child = execa(file, args, { reject: false, ...options });
  let peak = 0;
  const peaks = new Map<number, number>();
  let done = false;
  const sample = async () => {
    const pids = [child.pid!];
    for (let i = 0; i < pids.length; i++) pids.push(...(await childrenOf(pids[i]!)));
    for (const pid of pids) {
      const hwm = await hwmOf(pid);
      peak = Math.max(peak, hwm);
      peaks.set(pid, Math.max(peaks.get(pid) ?? 0, hwm));
    }
  };
  const sampler = (async () => {
    while (!done) {
      if (child.pid) await sample();
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const result = await child;
  done = true;
  await sampler;
  return { exitCode: result.exitCode, stdout: String(result.stdout ?? ''), stderr: String(result.stderr ?? ''), peakRssBytes: peak, peakRssSumBytes: [...peaks.values()].reduce((x, y) => x + y, 0) };
}
