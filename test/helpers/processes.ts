/** Training workers as their own OS processes (infra/harness/processes.ts) that a test can SIGKILL, and a polling wait. */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { WorkerProcess } from '../../infra/harness/processes.js';
import { testJobCommand, testStackEnv } from './env.js';

export { until } from '../../infra/harness/wait.js';
export type { WorkerProcess } from '../../infra/harness/processes.js';

const spawned: WorkerProcess[] = [];

/** `refinery worker --no-control --queue <queue>` running the contract test job. */
export async function spawnTrainingWorker(queue: string, env: Record<string, string> = {}): Promise<WorkerProcess> {
  const scratch = await mkdtemp(path.join(tmpdir(), 'refinery-worker-proc-'));
  const w = await WorkerProcess.spawn({ name: path.basename(scratch), queue, scratch, stackEnv: testStackEnv(), jobCommand: testJobCommand()('sft'), env });
  spawned.push(w);
  return w;
}

/** SIGKILLs every worker process this file spawned (afterAll). */
export function killSpawnedWorkers(): void {
  for (const w of spawned) w.signal('SIGKILL');
}
