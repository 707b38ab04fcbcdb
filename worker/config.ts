/**
 * Worker and client settings from the environment (defaults match `refinery stack start`).
 * Credentials stay in the environment; nothing here is ever sent to Temporal.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Workflows and control activities. */
export const CONTROL_TASK_QUEUE = 'refinery-control';

export interface TemporalSettings {
  address: string;
  namespace: string;
}

export function temporalSettings(env: NodeJS.ProcessEnv = process.env): TemporalSettings {
  return { address: env.TEMPORAL_ADDRESS || '127.0.0.1:7233', namespace: env.TEMPORAL_NAMESPACE || 'refinery' };
}

export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.resolve(env.REFINERY_STATE_DIR || path.join(REPO_ROOT, '.refinery'));
}

/** What infra/bootstrap.sh installed (<state dir>/toolchain.json), or undefined before it has run. */
function recordedToolchain(env: NodeJS.ProcessEnv): Record<string, unknown> | undefined {
  const toolchain = path.join(stateDir(env), 'toolchain.json');
  return existsSync(toolchain) ? (JSON.parse(readFileSync(toolchain, 'utf8')) as Record<string, unknown>) : undefined;
}

/** The Python that runs the jobs: $REFINERY_PYTHON, else the one infra/bootstrap.sh installed. */
export function jobsPython(env: NodeJS.ProcessEnv = process.env): string {
  if (env.REFINERY_PYTHON) return env.REFINERY_PYTHON;
  const python = recordedToolchain(env)?.python;
  if (typeof python === 'string') return python;
  throw new Error(`no Python environment for the jobs: run "bash infra/bootstrap.sh" (or set REFINERY_PYTHON)`);
}

/** The llama.cpp tools the gguf job's llama.cpp exporter runs, keyed by the job's variable names. */
const LLAMA_CPP_TOOLS = { REFINERY_LLAMA_CPP_CONVERT: 'llamaCppConvert', REFINERY_LLAMA_QUANTIZE: 'llamaQuantize' } as const;

/**
 * Where the gguf job finds llama.cpp's convert script and llama-quantize: the worker's own
 * REFINERY_LLAMA_CPP_CONVERT / REFINERY_LLAMA_QUANTIZE when set (they reach the job with the rest of
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
