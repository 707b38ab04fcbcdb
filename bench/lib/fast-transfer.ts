/**
 * A PROTOTYPE of a faster commit/download, for the checkpoint-transfer benchmark only (storage/
 * is untouched). It writes and reads exactly the same layout as storage/commit.ts
 * (`files/…`, `_manifest.json`, `_COMMITTED`), so readCommitted()/downloadCommitted() accept its
 * output and vice versa. What it changes:
 *
 *   1. one read and one sha256 per file. storage/commit.ts hashes each file itself, then
 *      minio-js reads it again and computes sha256 (SigV4 payload hash, on plain http) and MD5
 *      (Content-MD5) of every byte: three digests, two reads. Here a small file is signed with the
 *      very sha256 that goes into the manifest (MinIO still verifies it), and multipart parts are
 *      sent as UNSIGNED-PAYLOAD without Content-MD5: their integrity is the manifest's sha256,
 *      which every download checks anyway.
 *   2. parallel multipart parts: minio-js uploads the parts of one large file one after another;
 *      here `partConcurrency` parts of `partSize` are in flight.
 *   3. downloads read and write 1 MiB at a time (minio-js: 64 KiB reads, 16 KiB writes), which
 *      roughly halves the CPU per byte.
 *   4. more files in flight (`fileConcurrency`, default 8 instead of 4) for many small files.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import http from 'node:http';
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Client } from 'minio';
import { IntegrityError, sha256, type CommittedArtifact, type Manifest, type ManifestFile } from '../../storage/commit.js';
import type { ObjectStore } from '../../storage/object-store.js';

export interface FastOptions {
  partSize?: number;
  partConcurrency?: number;
  fileConcurrency?: number;
}

const DEFAULTS = { partSize: 32 * 1024 * 1024, partConcurrency: 4, fileConcurrency: 8 };

/** Two clients on the store's endpoint: one signs payloads with a hash we provide, one sends UNSIGNED-PAYLOAD. */
function clients(store: ObjectStore): { signed: Client; unsigned: Client } {
  const c = store.config;
  const make = () => new Client({ endPoint: c.endPoint, port: c.port, useSSL: c.useSSL, accessKey: c.accessKey, secretKey: c.secretKey, region: c.region });
  const unsigned = make();
  unsigned.enableSHA256 = false; // UNSIGNED-PAYLOAD (minio-js does this by itself over https)
  return { signed: make(), unsigned };
}

export async function fastCommitDirectory(store: ObjectStore, localDir: string, prefix: string, meta?: Record<string, unknown>, options: FastOptions = {}): Promise<CommittedArtifact> {
  const o = { ...DEFAULTS, ...options };
  const { signed, unsigned } = clients(store);
  const rel = await listFiles(localDir);
  const files: ManifestFile[] = new Array(rel.length);
  await forEachLimit(rel, o.fileConcurrency, async (relPath, i) => {
    const abs = path.join(localDir, relPath);
    const { size } = await stat(abs);
    const key = `${prefix}/files/${relPath}`;
    const digest = size <= o.partSize ? await putSmall(store, signed, key, abs) : await putLarge(store, unsigned, key, abs, size, o);
    files[i] = { path: relPath, size, sha256: digest };
  });
  const manifest: Manifest = { version: 1, files, createdAt: new Date().toISOString(), ...(meta ? { meta } : {}) };
  const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 2) + '\n');
  const manifestSha256 = sha256(manifestBytes);
  await store.putBytes(`${prefix}/_manifest.json`, manifestBytes, 'application/json');
  await store.putJson(`${prefix}/_COMMITTED`, { manifestSha256 });
  return { prefix, uri: store.uri(prefix), manifestSha256, manifest };
}

/** One read, one sha256: the same digest goes into the manifest and signs the PUT. */
async function putSmall(store: ObjectStore, client: Client, key: string, file: string): Promise<string> {
  const buf = await readFile(file);
  const digest = createHash('sha256').update(buf).digest('hex');
  const res = await client.makeRequestStreamAsync(
    { method: 'PUT', bucketName: store.bucket, objectName: key, headers: { 'Content-Length': String(buf.length) } },
    buf,
    digest,
    [200],
    store.config.region,
  );
  res.resume();
  await new Promise<void>((resolve, reject) => res.on('end', resolve).on('error', reject));
  return digest;
}

