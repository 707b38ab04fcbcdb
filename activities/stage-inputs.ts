/**
 * A stage's inputs on local disk: model stacks and datasets, verified, held in the worker's input
 * cache (activities/input-cache.ts: by manifest hash, size-capped, LRU) until the attempt releases them.
 */
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { downloadCommitted, readCommitted } from '../storage/commit.js';
import type { ObjectStore } from '../storage/object-store.js';
import type { ArtifactRef, StageJobInput } from '../workflows/types.js';
import type { CacheLease, InputCache } from './input-cache.js';

export interface LocalStageInputs {
  /** Model inputs by contract name → local directory. */
  inputs: Record<string, string>;
  datasets: { train: string | null; eval: string | null };
  /** Lets the cache evict them again: call once the job no longer reads them (idempotent). */
  release(): Promise<void>;
}

export async function fetchStageInputs(store: ObjectStore, input: Pick<StageJobInput, 'inputs' | 'datasets'>, cache: InputCache): Promise<LocalStageInputs> {
  const held: CacheLease[] = [];
  const release = async () => {
    await Promise.all(held.splice(0).map((h) => h.release()));
  };
  const fetchArtifact = async (ref: ArtifactRef): Promise<string> => {
    const artifact = await readCommitted(store, ref.prefix);
    if (!artifact || artifact.manifestSha256 !== ref.manifestSha256) {
      throw ApplicationFailure.nonRetryable(`input ${ref.uri} is missing or changed since it was committed`, 'InputMissing');
    }
    const bytes = artifact.manifest.files.reduce((sum, f) => sum + f.size, 0);
    const lease = await cache.acquire(ref.manifestSha256, bytes, async (dir) => {
      await downloadCommitted(store, artifact, dir);
    });
    held.push(lease);
    return lease.dir;
  };
  try {
    const inputs: Record<string, string> = {};
    for (const [name, ref] of Object.entries(input.inputs)) if (ref) inputs[name] = await fetchArtifact(ref);
    const datasetFile = async (ref: ArtifactRef | undefined) => (ref ? path.join(await fetchArtifact(ref), 'data.jsonl') : null);
    return { inputs, datasets: { train: await datasetFile(input.datasets.train), eval: await datasetFile(input.datasets.eval) }, release };
  } catch (err) {
    await release();
    throw err;
  }
}
