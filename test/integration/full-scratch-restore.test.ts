/**
 * A resume into a full scratch disk (real MinIO, a real 64 MB tmpfs): the restore download fails
 * with the disk's own error — never IntegrityError, so the checkpoint is not skipped for an older
 * one or for a start from scratch — leaves nothing behind on the small disk, and succeeds once
 * there is room. Both transfer paths: the native mover (a file above the single-PUT size) and
 * Node's (REFINERY_MOVER=off). The attempt's classification (infrastructure: scratch disk) is in
 * test/unit/scratch-disk-failure.test.ts.
 */
import { randomBytes } from 'node:crypto';
import { appendFile, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { smallFilesystem, type SmallFs } from '../../faults/harness.js';
import { commitCheckpoint, restoreNewestCheckpoint } from '../../storage/checkpoints.js';
import { IntegrityError } from '../../storage/commit.js';
import { isLocalDiskError } from '../../storage/local-fs-error.js';
import { moverPath } from '../../storage/native-mover.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { testStore, withMover } from '../helpers/env.js';

const MiB = 1024 * 1024;
let store: ObjectStore;
let work: string;
let small: SmallFs;

async function checkpointDir(sizes: Record<string, number>): Promise<string> {
  const dir = await mkdtemp(path.join(work, 'ckpt-'));
  for (const [name, size] of Object.entries(sizes)) {
    const file = path.join(dir, name);
    await writeFile(file, '');
    for (let done = 0; done < size; done += 8 * MiB) await appendFile(file, randomBytes(Math.min(8 * MiB, size - done)));
  }
  return dir;
}

beforeAll(async () => {
  store = testStore();
  work = await mkdtemp(path.join(tmpdir(), 'refinery-fullscratch-'));
  const fs = await smallFilesystem(work, 64);
  if ('unavailable' in fs) throw new Error(fs.unavailable);
  small = fs;
});

afterAll(async () => {
  await small?.release();
  await rm(work, { recursive: true, force: true });
});

describe.each([
  // 40 MiB: above the single-PUT size, so it moves through the native mover when there is one.
  { path: 'native mover', mover: undefined as string | undefined, sizes: { 'model.safetensors': 40 * MiB, 'trainer_state.json': 4000 } as Record<string, number> },
  { path: "Node's transfers", mover: 'off', sizes: { 'model.safetensors': 12 * MiB, 'optimizer.pt': 6 * MiB, 'trainer_state.json': 4000 } },
])('restore into a full scratch disk ($path)', ({ mover, sizes }) => {
  it('fails with the disk error, skips nothing, leaves nothing, and restores once there is room', async () => {
    if (mover === undefined && !moverPath()) throw new Error('no native mover: run bash infra/bootstrap.sh mover');
    await withMover(mover, async () => {
      const prefix = `fullscratch-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`;
      const src = await checkpointDir(sizes);
      await commitCheckpoint(store, prefix, 5, src);
      await commitCheckpoint(store, prefix, 10, src);
      const parent = path.join(small.dir, 'checkpoints');
      await mkdir(parent, { recursive: true });
      await small.fill();
      try {
        const failed = await restoreNewestCheckpoint(store, prefix, parent).then(
          (r) => ({ resolved: r }),
          (err: unknown) => ({ err }),
        );
        expect('err' in failed, `restored on a full disk: ${JSON.stringify(failed)}`).toBe(true);
        const err = (failed as { err: unknown }).err;
        expect(err).not.toBeInstanceOf(IntegrityError);
        expect(isLocalDiskError(err), String(err)).toBe(true);
        expect(String((err as Error).message)).toMatch(/no space left on device|ENOSPC/i);
        // Nothing half-downloaded is left on the full disk (the partial checkpoint dir, temp files).
        expect(await readdir(parent)).toEqual([]);
      } finally {
        await small.unfill();
      }
      // Room again: the newest checkpoint, not an older one.
      const restore = await restoreNewestCheckpoint(store, prefix, parent);
      expect(restore.skipped).toEqual([]);
      expect(restore.restored?.step).toBe(10);
      expect((await readdir(restore.restored!.dir)).sort()).toEqual(Object.keys(sizes).sort());
      await rm(parent, { recursive: true, force: true });
    });
  });
});