/** Multipart with parallel parts; the file is read once, in order, and hashed as it is read. */
async function putLarge(store: ObjectStore, client: Client, key: string, file: string, size: number, o: typeof DEFAULTS): Promise<string> {
  const uploadId = await client.initiateNewMultipartUpload(store.bucket, key, {});
  const hash = createHash('sha256');
  const fh = await open(file, 'r');
  const etags: { part: number; etag: string }[] = [];
  const inFlight = new Set<Promise<void>>();
  let failure: unknown;
  try {
    for (let offset = 0, part = 1; offset < size && failure === undefined; offset += o.partSize, part++) {
      const length = Math.min(o.partSize, size - offset);
      const buf = Buffer.allocUnsafe(length);
      const { bytesRead } = await fh.read(buf, 0, length, offset);
      if (bytesRead !== length) throw new Error(`${file}: short read`);
      hash.update(buf);
      const n = part;
      const p: Promise<void> = client
        .uploadPart({ bucketName: store.bucket, objectName: key, uploadID: uploadId, partNumber: n, headers: {} }, buf)
        .then((r) => void etags.push({ part: n, etag: r.etag }))
        .catch((err: unknown) => void (failure ??= err))
        .finally(() => inFlight.delete(p));
      inFlight.add(p);
      if (inFlight.size >= o.partConcurrency) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure;
    etags.sort((a, b) => a.part - b.part);
    await client.completeMultipartUpload(store.bucket, key, uploadId, etags);
  } catch (err) {
    await client.abortMultipartUpload(store.bucket, key, uploadId).catch(() => undefined);
    throw err;
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}

/**
 * Like downloadCommitted (same checks), with fewer, larger reads: one GET per file through a
 * presigned URL (signed locally, no extra request) on a keep-alive agent, read and written in
 * 1 MiB chunks and hashed on the way. (Parallel ranged GETs were tried first: on 2 cores they
 * cost more CPU than they save, see docs/benchmarks.md.)
 */
export async function fastDownloadCommitted(store: ObjectStore, artifact: CommittedArtifact, localDir: string, options: FastOptions = {}): Promise<{ downloaded: number }> {
  const o = { ...DEFAULTS, ...options };
  let downloaded = 0;
  await forEachLimit(artifact.manifest.files, o.fileConcurrency, async (f) => {
    const target = path.join(localDir, safeRelative(f.path));
    await mkdir(path.dirname(target), { recursive: true });
    const key = `${artifact.prefix}/files/${f.path}`;
    const tmp = `${target}.part-${process.pid}`;
    let got: string;
    try {
      got = await getFile(store, key, tmp);
    } catch (err) {
      await rm(tmp, { force: true });
      throw new IntegrityError(`${artifact.uri}: ${f.path}: cannot download (${(err as Error).message})`);
    }
    if (got !== f.sha256) {
      await rm(tmp, { force: true });
      throw new IntegrityError(`${artifact.uri}: ${f.path}: sha256 ${got} does not match the manifest (${f.sha256})`);
    }
    await rename(tmp, target);
    downloaded++;
  });
  return { downloaded };
}

const agent = new http.Agent({ keepAlive: true });
const CHUNK = 1024 * 1024;

async function getFile(store: ObjectStore, key: string, file: string): Promise<string> {
  const url = await store.client.presignedGetObject(store.bucket, key, 600);
  const hash = createHash('sha256');
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
    http.get(url, { agent, highWaterMark: CHUNK } as http.RequestOptions, resolve).on('error', reject);
  });
  if (res.statusCode !== 200) {
    res.resume();
    throw new Error(`GET ${key}: HTTP ${res.statusCode}`);
  }
  res.on('data', (chunk: Buffer) => hash.update(chunk));
  await pipeline(res, createWriteStream(file, { highWaterMark: CHUNK }));
  return hash.digest('hex');
}

async function listFiles(dir: string, base = dir): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const abs = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await listFiles(abs, base)));
    else if (entry.isFile()) out.push(path.relative(base, abs).split(path.sep).join('/'));
  }
  return out.sort();
}

function safeRelative(p: string): string {
  const norm = path.posix.normalize(p);
  if (norm.startsWith('../') || norm === '..' || path.posix.isAbsolute(norm)) throw new IntegrityError(`unsafe path in manifest: ${p}`);
  return norm;
}

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

/**
 * Another prototype: s5cmd moves the bytes (Go, parallel ranged GETs) and Node verifies each
 * file against the manifest as soon as s5cmd reports it (`--json` prints one line per finished
 * object), so hashing overlaps the transfer except for the last file. A failed check removes
 * the file and throws, like downloadCommitted.
 */
export async function s5cmdDownloadVerified(
  s5cmd: string,
  env: Record<string, string>,
  store: ObjectStore,
  artifact: CommittedArtifact,
  localDir: string,
  hashConcurrency = 2,
): Promise<{ downloaded: number }> {
  const { execa } = await import('execa');
  const { createInterface } = await import('node:readline');
  const { sha256File } = await import('../../storage/object-store.js');
  const expected = new Map(artifact.manifest.files.map((f) => [path.join(localDir, safeRelative(f.path)), f]));
  const proc = execa(s5cmd, ['--json', '--endpoint-url', `${store.config.useSSL ? 'https' : 'http'}://${store.config.endPoint}:${store.config.port}`, 'cp', `s3://${store.bucket}/${artifact.prefix}/files/*`, `${localDir}/`], {
    env: { ...process.env, ...env },
    reject: false,
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: { stdout: false, stderr: true },
  });
  const queue: string[] = [];
  const verified = new Set<string>();
  let failure: unknown;
  const waiting: (() => void)[] = [];
  const wakeAll = () => waiting.splice(0).forEach((w) => w());
  let ended = false;
  const verifier = async () => {
    for (;;) {
      const file = queue.shift();
      if (file === undefined) {
        if (ended) return;
        await new Promise<void>((resolve) => waiting.push(resolve));
        continue;
      }
      const f = expected.get(file);
      if (!f) continue;
      const got = await sha256File(file);
      if (got !== f.sha256) {
        await rm(file, { force: true });
        failure ??= new IntegrityError(`${artifact.uri}: ${f.path}: sha256 ${got} does not match the manifest (${f.sha256})`);
      } else verified.add(file);
    }
  };
  const verifiers = Array.from({ length: hashConcurrency }, verifier);
  for await (const line of createInterface({ input: proc.stdout! })) {
    const op = JSON.parse(line) as { success?: boolean; destination?: string };
    if (op.success && op.destination) {
      queue.push(path.resolve(op.destination));
      wakeAll();
    }
  }
  const result = await proc;
  ended = true;
  wakeAll();
  await Promise.all(verifiers);
  if (result.exitCode !== 0) throw new IntegrityError(`${artifact.uri}: s5cmd exited ${result.exitCode}: ${String(result.stderr).slice(-500)}`);
  if (failure) throw failure;
  const missing = [...expected.keys()].filter((f) => !verified.has(f));
  if (missing.length) throw new IntegrityError(`${artifact.uri}: ${missing.length} file(s) not downloaded, e.g. ${missing[0]}`);
  return { downloaded: verified.size };
}
