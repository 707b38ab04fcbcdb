/**
 * Checkpoints in object storage: committed like any artifact, listed newest first, restored only
 * when every file verifies (invariant 2), pruned to the stage's save_total_limit.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { commitDirectory, downloadCommitted, IntegrityError, readCommitted, type CommitOptions, type CommittedArtifact } from './commit.js';
import { layout } from './layout.js';
import type { ObjectStore } from './object-store.js';

export interface CheckpointRestore {
  /** The checkpoint now on local disk, if any verified. */
  restored?: { step: number; dir: string };
  /** Newer checkpoints that were skipped because they failed verification. */
  skipped: { step: number; reason: string }[];
  /** Newer checkpoints passed over because `isDiscarded` said so (taken after a divergence began). */
  discarded: number[];
}

/**
 * Commits checkpoint `step`. With `epoch` (the committing attempt's lease epoch) the commit is
 * fenced: its files are its own, and its marker replaces only one of a smaller epoch — a newer
 * attempt that reaches the same step again wins, a stale one never does.
 */
export async function commitCheckpoint(
  store: ObjectStore,
  artifactPrefix: string,
  step: number,
  localDir: string,
  options: Pick<CommitOptions, 'beforeCommit' | 'signal' | 'lowPriority'> & { epoch?: number; loss?: number | string | null } = {},
): Promise<CommittedArtifact> {
  const { epoch, loss, ...rest } = options;
  // The loss it was taken at: a retry after a divergence resumes from one taken before it began.
  const meta = { step, ...(epoch !== undefined ? { epoch } : {}), ...(loss !== undefined && loss !== null ? { loss } : {}) };
  return commitDirectory(store, localDir, layout.checkpoint(artifactPrefix, step), meta, {
    ...rest,
    ...(epoch !== undefined ? { fence: { epoch, marker: 'newer-epoch' as const } } : {}),
  });
}

/** Steps that have a commit marker, newest first. */
export async function listCommittedSteps(store: ObjectStore, artifactPrefix: string): Promise<number[]> {
  const objects = await store.list(`${layout.checkpoints(artifactPrefix)}/`, true);
  const steps = new Set<number>();
  for (const { key } of objects) {
    const m = /\/step-(\d+)\/_COMMITTED$/.exec(key);
    if (m) steps.add(Number(m[1]));
  }
  return [...steps].sort((a, b) => b - a);
}

/**
 * Downloads the newest committed checkpoint whose files all verify into `<localParent>/checkpoint-N`.
 * A corrupt or incomplete one is skipped (and its local copy removed), never used.
 */
export async function restoreNewestCheckpoint(
  store: ObjectStore,
  artifactPrefix: string,
  localParent: string,
  options: { isDiscarded?: (step: number, epoch: number | undefined) => boolean } = {},
): Promise<CheckpointRestore> {
  const skipped: CheckpointRestore['skipped'] = [];
  const discarded: number[] = [];
  for (const step of await listCommittedSteps(store, artifactPrefix)) {
    const dir = path.join(localParent, `checkpoint-${step}`);
    try {
      const artifact = await readCommitted(store, layout.checkpoint(artifactPrefix, step));
      if (!artifact) continue;
      // Taken after a divergence began (attempt-policy.ts): never resumed from.
      if (options.isDiscarded?.(step, artifact.epoch)) {
        discarded.push(step);
        continue;
      }
      await downloadCommitted(store, artifact, dir);
      return { restored: { step, dir }, skipped, discarded };
    } catch (err) {
      if (!(err instanceof IntegrityError)) {
        // Not this checkpoint's fault (storage away, the local disk full): the attempt fails and
        // the next one resumes from it. What came down is removed (a full disk gets its space back).
        await rm(dir, { recursive: true, force: true }).catch(() => undefined);
        throw err;
      }
      skipped.push({ step, reason: err.message });
      await rm(dir, { recursive: true, force: true });
    }
  }
  return { skipped, discarded };
}

/** Removes committed checkpoints (marker first, so a half-removed one is never read). */
export async function removeCheckpoints(store: ObjectStore, artifactPrefix: string, steps: number[]): Promise<void> {
  for (const step of steps) {
    const prefix = layout.checkpoint(artifactPrefix, step);
    await store.remove([`${prefix}/_COMMITTED`]);
    const rest = await store.list(`${prefix}/`, true);
    await store.remove(rest.map((o) => o.key));
  }
}

/** Keeps the newest `keep` committed checkpoints; deletes the marker first so a half-deleted one is never read. */
export async function pruneCheckpoints(store: ObjectStore, artifactPrefix: string, keep: number): Promise<number[]> {
  const steps = await listCommittedSteps(store, artifactPrefix);
  const doomed = steps.slice(keep);
  await removeCheckpoints(store, artifactPrefix, doomed);
  return doomed;
}
