/**
 * The native mover (infra/mover, storage/native-mover.ts) under the commit protocol, against real
 * MinIO: a ~300 MiB directory committed and downloaded through it, with the same manifest as
 * Node's path; a tampered object refused on download with no file under its name; an upload
 * aborted midway leaves no marker and no multipart upload; a resumed commit skips what is there;
 * the byte-rate cap; typed errors (not found, file changed).
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { appendFile, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { commitDirectory, downloadCommitted, IntegrityError, readCommitted, verifyCommitted, type CommitProgress } from '../../storage/commit.js';
import { moveFiles, moverPath } from '../../storage/native-mover.js';
import { FileChanged, isNotFound, sha256File, SINGLE_PUT_MAX_BYTES, type ObjectStore } from '../../storage/object-store.js';
import { testStore, withMover } from '../helpers/env.js';

const MiB = 1024 * 1024;
let store: ObjectStore;
let work: string;
const uniq = () => `nm-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`;

/** Random files of the given sizes, written in 16 MiB chunks. */
async function dirOf(sizes: Record<string, number>): Promise<string> {
  const dir = await mkdtemp(path.join(work, 'src-'));
  for (const [name, size] of Object.entries(sizes)) {
    const file = path.join(dir, name);
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, '');
    for (let done = 0; done < size; done += 16 * MiB) await appendFile(file, randomBytes(Math.min(16 * MiB, size - done)));
  }
  return dir;
}

async function incompleteUploads(prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const u of store.client.listIncompleteUploads(store.bucket, prefix, true) as AsyncIterable<{ key: string }>) keys.push(u.key);
  return keys;
}

