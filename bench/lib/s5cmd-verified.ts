/**
 * The second reference for downloads: s5cmd followed by the sha256 check against the manifest
 * that Refinery always does, overlapped as well as it can be.
 */
import path from 'node:path';
import { rm } from 'node:fs/promises';
import { IntegrityError, type CommittedArtifact } from '../../storage/commit.js';
import type { ObjectStore } from '../../storage/object-store.js';

function safeRelative(p: string): string {
  const norm = path.posix.normalize(p);
  if (norm.startsWith('../') || norm === '..' || path.posix.isAbsolute(norm)) throw new IntegrityError(`unsafe path in manifest: ${p}`);
  return norm;
}

/**
 * s5cmd moves the bytes (Go, parallel ranged GETs) and Node verifies each
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
  const proc = execa(s5cmd, ['--json', '--endpoint-url', `${store.config.useSSL ? 'https' : 'http'}://${store.config.endPoint}:${store.config.port}`, 'cp', `s3://${store.bucket}/${artifact.filesPrefix}/*`, `${localDir}/`], {
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
