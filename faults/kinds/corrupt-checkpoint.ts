/** corrupt-checkpoint: flip a bit in / delete an object of the newest committed checkpoint, kill the job. */
import { readCommitted } from '../../storage/commit.js';
import { layout } from '../../storage/layout.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { waitFor } from '../../infra/harness/wait.js';
import { SAVE_STEPS } from '../context.js';
import { jobProgress, killJobGroup } from '../harness.js';
import type { FaultRecord } from '../types.js';
import type { FaultKindModule } from './kind.js';

type WithExpectResume = FaultRecord & { expectResume?: number };

export const corruptCheckpoint: FaultKindModule = {
  setup: ({ ctx }) => ({ params: { checkpoint_bytes: ctx.rng.pick([0, 64 << 10]) } }),
  async inject({ ctx, worker, runId, prefix, target, aimedAt, fault, reach }) {
    const { rng } = ctx;
    fault.bound = 2 * SAVE_STEPS + 1; // the damaged checkpoint's interval is lost too
    // Right after a checkpoint at or past the aim is committed: damage it, then kill the job
    // before the next one is committed, so that the retry has to skip it.
    const base = await reach(worker, 1);
    if (!base) throw new Error('the job never started');
    const artifact = `${prefix}/artifacts/${target}-${base.cacheKey}`;
    const steps = await waitFor(async () => {
      const s = await committedSteps(ctx.store, artifact);
      return s.length >= 2 && s[0]! >= aimedAt ? s : undefined;
    }, 90_000, 20);
    if (!steps) throw new Error(`no two committed checkpoints by step ${aimedAt}`);
    const newest = steps[0]!;
    const committed = await readCommitted(ctx.store, layout.checkpoint(artifact, newest));
    if (!committed) throw new Error(`checkpoint ${newest} vanished before it could be damaged`);
    const files = (await ctx.store.list(`${committed.filesPrefix}/`)).map((o) => o.key);
    const how = rng.pick(['flip a bit in', 'delete', 'flip a bit in the manifest of'] as const);
    const victim = how === 'flip a bit in the manifest of' ? committed.manifestKey : rng.pick(files);
    if (how === 'delete') await ctx.store.remove([victim]);
    else {
      const bytes = (await ctx.store.getBytes(victim))!;
      const at = rng.int(0, bytes.length - 1);
      bytes[at] = bytes[at]! ^ (1 << rng.int(0, 7));
      await ctx.store.putBytes(victim, bytes);
    }
    ctx.corrupted.add(`${artifact}@${newest}`);
    const now = (await jobProgress(worker.scratch, runId, target))!;
    for (const { sid } of await ctx.sampler.jobsOf(worker.pid)) killJobGroup(sid);
    Object.assign(fault, { stepAtFault: now.step, attemptAtFault: now.attempt });
    fault.detail = `${how} ${victim.slice(artifact.length + 1)} of committed checkpoint ${newest}, then kill -9 the job at step ${now.step}`;
    fault.notes.push(`expect resume from ${steps[1]}`);
    (fault as WithExpectResume).expectResume = steps[1]!;
  },
  check({ fault, problems }) {
    const expectResume = (fault as WithExpectResume).expectResume;
    if (expectResume !== undefined && fault.retried && fault.resumedFrom !== expectResume) {
      problems.push(`resumed from ${fault.resumedFrom ?? 'scratch'}, expected ${expectResume} (the newest checkpoint that verifies)`);
    }
  },
};

async function committedSteps(store: ObjectStore, artifactPrefix: string): Promise<number[]> {
  const keys = await store.list(`${layout.checkpoints(artifactPrefix)}/`, true);
  return keys
    .map((o) => /\/step-(\d+)\/_COMMITTED$/.exec(o.key))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => b - a);
}
