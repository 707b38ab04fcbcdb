/**
 * What a training worker would run a stage with, as part of the stage's cache key: an output is
 * reused only when it was trained by the same toolchain. Each training worker describes its own at
 * startup (the `describeToolchain` activity hands it to the run, activities/run-stage-job.ts):
 *
 *   contract      the job contract version (activities/job-contract.ts)
 *   workerOutput  WORKER_OUTPUT_VERSION: bumped when the worker changes what it adds to an output
 *                 (e.g. gguf_check.json); the worker's other code does not shape outputs
 *   jobs          the job code and its pinned requirements (jobs-version.ts)
 *   trainer       the job command per kind: argv with the interpreter or binary by name, and the
 *                 sha256 of every file it names (the binary, a script) — another trainer, or a new
 *                 version of it, is another key
 *   pythonEnv     the Python that runs the jobs: its version and the sha256 of every installed
 *                 distribution's name==version, as importlib.metadata sees them with the worker's
 *                 environment (PYTHONPATH included) — a torch or transformers upgrade is another key
 *   llamaCpp      gguf stages only: the sha256 of llama.cpp's convert script and llama-quantize
 *
 * Paths are not part of it (two machines with the same environment in different places agree);
 * contents and versions are.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { JOB_CONTRACT_VERSION } from '../activities/job-contract.js';
import type { StageKind } from '../spec/schema.js';
import { canonicalJson } from '../storage/canonical-json.js';
import { jobsVersion } from './jobs-version.js';

/** Bump when the worker changes what it writes into a stage's output beside the job's files. */
export const WORKER_OUTPUT_VERSION = 1;

export interface TrainerPart {
  /** The job command, its first element by name only. */
  argv: string[];
  /** sha256 of each argv element that is a file (the interpreter or binary, a script), by position. */
  files: Record<string, string>;
}

export interface ToolchainParts {
  contract: number;
  workerOutput: number;
  jobs: string;
  /** By stage kind (the command may differ per kind). */
  trainer: Partial<Record<StageKind, TrainerPart>>;
  pythonEnv: { python: string; distributions: number; sha256: string } | null;
  llamaCpp: { convert: string | null; quantize: string | null };
}

export interface WorkerToolchain {
  parts: ToolchainParts;
  /** The digest a stage of `kind` is keyed with on this worker. */
  digest(kind: StageKind): string;
}

/** The parts that shape a stage of `kind`: llama.cpp only matters to gguf. */
export function toolchainDigest(parts: ToolchainParts, kind: StageKind): string {
  const material = {
    v: 1,
    contract: parts.contract,
    workerOutput: parts.workerOutput,
    jobs: parts.jobs,
    trainer: parts.trainer[kind] ?? null,
    pythonEnv: parts.pythonEnv,
    ...(kind === 'gguf' ? { llamaCpp: parts.llamaCpp } : {}),
  };
  return `tc-${createHash('sha256').update(canonicalJson(material)).digest('hex').slice(0, 20)}`;
}

/** Which parts two toolchains differ in (for a mismatch's message). */
export function toolchainDifferences(a: ToolchainParts, b: ToolchainParts, kind: StageKind): string[] {
  const pick = (p: ToolchainParts) => ({
    'job contract': p.contract,
    'worker output version': p.workerOutput,
    'job code': p.jobs,
    trainer: p.trainer[kind] ?? null,
    'python environment': p.pythonEnv,
    ...(kind === 'gguf' ? { 'llama.cpp tools': p.llamaCpp } : {}),
  });
  const [x, y] = [pick(a), pick(b)];
  return Object.keys(x).filter((k) => canonicalJson((x as Record<string, unknown>)[k]) !== canonicalJson((y as Record<string, unknown>)[k]));
}

