/**
 * The commit protocol for everything Refinery stores (invariants 1 and 2):
 *   1. every file of a directory goes up under `<prefix>/files/…`;
 *   2. `<prefix>/_manifest.json` lists each file's path, size and sha256;
 *   3. `<prefix>/_COMMITTED` — written last — holds the manifest's sha256.
 * A prefix without a marker, or whose manifest does not match its marker, does not exist as far
 * as readers are concerned. Downloads re-hash every file and refuse any mismatch.
 */
import { createHash } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { ChecksumMismatch, ObjectStore, sha256File } from './object-store.js';

export interface ManifestFile {
  path: string;
  size: number;
  sha256: string;
}

export interface Manifest {
  version: 1;
  files: ManifestFile[];
  createdAt: string;
  /** Free-form, non-secret facts about the artifact (stage, step, metrics…). */
  meta?: Record<string, unknown>;
}

export interface CommittedArtifact {
  /** Key prefix inside the bucket, without a trailing slash. */
  prefix: string;
  uri: string;
  /** sha256 of the manifest: identifies the artifact's exact content. */
  manifestSha256: string;
  manifest: Manifest;
}

const MANIFEST = '_manifest.json';
const MARKER = '_COMMITTED';
/** Files in flight per commit or download: many small files are latency-bound, not byte-bound. */
const FILE_CONCURRENCY = 8;

export class IntegrityError extends Error {
  override name = 'IntegrityError';
}

/** Uploads a local directory and commits it. Returns the committed artifact. */
export async function commitDirectory(
  store: ObjectStore,
  localDir: string,
  prefix: string,
  meta?: Record<string, unknown>,
): Promise<CommittedArtifact> {
  const rel = await listFiles(localDir);
  const files: ManifestFile[] = new Array(rel.length);
  await forEachLimit(rel, FILE_CONCURRENCY, async (relPath, i) => {
    const { size, sha256 } = await store.putFileHashed(`${prefix}/files/${relPath}`, path.join(localDir, relPath));
    files[i] = { path: relPath, size, sha256 };
  });
  const manifest: Manifest = { version: 1, files, createdAt: new Date().toISOString(), ...(meta ? { meta } : {}) };
  const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 2) + '\n');
  const manifestSha256 = sha256(manifestBytes);
  await store.putBytes(`${prefix}/${MANIFEST}`, manifestBytes, 'application/json');
  await store.putJson(`${prefix}/${MARKER}`, { manifestSha256 });
  return { prefix, uri: store.uri(prefix), manifestSha256, manifest };
}

/**
 * The committed artifact at `prefix`, or undefined when there is none (no marker). A marker whose
 * manifest is missing or does not hash to the recorded value is an IntegrityError.
 */
export async function readCommitted(store: ObjectStore, prefix: string): Promise<CommittedArtifact | undefined> {
  const marker = await store.getJson<{ manifestSha256: string }>(`${prefix}/${MARKER}`);
  if (!marker) return undefined;
  const bytes = await store.getBytes(`${prefix}/${MANIFEST}`);
  if (!bytes) throw new IntegrityError(`${store.uri(prefix)}: commit marker present but manifest missing`);
  if (sha256(bytes) !== marker.manifestSha256) throw new IntegrityError(`${store.uri(prefix)}: manifest does not match its commit marker`);
  return { prefix, uri: store.uri(prefix), manifestSha256: marker.manifestSha256, manifest: JSON.parse(bytes.toString('utf8')) as Manifest };
}

/**
 * Downloads a committed artifact into `localDir`, verifying every file. Files already present
 * with the right hash are kept (a retry on the same worker downloads nothing).
 */
export async function downloadCommitted(store: ObjectStore, artifact: CommittedArtifact, localDir: string): Promise<{ downloaded: number; reused: number }> {
  let downloaded = 0;
  let reused = 0;
  await forEachLimit(artifact.manifest.files, FILE_CONCURRENCY, async (f) => {
    const target = path.join(localDir, safeRelative(f.path));
    const existing = await sha256File(target).catch(() => undefined);
    if (existing === f.sha256) {
      reused++;
      return;
    }
    await store.getFile(`${artifact.prefix}/files/${f.path}`, target, { expectSha256: f.sha256 }).catch((err: unknown) => {
      if (err instanceof ChecksumMismatch) throw new IntegrityError(`${artifact.uri}: ${f.path}: sha256 ${err.actual} does not match the manifest (${f.sha256})`);
      throw new IntegrityError(`${artifact.uri}: ${f.path}: cannot download (${(err as Error).message})`);
    });
    downloaded++;
  });
  return { downloaded, reused };
}

/** Re-hashes every object of a committed artifact in the bucket; returns the problems found. */
export async function verifyCommitted(store: ObjectStore, prefix: string): Promise<string[]> {
  let artifact: CommittedArtifact | undefined;
  try {
    artifact = await readCommitted(store, prefix);
  } catch (err) {
    return [(err as Error).message];
  }
  if (!artifact) return [`${store.uri(prefix)}: not committed`];
  const problems: string[] = [];
  for (const f of artifact.manifest.files) {
    const bytes = await store.getBytes(`${prefix}/files/${f.path}`);
    if (!bytes) problems.push(`${artifact.uri}/files/${f.path}: missing`);
    else if (sha256(bytes) !== f.sha256) problems.push(`${artifact.uri}/files/${f.path}: sha256 mismatch`);
  }
  return problems;
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

async function listFiles(dir: string, base = dir): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const abs = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await listFiles(abs, base)));
    else if (entry.isFile() || (entry.isSymbolicLink() && (await stat(abs)).isFile())) out.push(path.relative(base, abs).split(path.sep).join('/'));
  }
  return out.sort();
}

/** Manifest paths come from the bucket: never let one escape the target directory. */
function safeRelative(p: string): string {
  const norm = path.posix.normalize(p);
  if (norm.startsWith('../') || norm === '..' || path.posix.isAbsolute(norm)) throw new IntegrityError(`unsafe path in manifest: ${p}`);
  return norm;
}

/** Runs fn over items, `limit` at a time; on failure stops taking new items, lets in-flight ones finish, then throws. */
async function forEachLimit<T>(items: T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length && !failure) {
      const i = next++;
      try {
        await fn(items[i]!, i);
      } catch (error) {
        failure ??= { error };
      }
    }
  });
  await Promise.all(workers);
  if (failure) throw failure.error;
}
