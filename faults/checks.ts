/**
 * The checks every fault-suite run ends with, whatever ran it (faults/trial.ts for the contract test
 * job, faults/real-trial.ts for the real trainers): audit verify and every committed checkpoint,
 * every announced checkpoint committed, overlapping attempts, orphans. Each appends what failed to
 * `problems`, one line each.
 */
import { verifyRun } from '../client/commands/audit.js';
import { readAttemptRecords } from '../storage/attempt-records.js';
import { verifyCommitted } from '../storage/commit.js';
import { layout } from '../storage/layout.js';
import { waitFor } from '../infra/harness/wait.js';
import { OVERLAP_BOUND_MS, type Ctx } from './context.js';
import { aliveAll, killPids } from './harness.js';
import type { RunReport } from './types.js';

/** `audit verify`, then every committed checkpoint in the bucket re-hashed; committed outputs counted per stage kind. */
export async function checkArtifacts(
  ctx: Ctx,
  where: { runId: string; prefix: string },
  problems: string[],
  /** A checkpoint damaged on purpose: noted, not a problem (`${artifactPrefix}@${step}`). */
  onDamaged?: (step: number) => boolean,
): Promise<Pick<RunReport, 'artifactsChecked' | 'artifactsFailed' | 'auditProblems'> & { outputsPerKind: Map<string, number> }> {
  const verify = await verifyRun({ ...where, store: ctx.store, env: ctx.stack.env() }).catch((err: unknown) => ({
    problems: [`audit verify failed to run: ${(err as Error).message}`],
    checked: { artifacts: 0, inputs: 0 },
  }));
  problems.push(...verify.problems.map((p) => `audit verify: ${p}`));
  let artifactsChecked = verify.checked.artifacts + verify.checked.inputs;
  const artifactsFailed = verify.problems.filter((p) => /artifact|dataset|base model/.test(p));
  const outputsPerKind = new Map<string, number>();
  for (const { key } of await ctx.store.list(`${where.prefix}/artifacts/`)) {
    const ckpt = /^(.*)\/checkpoints\/step-(\d+)\/_COMMITTED$/.exec(key);
    if (ckpt) {
      artifactsChecked++;
      const bad = await verifyCommitted(ctx.store, key.replace(/\/_COMMITTED$/, ''));
      if (bad.length > 0 && !(ctx.corrupted.has(`${ckpt[1]}@${Number(ckpt[2])}`) && (onDamaged?.(Number(ckpt[2])) ?? true))) {
        artifactsFailed.push(...bad);
        problems.push(`committed checkpoint does not verify: ${bad[0]}`);
      }
    }
    const out = /\/artifacts\/([a-z]+)-[^/]+\/output\/_COMMITTED$/.exec(key);
    if (out) outputsPerKind.set(out[1]!, (outputsPerKind.get(out[1]!) ?? 0) + 1);
  }
  return { artifactsChecked, artifactsFailed, auditProblems: verify.problems, outputsPerKind };
}

/**
 * The checkpoints attempt `attempt` of `stageId` announced (`announced`, from its job's events) that
 * its records do not say it committed (retention may have pruned one since: its record stays), nor
 * superseded by a newer checkpoint while it waited for the upload queue (a recorded, intended skip).
 */
export async function uncommittedCheckpoints(ctx: Ctx, where: { prefix: string; runId: string; stageId: string; attempt: number }, announced: number[], problems: string[]): Promise<number[]> {
  const records = await readAttemptRecords(ctx.store, layout.attemptRecords(where.prefix, where.runId, where.stageId, where.attempt)).catch(() => []);
  const committed = new Set(records.filter((r) => r.event.type === 'checkpoint-committed' || r.event.type === 'checkpoint-superseded').map((r) => r.event.step as number));
  const missing = announced.filter((s) => !committed.has(s));
  if (missing.length) problems.push(`attempt ${where.attempt} announced checkpoint(s) ${missing.join(', ')} that were never committed`);
  return missing;
}

/** Two attempts of one stage training at once, as the sampler saw their processes; and how many job sessions it saw. */
export function checkOverlaps(ctx: Ctx, runId: string, problems: string[]): Pick<RunReport, 'overlaps' | 'jobSessions'> {
  const overlaps = ctx.sampler.overlaps(runId).map((o) => ({ stage: o.stageId, attempts: o.attempts, ms: o.ms }));
  for (const o of overlaps) {
    if (o.ms > OVERLAP_BOUND_MS) problems.push(`attempts ${o.attempts.join(' and ')} of ${o.stage} trained at the same time for ${o.ms} ms (bound ${OVERLAP_BOUND_MS} ms)`);
  }
  return { overlaps, jobSessions: ctx.sampler.ofRun(runId).length };
}

/**
 * No process of any job session of the run (the job's children included) may be left once it has
 * ended, nor `extraPids` (a child a job announced): waits up to 20 s, then kills and reports them.
 */
export async function checkOrphans(ctx: Ctx, runId: string, extraPids: number[], problems: string[]): Promise<number[]> {
  const leftovers = async () => [...new Set([...(await ctx.sampler.alivePids(runId)), ...aliveAll(extraPids)])];
  await waitFor(async () => (await leftovers()).length === 0, 20_000, 200);
  const orphans = await leftovers();
  if (orphans.length > 0) {
    problems.push(`${orphans.length} job process(es) left running: ${orphans.join(', ')}`);
    killPids(orphans);
  }
  return orphans;
}