export interface DescribeOptions {
  /** The job command per kind (worker/create-workers.ts). */
  jobCommand: (kind: StageKind) => [string, ...string[]];
  /** The kinds to describe the trainer of. */
  kinds: readonly StageKind[];
  /** The Python environment of the jobs (also the preflight's). */
  python: string;
  /** llama.cpp tools as the gguf job gets them (config/worker.ts llamaCppToolEnv). */
  llamaCppEnv: Record<string, string>;
  /** The environment the jobs run with (PYTHONPATH decides what Python sees). */
  env?: NodeJS.ProcessEnv;
  jobsDir?: string;
}

export async function describeWorkerToolchain(options: DescribeOptions): Promise<WorkerToolchain> {
  const hashes = new Map<string, Promise<string | null>>();
  const hashOnce = (file: string) => {
    if (!hashes.has(file)) hashes.set(file, sha256OfFile(file));
    return hashes.get(file)!;
  };
  const trainer: ToolchainParts['trainer'] = {};
  for (const kind of options.kinds) {
    const argv = options.jobCommand(kind);
    const files: Record<string, string> = {};
    for (const [i, arg] of argv.entries()) {
      const file = i === 0 ? await resolveExecutable(arg, options.env) : path.isAbsolute(arg) || arg.includes('/') ? arg : undefined;
      const sha = file ? await hashOnce(file) : null;
      if (sha) files[String(i)] = sha;
    }
    // Files by name (their contents are in `files`): the same trainer installed elsewhere agrees.
    trainer[kind] = { argv: argv.map((a, i) => (i === 0 || files[String(i)] ? path.basename(a) : a)), files };
  }
  const [jobs, pythonEnv, convert, quantize] = await Promise.all([
    jobsVersion(options.jobsDir),
    describePythonEnv(options.python, options.env),
    options.llamaCppEnv.REFINERY_LLAMA_CPP_CONVERT ? hashOnce(options.llamaCppEnv.REFINERY_LLAMA_CPP_CONVERT) : Promise.resolve(null),
    options.llamaCppEnv.REFINERY_LLAMA_QUANTIZE ? hashOnce(options.llamaCppEnv.REFINERY_LLAMA_QUANTIZE) : Promise.resolve(null),
  ]);
  const parts: ToolchainParts = { contract: JOB_CONTRACT_VERSION, workerOutput: WORKER_OUTPUT_VERSION, jobs, trainer, pythonEnv, llamaCpp: { convert, quantize } };
  return { parts, digest: (kind) => toolchainDigest(parts, kind) };
}

/**
 * The jobs' Python as it resolves packages: its version and every distribution's name==version
 * (sorted, hashed). Null when that Python cannot run (the preflight reports it; the key says so).
 */
async function describePythonEnv(python: string, env: NodeJS.ProcessEnv = process.env): Promise<ToolchainParts['pythonEnv']> {
  const script = [
    'import importlib.metadata as m, json, sys',
    "names = sorted({(d.metadata['Name'] or '').lower() + '==' + d.version for d in m.distributions()})",
    'print(json.dumps({"python": sys.version.split()[0], "distributions": names}))',
  ].join('\n');
  const r = await execa(python, ['-c', script], { env, extendEnv: false, reject: false, timeout: 60_000 });
  if (r.exitCode !== 0) return null;
  try {
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { python: string; distributions: string[] };
    return { python: out.python, distributions: out.distributions.length, sha256: createHash('sha256').update(out.distributions.join('\n')).digest('hex') };
  } catch {
    return null;
  }
}

/** The file argv[0] runs: a path as given, else the first match on PATH. */
async function resolveExecutable(command: string, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  if (command.includes('/')) return command;
  for (const dir of (env.PATH ?? '').split(':').filter(Boolean)) {
    const candidate = path.join(dir, command);
    if (await stat(candidate).then((s) => s.isFile(), () => false)) return candidate;
  }
  return undefined;
}

async function sha256OfFile(file: string): Promise<string | null> {
  if (!(await stat(file).then((s) => s.isFile(), () => false))) return null;
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
