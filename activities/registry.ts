/**
 * The model registry from workflow code (storage/registry.ts): an eval stage's baseline is what an
 * alias points at when the stage starts, and a pipeline's promote step points an alias at a stage's
 * committed output once every gate passed. Control worker; a few object-store calls each.
 */
import { ApplicationFailure } from '@temporalio/common';
import type { ObjectStore } from '../storage/object-store.js';
import { aliasStates, promote, readRegistryLog, RegistryError } from '../storage/registry.js';
import type { ArtifactRef, PromotionOutcome, ResolvedBaseline } from '../workflows/types.js';

export interface PromoteStageOutputInput {
  storagePrefix: string;
  runId: string;
  stage: string;
  model: string;
  alias: string;
  target: ArtifactRef;
  by: string;
  reason: string;
}

/** A registry that does not verify, or a name it refuses, is not fixed by retrying. */
const nonRetryable = (err: unknown): never => {
  if (err instanceof RegistryError) throw ApplicationFailure.nonRetryable(err.message, 'RegistryError');
  throw err;
};

export function createRegistryActivities(store: ObjectStore) {
  return {
    async resolveAlias(input: { storagePrefix: string; model: string; alias: string }): Promise<ResolvedBaseline> {
      const records = await readRegistryLog(store, input.storagePrefix, input.model).catch(nonRetryable);
      const current = aliasStates(records).get(input.alias)?.current ?? null;
      return {
        model: input.model,
        alias: input.alias,
        target: current ? { uri: current.uri, prefix: current.prefix, manifestSha256: current.manifestSha256, runId: current.runId, stage: current.stage } : null,
      };
    },

    /**
     * Points the alias at the stage's output. A retry after a lost reply finds its own record and
     * reports it; an alias that already points there (a run that reused production's output) is
     * left as it is.
     */
    async promoteStageOutput(input: PromoteStageOutputInput): Promise<PromotionOutcome> {
      const records = await readRegistryLog(store, input.storagePrefix, input.model).catch(nonRetryable);
      const state = aliasStates(records).get(input.alias);
      const outcome = (changed: boolean, seq: number | null, replaced: ArtifactRef | null): PromotionOutcome => ({
        model: input.model,
        alias: input.alias,
        stage: input.stage,
        target: input.target,
        replaced,
        changed,
        seq,
        by: input.by,
        reason: input.reason,
      });
      const refOf = (t: { uri: string; prefix: string; manifestSha256: string } | null | undefined) => (t ? { uri: t.uri, prefix: t.prefix, manifestSha256: t.manifestSha256 } : null);
      if (state?.current?.manifestSha256 === input.target.manifestSha256) {
        const mine = [...records].reverse().find((r) => r.event.type === 'alias-promoted' && r.event.alias === input.alias && r.event.target?.runId === input.runId && r.event.target?.manifestSha256 === input.target.manifestSha256);
        return mine ? outcome(true, mine.seq, refOf(mine.event.replaced)) : outcome(false, null, refOf(state.current));
      }
      const record = await promote(store, input.storagePrefix, {
        model: input.model,
        alias: input.alias,
        target: { ...input.target, runId: input.runId, stage: input.stage },
        by: input.by,
        reason: input.reason,
      }).catch(nonRetryable);
      return outcome(true, record.seq, refOf(record.event.replaced));
    },
  };
}
