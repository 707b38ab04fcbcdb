/** One attempt's job events as the worker shipped them to the bucket (storage/job-logs.ts). */
import { listJobLogs, readJobLog } from '../../storage/job-logs.js';
import { layout } from '../../storage/layout.js';
import type { ObjectStore } from '../../storage/object-store.js';

export async function attemptEvents(store: ObjectStore, where: { prefix: string; runId: string; stage: string; attempt: number }): Promise<Record<string, unknown>[]> {
  const refs = await listJobLogs(store, layout.run(where.prefix, where.runId), { stage: where.stage, kind: 'events' });
  const ref = refs.find((r) => r.attempt === where.attempt);
  if (!ref) return [];
  const text = ((await readJobLog(store, ref.key)) ?? Buffer.alloc(0)).toString('utf8');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}
