/**
 * Shared helpers for the benchmarks: the command line (node:util parseArgs), statistics, tables, timing.
 * Every benchmark measures Refinery and its peer in the same run (interleaved repetitions,
 * median) and reports ratios: on a small shared machine absolute times are context only.
 */
import { randomFill } from 'node:crypto';
import { open } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { parseArgs as parseArgv } from 'node:util';

export interface BenchArgs {
  quick: boolean;
  /** --name value / --name=value */
  get(name: string): string | undefined;
  /** --name (no value), or a --name with one */
  has(name: string): boolean;
}

/**
 * A benchmark's command line (node:util parseArgs): `--quick` and the options it names, `values`
 * taking a value (--name value / --name=value) and `flags` not; anything else is an error.
 */
export function parseArgs(options: { values?: string[]; flags?: string[] } = {}, argv: string[] = process.argv.slice(2)): BenchArgs {
  const config: Record<string, { type: 'string' | 'boolean' }> = { quick: { type: 'boolean' } };
  for (const name of options.values ?? []) config[name] = { type: 'string' };
  for (const name of options.flags ?? []) config[name] = { type: 'boolean' };
  const { values, positionals } = parseArgv({ args: argv, options: config, strict: true, allowPositionals: true });
  if (positionals.length > 0) throw new Error(`unexpected argument ${positionals[0]}`);
  const given = values as Record<string, string | boolean | undefined>;
  return {
    quick: given.quick === true,
    get: (n) => (typeof given[n] === 'string' ? given[n] : undefined),
    has: (n) => given[n] !== undefined,
  };
}

/** "2G", "512M", "64k", "1000" → bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!m) throw new Error(`not a size: ${text} (e.g. 2G, 512M)`);
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Math.round(Number(m[1]) * unit);
}

export function fmtBytes(n: number): string {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(2)} GiB`;
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

export function median(xs: number[]): number {
  return percentile(xs, 50);
}

/** Linear-interpolated percentile (p in 0..100); NaN for an empty list. */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const rank = (p / 100) * (s.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return s[lo]! + (s[hi]! - s[lo]!) * (rank - lo);
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export function now(): number {
  return performance.now();
}

/** Runs fn and returns its result with the elapsed wall time in ms. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = performance.now();
  const value = await fn();
  return { ms: performance.now() - t0, value };
}

/** A plain-text table; numbers are right-aligned. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map((c) => (typeof c === 'number' ? String(c) : c)))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[], isHeader = false) =>
    r.map((c, i) => (!isHeader && /^[-+]?[\d.,]+( ?[%×a-zA-Z/]*)?$/.test(c) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(cells[0]!, true), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map((r) => line(r))].join('\n');
}

export function verdict(met: boolean): string {
  return met ? 'MET' : 'NOT MET';
}

/** Writes `size` bytes of random data to `file` (1 MiB blocks). */
export async function writeRandomFile(file: string, size: number): Promise<void> {
  const fh = await open(file, 'w');
  try {
    const block = Buffer.alloc(Math.min(size, 4 * 1024 * 1024));
    let left = size;
    while (left > 0) {
      const n = Math.min(left, block.length);
      await new Promise<void>((resolve, reject) => randomFill(block, 0, n, (err) => (err ? reject(err) : resolve())));
      await fh.write(block, 0, n);
      left -= n;
    }
  } finally {
    await fh.close();
  }
}

/** `f` formatted with `digits` decimals. */
export const fx = (x: number, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : 'n/a');

export function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

/** CPUs and the 1-minute load average (everything on the machine, not just this benchmark). */
export function machineNote(): string {
  const [one] = loadavg();
  return `${cpus().length} CPUs, load average ${one!.toFixed(1)}`;
}
