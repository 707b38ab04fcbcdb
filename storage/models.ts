/**
 * Base models in the bucket. A model directory is stored once, content-addressed by its tree hash
 * (`<prefix>/inputs/models/<tree-sha256>/`, the commit protocol of commit.ts), by whoever has it on
 * disk: `refinery model push` on a laptop, or prepareRun on the control worker for a local
 * `base_model` path — the same code, so either one finishes what the other started. A name is a
 * pointer to one such commit, moved by each push; every push also leaves a record of its own, so
 * what a name meant when is auditable (a run records the manifest it resolved, run.json).
 *
 *   <prefix>/models/<name>.json                       the name's current model (ModelRecord)
 *   <prefix>/models/<name>/pushes/<time>-<sha12>.json every push of the name, kept
 */
import { isModelName } from '../spec/model-name.js';
import { commitDirectory, readCommitted, type CommitProgress, type CommittedArtifact } from './commit.js';
import { layout, segment } from './layout.js';
import type { ObjectStore } from './object-store.js';
import { hashTree, type TreeHashProgress } from './tree-hash.js';

export { isModelName } from '../spec/model-name.js';

export interface ModelRecord {
  name: string;
  /** Key prefix of the committed copy, and its URI. */
  prefix: string;
  uri: string;
  manifestSha256: string;
  treeSha256: string;
  files: number;
  bytes: number;
  pushedAt: string;
  pushedBy: string;
  /** Where it was pushed from (host:path), for people; never read back. */
  source: string;
}

export type PushPhase = ({ phase: 'hashing' } & TreeHashProgress) | ({ phase: 'uploading' } & CommitProgress);

export interface PushedModel {
  artifact: CommittedArtifact;
  treeSha256: string;
  /** The bucket had this exact content committed already: nothing was uploaded. */
  alreadyCommitted: boolean;
  /** Files not uploaded again because the bucket held them with the same sha256 (a resumed push). */
  skippedFiles: number;
  bytes: number;
}

const namePointer = (prefix: string, name: string) => `${prefix}/models/${segment(name)}.json`;
const pushRecord = (prefix: string, name: string, at: string, sha: string) => `${prefix}/models/${segment(name)}/pushes/${at.replace(/[:.]/g, '-')}-${sha.slice(0, 12)}.json`;

/**
 * Stores `dir` content-addressed under `prefix`: hashes it (the address), then commits whatever the
 * bucket does not already hold with the same sha256 — an interrupted push, pushed again, uploads only
 * the rest; a second push of the same content uploads nothing. Concurrent pushes of the same
 * content write the same (deterministic) manifest and marker.
 */
export async function pushModelDirectory(
  store: ObjectStore,
  options: { dir: string; prefix: string; onProgress?: (p: PushPhase) => void; signal?: AbortSignal },
): Promise<PushedModel> {
  const tree = await hashTree(options.dir, (p) => options.onProgress?.({ phase: 'hashing', ...p }));
  const key = layout.model(options.prefix, tree.sha256);
  const committed = await readCommitted(store, key);
  if (committed) {
    const bytes = committed.manifest.files.reduce((a, f) => a + f.size, 0);
    return { artifact: committed, treeSha256: tree.sha256, alreadyCommitted: true, skippedFiles: committed.manifest.files.length, bytes };
  }
  let last: CommitProgress | undefined;
  // No meta: where a model came from is per push and per run, not part of its content.
  const artifact = await commitDirectory(store, options.dir, key, undefined, {
    resume: true,
    deterministic: true,
    knownSha256: tree.files,
    ...(options.signal ? { signal: options.signal } : {}),
    onProgress: (p) => options.onProgress?.({ phase: 'uploading', ...(last = p) }),
  });
  return { artifact, treeSha256: tree.sha256, alreadyCommitted: false, skippedFiles: last?.skippedFiles ?? 0, bytes: last?.bytes ?? 0 };
}

/** Points `name` at a pushed model, and records the push. */
export async function nameModel(store: ObjectStore, prefix: string, name: string, pushed: PushedModel, who: { by: string; source: string }): Promise<ModelRecord> {
  if (!isModelName(name)) throw new Error(`model name "${name}": letters, digits, ".", "_" and "-" only (no "/"), at most 100`);
  const record: ModelRecord = {
    name,
    prefix: pushed.artifact.prefix,
    uri: pushed.artifact.uri,
    manifestSha256: pushed.artifact.manifestSha256,
    treeSha256: pushed.treeSha256,
    files: pushed.artifact.manifest.files.length,
    bytes: pushed.artifact.manifest.files.reduce((a, f) => a + f.size, 0),
    pushedAt: new Date().toISOString(),
    pushedBy: who.by,
    source: who.source,
  };
  await store.putJson(pushRecord(prefix, name, record.pushedAt, record.manifestSha256), record);
  await store.putJson(namePointer(prefix, name), record);
  return record;
}

/**
 * The committed model a name points at now, or undefined when there is no such name. A pointer whose
 * commit is gone or no longer matches is an error, not a silent fallback.
 */
export async function resolveModelName(store: ObjectStore, prefix: string, name: string): Promise<{ record: ModelRecord; artifact: CommittedArtifact } | undefined> {
  const record = await store.getJson<ModelRecord>(namePointer(prefix, name));
  if (!record) return undefined;
  const artifact = await readCommitted(store, record.prefix);
  if (!artifact || artifact.manifestSha256 !== record.manifestSha256) {
    throw new Error(`model "${name}" points at ${record.uri}, which is ${artifact ? 'committed with another manifest' : 'not committed'}; push it again`);
  }
  return { record, artifact };
}

/** Every named model under `prefix`, by name. */
export async function listModels(store: ObjectStore, prefix: string): Promise<ModelRecord[]> {
  const pointers = (await store.list(`${prefix}/models/`, false)).filter((o) => o.key.endsWith('.json'));
  const records = await Promise.all(pointers.map((o) => store.getJson<ModelRecord>(o.key)));
  return records.filter((r): r is ModelRecord => r !== undefined).sort((a, b) => a.name.localeCompare(b.name));
}
