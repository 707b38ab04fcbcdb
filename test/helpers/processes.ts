/** Training workers as their own OS processes (infra/harness/processes.ts) that a test can SIGKILL, and a polling wait. */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { WorkerProcess } from '../../infra/harness/processes.js';
import { testJobCommand, testStackEnv } from './env.js';

export { until } from '../../infra/harness/wait.js';
export type { WorkerProcess } from '../../infra/harness/processes.js';

const spawned: WorkerProcess[] = [];

/** `refinery worker --no-control --queue <queue>` running the contract test job (or `jobCommand`). */
export async function spawnTrainingWorker(queue: string, env: Record<string, string> = {}, jobCommand: string[] = testJobCommand()('sft')): Promise<WorkerProcess> {
  const scratch = await mkdtemp(path.join(tmpdir(), 'refinery-worker-proc-'));
  // Its log beside its scratch dir: `<scratch>.log` names it in a failure's message (w.logTail()).
  const w = await WorkerProcess.spawn({ name: path.basename(scratch), queue, scratch, stackEnv: testStackEnv(), jobCommand, env, logDir: path.dirname(scratch) });
  spawned.push(w);
  return w;
}

/** SIGKILLs every worker process this file spawned (afterAll). */
export function killSpawnedWorkers(): void {
  for (const w of spawned) w.signal('SIGKILL');
}
