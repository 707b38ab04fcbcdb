/**
 * What a worker runs its jobs with: the jobs' Python, llama.cpp's tools for the gguf job, and the
 * GPUs it owns. From the environment, falling back to what infra/bootstrap.sh recorded.
 */
import { DEFAULT_INPUT_CACHE_BYTES, GiB } from '../activities/input-cache.js';
import { parseMemoryLimit } from '../activities/job-memory.js';
import { parseDuration } from '../spec/duration.js';
import { recordedToolchain } from './toolchain.js';

/** The Python that runs the jobs: $REFINERY_PYTHON, else the one infra/bootstrap.sh installed. */
export function jobsPython(env: NodeJS.ProcessEnv = process.env): string {
  if (env.REFINERY_PYTHON) return env.REFINERY_PYTHON;
  const python = recordedToolchain(env)?.python;
  if (typeof python === 'string') return python;
  throw new Error(`no Python environment for the jobs: run "bash infra/bootstrap.sh" (or set REFINERY_PYTHON)`);
}

/**
 * The tools the gguf job runs, keyed by the job's variable names: the llama.cpp exporter's two, and
 * the Ollama Modelfile check (infra/ollama-check; without it the job reports the check as skipped).
 */
const LLAMA_CPP_TOOLS = {
  REFINERY_LLAMA_CPP_CONVERT: 'llamaCppConvert',
  REFINERY_LLAMA_QUANTIZE: 'llamaQuantize',
  REFINERY_OLLAMA_CHECK: 'ollamaCheck',
} as const;

/**
 * Where the gguf job finds llama.cpp's convert script and llama-quantize (and the Ollama check): the
 * worker's own REFINERY_LLAMA_CPP_CONVERT / REFINERY_LLAMA_QUANTIZE / REFINERY_OLLAMA_CHECK when set (they reach the job with the rest of
 * its environment), else the ones infra/bootstrap.sh built (toolchain.json). Paths only: nothing
 * secret is read here. Missing tools are reported by the job, and only when a spec asks for them.
 */
export function llamaCppToolEnv(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  let recorded: Record<string, unknown> = {};
  try {
    recorded = recordedToolchain(env) ?? {};
  } catch {
    // an unreadable toolchain.json: the job reports the missing tools if a spec asks for them
  }
  const out: Record<string, string> = {};
  for (const [variable, key] of Object.entries(LLAMA_CPP_TOOLS)) {
    const value = env[variable] || recorded[key];
    if (typeof value === 'string' && value) out[variable] = value;
  }
  return out;
}

/** GPUs this worker owns: REFINERY_GPUS="0,1" (default: none, jobs run on CPU). */
export function workerGpus(env: NodeJS.ProcessEnv = process.env): number[] {
  const raw = env.REFINERY_GPUS?.trim();
  if (!raw) return [];
  return raw.split(',').map((s) => {
    const n = Number(s.trim());
    if (!Number.isInteger(n) || n < 0) throw new Error(`REFINERY_GPUS="${raw}": expected GPU indices such as "0,1"`);
    return n;
  });
}

/** An argv as JSON (never a shell string), or undefined when the variable is unset. */
function argvFromEnv(name: string, env: NodeJS.ProcessEnv): [string, ...string[]] | undefined {
  const raw = env[name];
  if (!raw) return undefined;
  const argv: unknown = JSON.parse(raw);
  if (!Array.isArray(argv) || argv.length === 0 || !argv.every((a) => typeof a === 'string')) {
    throw new Error(`${name} must be a JSON array of strings, e.g. ["python","-m","refinery_jobs.preflight"]`);
  }
  return argv as [string, ...string[]];
}

/**
 * The preflight run before each job: REFINERY_PREFLIGHT_COMMAND (an argv as JSON; "none" for no
 * preflight), else the Python jobs' own (undefined here: createWorkers' default).
 */
export function preflightCommandOverride(env: NodeJS.ProcessEnv = process.env): [string, ...string[]] | null | undefined {
  if (env.REFINERY_PREFLIGHT_COMMAND === 'none') return null;
  return argvFromEnv('REFINERY_PREFLIGHT_COMMAND', env);
}

/** REFINERY_QUARANTINE_AFTER (job failures of different stages) within REFINERY_QUARANTINE_WINDOW (default 3 in 30m). */
export function quarantinePolicy(env: NodeJS.ProcessEnv = process.env): { quarantineAfter?: number; quarantineWindowMs?: number } {
  const after = env.REFINERY_QUARANTINE_AFTER ? Number(env.REFINERY_QUARANTINE_AFTER) : undefined;
  if (after !== undefined && (!Number.isInteger(after) || after < 1)) throw new Error(`REFINERY_QUARANTINE_AFTER="${env.REFINERY_QUARANTINE_AFTER}": expected a whole number >= 1`);
  return {
    ...(after !== undefined ? { quarantineAfter: after } : {}),
    ...(env.REFINERY_QUARANTINE_WINDOW ? { quarantineWindowMs: parseDuration(env.REFINERY_QUARANTINE_WINDOW) } : {}),
  };
}

/** REFINERY_JOB_MEMORY_LIMIT ("64G"): each job gets a memory cgroup of its own with that limit. */
export function jobMemoryLimit(env: NodeJS.ProcessEnv = process.env): number | undefined {
  return env.REFINERY_JOB_MEMORY_LIMIT ? parseMemoryLimit(env.REFINERY_JOB_MEMORY_LIMIT) : undefined;
}

/** REFINERY_INPUT_CACHE_GB (GiB, a decimal number; default 64): cap of the worker's input cache, evicted least recently used first. */
export function inputCacheBytes(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.REFINERY_INPUT_CACHE_GB?.trim();
  if (!raw) return DEFAULT_INPUT_CACHE_BYTES;
  const gib = Number(raw);
  if (!/^\d*\.?\d+$/.test(raw) || !Number.isFinite(gib) || gib < 0) throw new Error(`REFINERY_INPUT_CACHE_GB="${env.REFINERY_INPUT_CACHE_GB}": expected a size in GiB such as 64 or 0.5`);
  return Math.round(gib * GiB);
}
