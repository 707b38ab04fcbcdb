/**
 * What makes scheduled retraining decide "train again" or "unchanged", kept pure for the tests:
 *   a dataset path that is an s3:// prefix ending in "/" means "the newest object under it";
 *   a run's fingerprint is the hash of everything its result depends on.
 */
import { createHash } from 'node:crypto';
import { canonicalJson } from '../storage/canonical-json.js';
import type { ObjectInfo } from '../storage/object-store.js';

/** `s3://bucket/some/prefix/`: resolved when a run starts to the newest object under the prefix. */
export function isDatasetPrefix(path: string): boolean {
  return path.startsWith('s3://') && path.endsWith('/');
}

/**
 * The newest object of a listing: latest LastModified, ties broken by the greater key (so
 * `day-2.jsonl` beats `day-1.jsonl` written in the same second). Folder markers (keys ending in
 * "/") and hidden or marker files (name starting with "." or "_", e.g. `_SUCCESS`, `.part`) are
 * not datasets and are ignored. Undefined when nothing is left.
 */
export function pickNewestObject(objects: readonly ObjectInfo[]): ObjectInfo | undefined {
  let best: ObjectInfo | undefined;
  for (const o of objects) {
    if (o.key.endsWith('/') || /^[._]/.test(o.key.slice(o.key.lastIndexOf('/') + 1))) continue;
    if (!best) {
      best = o;
      continue;
    }
    const a = o.lastModified?.getTime() ?? 0;
    const b = best.lastModified?.getTime() ?? 0;
    if (a > b || (a === b && o.key > best.key)) best = o;
  }
  return best;
}

export interface FingerprintInputs {
  specSha256: string;
  baseModelManifestSha256: string;
  /** sha256 of each dataset's bytes, by dataset name. */
  datasetSha256: Record<string, string>;
  jobsVersion: string;
}

/**
 * sha256 over the spec, the base model, every dataset's content and the job code: equal
 * fingerprints mean a run would train on exactly what an earlier run trained on.
 */
export function runFingerprint(inputs: FingerprintInputs): string {
  const material = {
    v: 1,
    spec: inputs.specSha256,
    baseModel: inputs.baseModelManifestSha256,
    datasets: inputs.datasetSha256,
    jobs: inputs.jobsVersion,
  };
  return createHash('sha256').update(canonicalJson(material)).digest('hex');
}
