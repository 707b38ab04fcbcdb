/** Training workers as their own OS processes (so a test can SIGKILL them), and a polling wait. */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { REPO_ROOT } from '../../config/paths.js';
import { testJobCommand, testStackEnv } from './env.js';

export interface WorkerProcess {
  proc: ResultPromise;
  scratch: string;
}

const spawned: ResultPromise[] = [];

/** `refinery worker --no-control --queue <queue>` running the contract test job. */
export async function spawnTrainingWorker(queue: string, env: Record<string, string> = {}): Promise<WorkerProcess> {
  const scratch = await mkdtemp(path.join(tmpdir(), 'refinery-worker-proc-'));
  const proc = execa(path.join(REPO_ROOT, 'bin', 'refinery'), ['worker', '--no-control', '--queue', queue, '--scratch', scratch], {
    env: { ...testStackEnv(), REFINERY_JOB_COMMAND: JSON.stringify(testJobCommand()('sft')), ...env },
    reject: false,
    stdio: 'ignore',
  });
  spawned.push(proc);
  return { proc, scratch };
}

/** SIGKILLs every worker process this file spawned (afterAll). */
export function killSpawnedWorkers(): void {
  for (const p of spawned) p.kill('SIGKILL');
}

export async function until<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 60_000, everyMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
