/**
 * The commit protocol for everything Refinery stores (invariants 1 and 2):
 *   1. every file of a directory goes up under `<prefix>/files/…`;
 *   2. `<prefix>/_manifest.json` lists each file's path, size and sha256;
 *   3. `<prefix>/_COMMITTED` — written last — holds the manifest's sha256.
 * A prefix without a marker, or whose manifest does not match its marker, does not exist as far
 * as readers are concerned. Downloads re-hash every file and refuse any mismatch.
 *
 * Fenced commits (stage outputs and checkpoints, written by an attempt holding the stage lease)
 * carry the lease's epoch and keep their files and manifest apart per epoch —
 * `<prefix>/files.e<N>/…` and `<prefix>/_manifest.e<N>.json` — so that an attempt that lost its
 * lease but does not know it yet (a partitioned or frozen worker) can never overwrite a byte of a
 * newer attempt's commit. The marker then names the epoch, and is written conditionally: an output
 * marker only if none exists (the first committed output stays the output), a checkpoint marker
 * only over a marker of a smaller epoch — both checked by the storage itself (If-None-Match /
 * If-Match), not by a read before the write.
 */
import { createHash } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { ChecksumMismatch, ObjectStore, sha256File, SINGLE_PUT_MAX_BYTES } from './object-store.js';
import { isLocalDiskError } from './local-fs-error.js';
import { moveFiles, moverPath, type MoverFile } from './native-mover.js';

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
  /** Where its files are: `<prefix>/files`, or `<prefix>/files.e<epoch>` for a fenced commit. */
  filesPrefix: string;
  /** Its manifest's key: `<prefix>/_manifest.json`, or `<prefix>/_manifest.e<epoch>.json`. */
  manifestKey: string;
  /** The lease epoch of a fenced commit. */
  epoch?: number;
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
  /**
   * Fences the commit by the writer's lease epoch (see the module comment): files and manifest
   * under epoch-scoped keys; 'first' — the marker is written only if there is none (a stage
   * output); 'newer-epoch' — only over a marker of a smaller epoch (a checkpoint a newer attempt
   * may write again). A refused marker throws CommitConflict.
   */
  fence?: { epoch: number; marker: 'first' | 'newer-epoch' };
  /** Files in flight (default 8). */
  concurrency?: number;
  /** Stops taking new files and parts; the commit then throws the signal's reason. */
  signal?: AbortSignal;
  /**
   * Large files go up through the native mover at `nice -n 10 ionice -c 2 -n 7` (a checkpoint
   * uploaded while its job trains). No effect on Node's path (small files, or no mover).
   */
  lowPriority?: boolean;
}

const MANIFEST = '_manifest.json';
const MARKER = '_COMMITTED';
/** Files in flight per commit or download: many small files are latency-bound, not byte-bound. */
const FILE_CONCURRENCY = 8;
/** Files in flight in one mover invocation (its parts in flight are bounded over all of them). */
const MOVER_FILE_CONCURRENCY = 4;

export class IntegrityError extends Error {
  override name = 'IntegrityError';
}

/** A fenced commit whose marker was refused: somebody else's commit is (or stays) there. */
export class CommitConflict extends Error {
  override name = 'CommitConflict';
  constructor(
    readonly prefix: string,
    /** The marker that is there: its epoch (0 for an unfenced one) and manifest. */
    readonly existing: { epoch: number; manifestSha256: string },
    ours: { epoch: number },
  ) {
    super(
      existing.epoch > ours.epoch
        ? `${prefix}: a newer attempt (lease epoch ${existing.epoch}) has committed here; this attempt (epoch ${ours.epoch}) may not replace it`
        : `${prefix}: already committed (lease epoch ${existing.epoch}, manifest ${existing.manifestSha256.slice(0, 12)}…); not replaced`,
    );
  }
}

/** The JSON in `_COMMITTED`. `epoch` only in fenced commits (their files and manifest are epoch-scoped). */
interface Marker {
  manifestSha256: string;
  epoch?: number;
}

