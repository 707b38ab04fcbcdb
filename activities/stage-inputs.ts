/** A stage's inputs on local disk: model stacks and datasets, cached per worker by manifest hash, verified. */
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { downloadCommitted, readCommitted } from '../storage/commit.js';
import type { ObjectStore } from '../storage/object-store.js';
import type { ArtifactRef, StageJobInput } from '../workflows/types.js';

export interface LocalStageInputs {
  /** Model inputs by contract name → local directory. */
  inputs: Record<string, string>;
  datasets: { train: string | null; eval: string | null };
}

export async function fetchStageInputs(store: ObjectStore, input: Pick<StageJobInput, 'inputs' | 'datasets'>, cacheDir: string): Promise<LocalStageInputs> {
  const fetchArtifact = async (ref: ArtifactRef): Promise<string> => {
    const artifact = await readCommitted(store, ref.prefix);
    if (!artifact || artifact.manifestSha256 !== ref.manifestSha256) {
      throw ApplicationFailure.nonRetryable(`input ${ref.uri} is missing or changed since it was committed`, 'InputMissing');
    }
    const dir = path.join(cacheDir, ref.manifestSha256);
    await downloadCommitted(store, artifact, dir);
    return dir;
  };
  const inputs: Record<string, string> = {};
  for (const [name, ref] of Object.entries(input.inputs)) if (ref) inputs[name] = await fetchArtifact(ref);
  const datasetFile = async (ref: ArtifactRef | undefined) => (ref ? path.join(await fetchArtifact(ref), 'data.jsonl') : null);
  return { inputs, datasets: { train: await datasetFile(input.datasets.train), eval: await datasetFile(input.datasets.eval) } };
}
