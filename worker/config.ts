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

/** The Python that runs the jobs: $REFINERY_PYTHON, else the one infra/bootstrap.sh installed. */
export function jobsPython(env: NodeJS.ProcessEnv = process.env): string {
  if (env.REFINERY_PYTHON) return env.REFINERY_PYTHON;
  const toolchain = path.join(stateDir(env), 'toolchain.json');
  if (existsSync(toolchain)) return (JSON.parse(readFileSync(toolchain, 'utf8')) as { python: string }).python;
  throw new Error(`no Python environment for the jobs: run "bash infra/bootstrap.sh" (or set REFINERY_PYTHON)`);
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