/** Where a commit's files and manifest are: epoch-scoped for a fenced commit. */
function commitKeys(prefix: string, epoch: number | undefined): { files: string; manifest: string } {
  return epoch === undefined ? { files: `${prefix}/files`, manifest: `${prefix}/${MANIFEST}` } : { files: `${prefix}/files.e${epoch}`, manifest: `${prefix}/_manifest.e${epoch}.json` };
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
  const { onProgress, resume = false, deterministic = false, knownSha256, signal, fence } = options;
  const keys = commitKeys(prefix, fence?.epoch);
  const rel = await listFiles(localDir);
  const sizes = await Promise.all(rel.map(async (r) => (await stat(path.join(localDir, r))).size));
  const progress: CommitProgress = { files: rel.length, filesDone: 0, bytes: sizes.reduce((a, b) => a + b, 0), bytesDone: 0, skippedFiles: 0 };
  const report = () => onProgress?.({ ...progress });
  report();
  // One LIST tells which files may already be there; only those of the same size cost a HEAD.
  const remoteSizes = new Map<string, number>();
  if (resume) for (const o of await store.list(`${keys.files}/`, true)) remoteSizes.set(o.key, o.size);

  const files: ManifestFile[] = new Array(rel.length);
  // Large files go up through the native mover when there is one — one invocation for all of
  // them, its CPU off the worker's — while small ones stay on Node's path (latency-bound, one PUT
  // each). Either half failing stops the other: Node stops taking files, the mover is killed.
  const mover = moverPath();
  const stop = new AbortController();
  const onAbort = () => stop.abort(signal!.reason);
  if (signal?.aborted) onAbort();
  else signal?.addEventListener('abort', onAbort, { once: true });
  const inner = stop.signal;
  const viaMover = (i: number) => mover !== undefined && sizes[i]! > SINGLE_PUT_MAX_BYTES;

  /** The resume check: true when the bucket already holds the file (then it is done). */
  const alreadyThere = async (relPath: string, i: number, sha256: string | undefined): Promise<{ there: boolean; sha256?: string }> => {
    const key = `${keys.files}/${relPath}`;
    const size = sizes[i]!;
    if (!resume || remoteSizes.get(key) !== size) return { there: false, ...(sha256 !== undefined ? { sha256 } : {}) };
    const remote = await store.head(key);
    if (remote?.size === size && remote.sha256 !== undefined) {
      sha256 ??= await sha256File(path.join(localDir, relPath));
      if (remote.sha256 === sha256) {
        files[i] = { path: relPath, size, sha256 };
        progress.filesDone++;
        progress.skippedFiles++;
        progress.bytesDone += size;
        report();
        return { there: true, sha256 };
      }
    }
    return { there: false, ...(sha256 !== undefined ? { sha256 } : {}) };
  };
  const indices = rel.map((_, i) => i);

  const nodeHalf = forEachLimit(
    indices.filter((i) => !viaMover(i)),
    options.concurrency ?? FILE_CONCURRENCY,
    async (i) => {
      const relPath = rel[i]!;
      const key = `${keys.files}/${relPath}`;
      const local = path.join(localDir, relPath);
      const size = sizes[i]!;
      const checked = await alreadyThere(relPath, i, knownSha256?.get(relPath));
      if (checked.there) return;
      let sha256 = checked.sha256;
      // A large file's hash must be known before its upload starts for the upload to record it, and
      // a later resume to recognise the object: hash it first (small files are hashed in memory).
      if (resume && sha256 === undefined && size > SINGLE_PUT_MAX_BYTES) sha256 = await sha256File(local);
      let sent = 0;
      const put = await store.putFileHashed(key, local, {
        ...(sha256 !== undefined ? { sha256 } : {}),
        signal: inner,
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
    inner,
  );

  const moverHalf = (async () => {
    const large = indices.filter(viaMover);
    if (large.length === 0) return;
    const request: MoverFile[] = [];
    const indexOf = new Map<string, number>();
    await forEachLimit(
      large,
      MOVER_FILE_CONCURRENCY,
      async (i) => {
        const relPath = rel[i]!;
        const checked = await alreadyThere(relPath, i, knownSha256?.get(relPath));
        if (checked.there) return;
        let sha256 = checked.sha256;
        // As on Node's path: hashed first on a resume, so that the upload records the hash.
        if (resume && sha256 === undefined) sha256 = await sha256File(path.join(localDir, relPath));
        const key = `${keys.files}/${relPath}`;
        indexOf.set(key, i);
        request.push({ key, path: path.resolve(localDir, relPath), size: sizes[i]!, ...(sha256 !== undefined ? { sha256 } : {}) });
      },
      inner,
    );
    if (request.length === 0) return;
    request.sort((a, b) => indexOf.get(a.key)! - indexOf.get(b.key)!);
    await moveFiles(
      store.config,
      { op: 'put', files: request, fileConcurrency: MOVER_FILE_CONCURRENCY },
      {
        signal: inner,
        ...(options.lowPriority ? { lowPriority: true } : {}),
        onBytes: (n) => {
          progress.bytesDone += n;
          report();
        },
        onFile: (f) => {
          const i = indexOf.get(f.key)!;
          // A file that grew or shrank since it was listed: its bytes events counted what was sent.
          progress.bytes += f.size - sizes[i]!;
          files[i] = { path: rel[i]!, size: f.size, sha256: f.sha256 };
          progress.filesDone++;
          report();
        },
        mover: mover!,
      },
    );
  })();

  const halves = [nodeHalf, moverHalf].map((p) => p.catch((err: unknown) => (stop.abort(err), Promise.reject(err))));
  try {
    const settled = await Promise.allSettled(halves);
    // The first failure in time is the reason the other half was stopped with: throw that one.
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw inner.aborted ? inner.reason : failed.reason;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  signal?.throwIfAborted();
  const manifest: Manifest = deterministic
    ? { version: 1, files, ...(meta ? { meta: sortedKeys(meta) as Record<string, unknown> } : {}) }
    : { version: 1, files, createdAt: new Date().toISOString(), ...(meta ? { meta } : {}) };
  const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 2) + '\n');
  const manifestSha256 = sha256(manifestBytes);
  await store.putBytes(keys.manifest, manifestBytes, 'application/json');
  await options.beforeCommit?.();
  if (fence) await writeFencedMarker(store, prefix, { manifestSha256, epoch: fence.epoch }, fence.marker);
  else await store.putJson(`${prefix}/${MARKER}`, { manifestSha256 } satisfies Marker);
  return { prefix, uri: store.uri(prefix), manifestSha256, manifest, filesPrefix: keys.files, manifestKey: keys.manifest, ...(fence ? { epoch: fence.epoch } : {}) };
}

/**
 * Writes a fenced commit marker with conditional PUTs only, so the storage decides between racing
 * writers: 'first' never replaces a marker; 'newer-epoch' replaces one of a smaller epoch (the
 * If-Match on its ETag fails if it changed since it was read). Our own marker already there (a
 * retried commit whose PUT landed unheard) is success.
 */
async function writeFencedMarker(store: ObjectStore, prefix: string, ours: Required<Marker>, mode: 'first' | 'newer-epoch'): Promise<void> {
  const key = `${prefix}/${MARKER}`;
  const body = JSON.stringify(ours);
  for (let tries = 0; tries < 5; tries++) {
    const cur = await store.getWithEtag(key);
    if (!cur) {
      if ((await store.putIfAbsent(key, body)) !== 'exists') return;
      continue;
    }
    const existing = parseMarker(cur.body);
    const theirs = { epoch: existing?.epoch ?? 0, manifestSha256: existing?.manifestSha256 ?? '' };
    if (theirs.epoch === ours.epoch && theirs.manifestSha256 === ours.manifestSha256) return;
    if (mode === 'first' || theirs.epoch > ours.epoch) throw new CommitConflict(store.uri(prefix), theirs, ours);
    if ((await store.putIfMatch(key, body, cur.etag)) !== 'changed') return;
  }
  throw new Error(`${store.uri(prefix)}: the commit marker kept changing under this commit; giving up`);
}

function parseMarker(body: Buffer): Marker | undefined {
  try {
    const m = JSON.parse(body.toString('utf8')) as Partial<Marker> | null;
    if (!m || typeof m.manifestSha256 !== 'string') return undefined;
    return m.epoch === undefined || typeof m.epoch === 'number' ? (m as Marker) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The committed artifact at `prefix`, or undefined when there is none (no marker). A marker whose
 * manifest is missing or does not hash to the recorded value is an IntegrityError.
 */
export async function readCommitted(store: ObjectStore, prefix: string): Promise<CommittedArtifact | undefined> {
  const raw = await store.getBytes(`${prefix}/${MARKER}`);
  if (!raw) return undefined;
  const marker = parseMarker(raw);
  if (!marker) throw new IntegrityError(`${store.uri(prefix)}: commit marker unreadable`);
  const keys = commitKeys(prefix, marker.epoch);
  const bytes = await store.getBytes(keys.manifest);
  if (!bytes) throw new IntegrityError(`${store.uri(prefix)}: commit marker present but manifest missing`);
  if (sha256(bytes) !== marker.manifestSha256) throw new IntegrityError(`${store.uri(prefix)}: manifest does not match its commit marker`);
  return {
    prefix,
    uri: store.uri(prefix),
    manifestSha256: marker.manifestSha256,
    manifest: JSON.parse(bytes.toString('utf8')) as Manifest,
    filesPrefix: keys.files,
    manifestKey: keys.manifest,
    ...(marker.epoch !== undefined ? { epoch: marker.epoch } : {}),
  };
}

/** The key of file `relPath` of a committed artifact. */
export function committedFileKey(artifact: Pick<CommittedArtifact, 'filesPrefix'>, relPath: string): string {
  return `${artifact.filesPrefix}/${relPath}`;
}

/**
 * Downloads a committed artifact into `localDir`, verifying every file. Files already present
 * with the right hash are kept (a retry on the same worker downloads nothing). A file that is
 * missing, short or fails its hash throws IntegrityError; a local disk that refuses the write
 * (full, read-only, failing: storage/local-fs-error.ts) throws that error as it came.
 */
export async function downloadCommitted(store: ObjectStore, artifact: CommittedArtifact, localDir: string): Promise<{ downloaded: number; reused: number }> {
  let downloaded = 0;
  let reused = 0;
  const mismatch = (f: ManifestFile, actual: string) => new IntegrityError(`${artifact.uri}: ${f.path}: sha256 ${actual} does not match the manifest (${f.sha256})`);
  const cannot = (f: ManifestFile, err: unknown) => new IntegrityError(`${artifact.uri}: ${f.path}: cannot download (${(err as Error).message})`);
  const mover = moverPath();
  // With the native mover: Node checks what is already there, then one mover invocation
  // downloads (ranged GETs in parallel), hashes and checks the rest; a file appears under its name
  // only verified, as on Node's path.
  const needed: (MoverFile & { file: ManifestFile })[] = [];
  await forEachLimit(artifact.manifest.files, FILE_CONCURRENCY, async (f) => {
    const target = path.join(localDir, safeRelative(f.path));
    const existing = await sha256File(target).catch(() => undefined);
    if (existing === f.sha256) {
      reused++;
      return;
    }
    if (mover) {
      needed.push({ key: committedFileKey(artifact, f.path), path: path.resolve(target), size: f.size, sha256: f.sha256, file: f });
      return;
    }
    await store.getFile(committedFileKey(artifact, f.path), target, { expectSha256: f.sha256 }).catch((err: unknown) => {
      // A full or failing local disk is not the artifact's fault: no reason to skip it.
      if (isLocalDiskError(err)) throw err;
      if (err instanceof ChecksumMismatch) throw mismatch(f, err.actual);
      throw cannot(f, err);
    });
    downloaded++;
  });
  if (mover && needed.length > 0) {
    const order = new Map(artifact.manifest.files.map((f, i) => [f, i]));
    needed.sort((a, b) => order.get(a.file)! - order.get(b.file)!);
    const byKey = new Map(needed.map((n) => [n.key, n.file]));
    await moveFiles(store.config, { op: 'get', files: needed.map(({ file: _, ...m }) => m), fileConcurrency: MOVER_FILE_CONCURRENCY }, { mover }).catch((err: unknown) => {
      if (isLocalDiskError(err)) throw err;
      const key = (err as { key?: unknown }).key;
      const f = typeof key === 'string' ? byKey.get(key) : undefined;
      if (!f) throw new IntegrityError(`${artifact.uri}: cannot download (${(err as Error).message})`);
      if (err instanceof ChecksumMismatch) throw mismatch(f, err.actual);
      throw cannot(f, err);
    });
    downloaded += needed.length;
  }
  return { downloaded, reused };
}

/** Files verifyCommitted hashes at a time: each streams through (a few 1 MiB chunks in memory). */
const VERIFY_CONCURRENCY = 4;

/**
 * Re-hashes every object of a committed artifact in the bucket, streaming (memory does not grow
 * with a file's size), and checks its size against the manifest; returns the problems found, in
 * manifest order.
 */
export async function verifyCommitted(store: ObjectStore, prefix: string): Promise<string[]> {
  let artifact: CommittedArtifact | undefined;
  try {
    artifact = await readCommitted(store, prefix);
  } catch (err) {
    return [(err as Error).message];
  }
  if (!artifact) return [`${store.uri(prefix)}: not committed`];
  const committed = artifact;
  const found: (string | undefined)[] = new Array(committed.manifest.files.length);
  await forEachLimit(committed.manifest.files, VERIFY_CONCURRENCY, async (f, i) => {
    const key = committedFileKey(committed, f.path);
    const got = await store.hashObject(key);
    if (!got) found[i] = `${store.uri(key)}: missing`;
    else if (got.sha256 !== f.sha256) found[i] = `${store.uri(key)}: sha256 mismatch`;
    // The bytes are right but the manifest misstates their size (a manifest written around commitDirectory).
    else if (got.size !== f.size) found[i] = `${store.uri(key)}: ${got.size} bytes, the manifest says ${f.size}`;
  });
  return found.filter((p): p is string => p !== undefined);
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
