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
import { ChecksumMismatch, ObjectStore, sha256File, SINGLE_PUT_MAX_BYTES } from './object-store.js';

export interface ManifestFile {
  path: string;
  size: number;
  sha256: string;
}

export interface Manifest {
  version: 1;
  files: ManifestFile[];
  /** Absent in deterministic (content-addressed) manifests: their bytes depend on the content only. */
  createdAt?: string;
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

/** Where a commit stands: totals over the directory, and how much of it is already in the bucket. */
export interface CommitProgress {
  files: number;
  filesDone: number;
  bytes: number;
  bytesDone: number;
  /** Files not uploaded because the bucket already held them with the same size and sha256 (resume). */
  skippedFiles: number;
}

export interface CommitOptions {
  /**
   * Called as files and bytes complete (a large file per part), first once before any upload.
   * An exception thrown from it aborts the commit (no marker is written).
   */
  onProgress?: (p: CommitProgress) => void;
  /**
   * Skip a file whose object at `<prefix>/files/<path>` already has the same size and sha256 (as
   * recorded by the upload that wrote it): a retried commit uploads only what is missing or differs.
   */
  resume?: boolean;
  /**
   * The manifest's bytes depend only on the files (sorted paths, sizes, sha256) and `meta` (keys
   * sorted): no `createdAt`. Two commits of the same content to the same prefix write the same
   * manifest and marker, so every ArtifactRef either of them returned stays valid.
   */
  deterministic?: boolean;
  /**
   * sha256 by relative path for files the caller has hashed already (e.g. while computing a
   * content address): no second hash for the resume comparison, and the hash goes along with a
   * large file's upload. A file that no longer matches fails the commit.
   */
  knownSha256?: ReadonlyMap<string, string>;
  /**
   * Called after the files and the manifest are up, right before the commit marker: a fencing
   * check (the stage lease) that may throw to leave the commit unmade.
   */
  beforeCommit?: () => Promise<void>;
  /** Files in flight (default 8). */
  concurrency?: number;
  /** Stops taking new files and parts; the commit then throws the signal's reason. */
  signal?: AbortSignal;
}

const MANIFEST = '_manifest.json';
const MARKER = '_COMMITTED';
/** Files in flight per commit or download: many small files are latency-bound, not byte-bound. */
const FILE_CONCURRENCY = 8;

export class IntegrityError extends Error {
  override name = 'IntegrityError';
}

/**
 * Uploads a local directory and commits it. Returns the committed artifact. With `resume`, files
 * already in the bucket with the same size and sha256 are not uploaded again; with `deterministic`,
 * the manifest (and so the marker) is a function of the content and `meta` only (see CommitOptions).
 */
export async function commitDirectory(
  store: ObjectStore,
  localDir: string,
  prefix: string,
  meta?: Record<string, unknown>,
  options: CommitOptions = {},
): Promise<CommittedArtifact> {
  const { onProgress, resume = false, deterministic = false, knownSha256, signal } = options;
  const rel = await listFiles(localDir);
  const sizes = await Promise.all(rel.map(async (r) => (await stat(path.join(localDir, r))).size));
  const progress: CommitProgress = { files: rel.length, filesDone: 0, bytes: sizes.reduce((a, b) => a + b, 0), bytesDone: 0, skippedFiles: 0 };
  const report = () => onProgress?.({ ...progress });
  report();
  // One LIST tells which files may already be there; only those of the same size cost a HEAD.
  const remoteSizes = new Map<string, number>();
  if (resume) for (const o of await store.list(`${prefix}/files/`, true)) remoteSizes.set(o.key, o.size);

  const files: ManifestFile[] = new Array(rel.length);
  await forEachLimit(
    rel,
    options.concurrency ?? FILE_CONCURRENCY,
    async (relPath, i) => {
      const key = `${prefix}/files/${relPath}`;
      const local = path.join(localDir, relPath);
      const size = sizes[i]!;
      let sha256 = knownSha256?.get(relPath);
      if (resume && remoteSizes.get(key) === size) {
        const remote = await store.head(key);
        if (remote?.size === size && remote.sha256 !== undefined) {
          sha256 ??= await sha256File(local);
          if (remote.sha256 === sha256) {
            files[i] = { path: relPath, size, sha256 };
            progress.filesDone++;
            progress.skippedFiles++;
            progress.bytesDone += size;
            report();
            return;
          }
        }
      }
      // A large file's hash must be known before its upload starts for the upload to record it, and
      // a later resume to recognise the object: hash it first (small files are hashed in memory).
      if (resume && sha256 === undefined && size > SINGLE_PUT_MAX_BYTES) sha256 = await sha256File(local);
      let sent = 0;
      const put = await store.putFileHashed(key, local, {
        ...(sha256 !== undefined ? { sha256 } : {}),
        ...(signal ? { signal } : {}),
        onBytes: (n) => {
          sent += n;
          progress.bytesDone += n;
          report();
        },
      });
      // A file that grew or shrank since it was listed: count what was actually sent.
      progress.bytesDone += put.size - sent;
      progress.bytes += put.size - size;
      files[i] = { path: relPath, size: put.size, sha256: put.sha256 };
      progress.filesDone++;
      report();
    },
    signal,
  );
  signal?.throwIfAborted();
  const manifest: Manifest = deterministic
    ? { version: 1, files, ...(meta ? { meta: sortedKeys(meta) as Record<string, unknown> } : {}) }
    : { version: 1, files, createdAt: new Date().toISOString(), ...(meta ? { meta } : {}) };
  const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 2) + '\n');
  const manifestSha256 = sha256(manifestBytes);
  await store.putBytes(`${prefix}/${MANIFEST}`, manifestBytes, 'application/json');
  await options.beforeCommit?.();
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

/** Same value, object keys sorted at every level (JSON.stringify then writes them in that order). */
function sortedKeys(value: unknown): unknown {
  if (value === null || typeof value !== 'object') return value;
  const toJSON = (value as { toJSON?: () => unknown }).toJSON;
  if (typeof toJSON === 'function') return sortedKeys(toJSON.call(value)); // a Date stays its ISO string
  if (Array.isArray(value)) return value.map(sortedKeys);
  return Object.fromEntries(
    Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([k, v]) => [k, sortedKeys(v)]),
  );
}

/**
 * Runs fn over items, `limit` at a time; on failure (or abort) stops taking new items, lets in-flight
 * ones finish, then throws.
 */
async function forEachLimit<T>(items: T[], limit: number, fn: (item: T, index: number) => Promise<void>, signal?: AbortSignal): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const workers = Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, async () => {
    while (next < items.length && !failure) {
      if (signal?.aborted) {
        failure = { error: signal.reason };
        break;
      }
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