beforeAll(async () => {
  store = testStore();
  work = await mkdtemp(path.join(tmpdir(), 'refinery-nm-'));
  if (!moverPath()) throw new Error('no native mover: run bash infra/bootstrap.sh mover (toolchain.json "mover"), or set REFINERY_MOVER');
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('native mover under the commit protocol', () => {
  it('commits and downloads a ~300 MiB directory through the mover; the manifest is the one Node writes', async () => {
    const dir = await dirOf({ 'model.safetensors': 290 * MiB, 'optimizer.pt': 40 * MiB, 'config.json': 700, 'extra/rng.bin': 100 * 1024, 'extra/empty.bin': 0 });
    const prefix = uniq();
    const progress: CommitProgress[] = [];
    let t = performance.now();
    const committed = await commitDirectory(store, dir, prefix, { step: 1 }, { deterministic: true, onProgress: (p) => progress.push(p) });
    const upMs = performance.now() - t;
    const last = progress.at(-1)!;
    expect(last.filesDone).toBe(5);
    expect(last.bytesDone).toBe(last.bytes);
    // Progress came per part, not once per file.
    expect(progress.filter((p) => p.bytesDone > 0 && p.bytesDone < last.bytes).length).toBeGreaterThan(10);
    expect(await verifyCommitted(store, prefix)).toEqual([]);

    const dest = path.join(work, `down-${prefix}`);
    t = performance.now();
    const got = await downloadCommitted(store, (await readCommitted(store, prefix))!, dest);
    const downMs = performance.now() - t;
    expect(got).toEqual({ downloaded: 5, reused: 0 });
    for (const f of committed.manifest.files) expect(await sha256File(path.join(dest, f.path))).toBe(f.sha256);
    expect((await readdir(dest, { recursive: true })).filter((n) => n.includes('.part-'))).toEqual([]);
    // A second download keeps every verified file.
    expect(await downloadCommitted(store, committed, dest)).toEqual({ downloaded: 0, reused: 5 });

    // Node's path, same content: the same deterministic manifest, byte for byte.
    const nodePrefix = uniq();
    const viaNode = await withMover('off', () => commitDirectory(store, dir, nodePrefix, { step: 1 }, { deterministic: true }));
    expect(viaNode.manifestSha256).toBe(committed.manifestSha256);
    expect(viaNode.manifest).toEqual(committed.manifest);
    console.log(`native mover: 330 MiB committed in ${(upMs / 1000).toFixed(2)} s, downloaded in ${(downMs / 1000).toFixed(2)} s`);
    await rm(dest, { recursive: true, force: true });
  });

  it('a tampered object (same size, other bytes) fails the download; no file appears under its name', async () => {
    const dir = await dirOf({ 'big.bin': 40 * MiB, 'small.txt': 1000 });
    const prefix = uniq();
    const committed = await commitDirectory(store, dir, prefix);
    const key = `${committed.filesPrefix}/big.bin`;
    await store.putBytes(key, randomBytes(40 * MiB));
    const dest = path.join(work, `tampered-${prefix}`);
    const err = await downloadCommitted(store, committed, dest).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IntegrityError);
    expect((err as Error).message).toMatch(/big\.bin: sha256 [0-9a-f]{64} does not match the manifest/);
    expect(existsSync(path.join(dest, 'big.bin'))).toBe(false);
    expect((await readdir(dest, { recursive: true }).catch(() => [])).filter((n) => n.includes('.part-'))).toEqual([]);
  });

  it('an upload aborted midway leaves no commit marker and no multipart upload', async () => {
    const dir = await dirOf({ 'model.bin': 200 * MiB, 'a.txt': 10 });
    const prefix = uniq();
    const stop = new AbortController();
    const err = await commitDirectory(store, dir, prefix, undefined, {
      signal: stop.signal,
      onProgress: (p) => {
        // Past the first part the mover acknowledged (the small file goes through Node), long before the end.
        if (p.bytesDone >= 16 * MiB && p.bytesDone < p.bytes / 2) stop.abort(new Error('stopped by the test'));
      },
    }).catch((e: unknown) => e);
    expect((err as Error).message).toBe('stopped by the test');
    expect(await readCommitted(store, prefix)).toBeUndefined();
    expect(await store.exists(`${prefix}/files/model.bin`)).toBe(false);
    expect(await incompleteUploads(`${prefix}/`)).toEqual([]);
  });

  it('a resumed commit skips the files already there, large ones included, and uploads what is missing', async () => {
    const dir = await dirOf({ 'a-large.bin': 48 * MiB, 'b-large.bin': 36 * MiB, 'c.txt': 2000 });
    expect(36 * MiB).toBeGreaterThan(SINGLE_PUT_MAX_BYTES);
    const prefix = uniq();
    const first = await commitDirectory(store, dir, prefix, undefined, { resume: true });
    // The mover recorded each large file's sha256 (it was hashed first, on a resume): HEAD finds it.
    expect((await store.head(`${prefix}/files/a-large.bin`))?.sha256).toBe(first.manifest.files[0]!.sha256);

    let last: CommitProgress | undefined;
    await commitDirectory(store, dir, prefix, undefined, { resume: true, onProgress: (p) => (last = p) });
    expect(last).toMatchObject({ files: 3, filesDone: 3, skippedFiles: 3 });

    await store.remove([`${prefix}/files/b-large.bin`]);
    const again = await commitDirectory(store, dir, prefix, undefined, { resume: true, onProgress: (p) => (last = p) });
    expect(last).toMatchObject({ files: 3, filesDone: 3, skippedFiles: 2, bytesDone: last!.bytes });
    expect(again.manifest.files).toEqual(first.manifest.files);
    expect(await verifyCommitted(store, prefix)).toEqual([]);
  });

  it('honours maxBytesPerSecond (a lower bound on the time)', async () => {
    const dir = await dirOf({ 'x.bin': 64 * MiB });
    const file = path.join(dir, 'x.bin');
    const key = `${uniq()}/x.bin`;
    let t = performance.now();
    const [up] = await moveFiles(store.config, { op: 'put', files: [{ key, path: file, size: 64 * MiB }], maxBytesPerSecond: 32 * MiB });
    const upMs = performance.now() - t;
    expect(up!.sha256).toBe(await sha256File(file));
    expect(upMs).toBeGreaterThanOrEqual(1600);
    t = performance.now();
    await moveFiles(store.config, { op: 'get', files: [{ key, path: path.join(work, `${uniq()}.bin`), size: 64 * MiB, sha256: up!.sha256 }], maxBytesPerSecond: 32 * MiB });
    expect(performance.now() - t).toBeGreaterThanOrEqual(1600);
  });

  it('maps its errors: a missing object is not-found; a file that no longer matches its hash is FileChanged, its upload aborted', async () => {
    const missing = await moveFiles(store.config, { op: 'get', files: [{ key: `${uniq()}/nope`, path: path.join(work, 'nope'), size: 10 }] }).catch((e: unknown) => e);
    expect(isNotFound(missing)).toBe(true);
    expect(existsSync(path.join(work, 'nope'))).toBe(false);

    const dir = await dirOf({ 'big.bin': 40 * MiB, 'small.bin': 1000 });
    const prefix = uniq();
    const wrong = createHash('sha256').update('something else').digest('hex');
    for (const name of ['big.bin', 'small.bin']) {
      const err = await moveFiles(store.config, { op: 'put', files: [{ key: `${prefix}/${name}`, path: path.join(dir, name), size: 0, sha256: wrong }] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(FileChanged);
      expect(await store.exists(`${prefix}/${name}`)).toBe(false);
    }
    expect(await incompleteUploads(`${prefix}/`)).toEqual([]);

    // A small file's PUT records its sha256 for HEAD, as putFileHashed does.
    const [small] = await moveFiles(store.config, { op: 'put', files: [{ key: `${prefix}/small.bin`, path: path.join(dir, 'small.bin'), size: 1000 }] });
    expect((await store.head(`${prefix}/small.bin`))?.sha256).toBe(small!.sha256);
  });
});
