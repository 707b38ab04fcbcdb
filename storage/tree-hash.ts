/**
 * The content address of a directory (a model): every file's sha256, streamed in 1 MiB reads
 * (memory does not grow with file size), and one sha256 over the sorted (path, file hash) pairs.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';

/** Hash of a directory's content: relative paths and file hashes, sorted. */
export async function treeSha256(dir: string, onProgress?: (p: TreeHashProgress) => void): Promise<string> {
  return (await hashTree(dir, onProgress)).sha256;
}

export interface TreeHashProgress {
  files: number;
  filesDone: number;
  bytes: number;
  bytesDone: number;
}

/**
 * treeSha256, with each file's sha256 by relative path (a commit of the directory then need not hash
 * them again to compare with the bucket). `onProgress` is called per MiB hashed and per file.
 */
export async function hashTree(dir: string, onProgress?: (p: TreeHashProgress) => void): Promise<{ sha256: string; files: Map<string, string> }> {
  const found: { rel: string; abs: string; size: number }[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const abs = path.join(d, e.name);
      if (e.isDirectory()) await walk(abs);
      else if (e.isFile()) found.push({ rel: path.relative(dir, abs).split(path.sep).join('/'), abs, size: (await stat(abs)).size });
    }
  };
  await walk(dir);
  const p: TreeHashProgress = { files: found.length, filesDone: 0, bytes: found.reduce((a, f) => a + f.size, 0), bytesDone: 0 };
  onProgress?.({ ...p });
  const files = new Map<string, string>();
  for (const f of found) {
    const before = p.bytesDone;
    files.set(f.rel, await hashFile(f.abs, (done) => onProgress?.({ ...p, bytesDone: before + done })));
    p.bytesDone = before + f.size;
    p.filesDone++;
    onProgress?.({ ...p });
  }
  const entries = found.map((f) => `${f.rel}\0${files.get(f.rel)!}`);
  return { sha256: createHash('sha256').update(entries.sort().join('\n')).digest('hex'), files };
}

/** sha256 of a file, read in 1 MiB chunks, reporting the bytes hashed so far after each. */
export async function hashFile(file: string, onBytes?: (bytesDone: number) => void): Promise<string> {
  const hash = createHash('sha256');
  let done = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
    hash.update(chunk);
    done += chunk.length;
    onBytes?.(done);
  }
  return hash.digest('hex');
}

