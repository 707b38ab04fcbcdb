/**
 * A full (or failing) scratch disk is the node's failure, not the job's: how the training activity
 * classifies it, whether the job said so (its OSError) or a download into the disk was refused.
 * The restore path against a real full disk: test/integration/full-scratch-restore.test.ts.
 */
import { ApplicationFailure } from '@temporalio/common';
import { describe, expect, it } from 'vitest';
import { throwIfJobFailed, type JobEnd } from '../../activities/job-failure.js';
import { isLocalDiskError, LocalFilesystemError } from '../../storage/local-fs-error.js';
import { classifyFailure } from '../../workflows/failures.js';

function jobEnd(message: string, logTail = ''): JobEnd {
  return {
    result: { exitCode: 1, exitSignal: undefined, reason: 'exited', contractViolations: [], pid: 1234, oomKilled: false } as unknown as JobEnd['result'],
    sawDone: false,
    lastError: { event: 'error', category: 'runtime', message } as JobEnd['lastError'],
    stallMs: 0,
    lastStep: 15,
    logUri: 's3://refinery/logs/x',
    logTail,
    details: { host: 'gpu-a', step: 15 },
  };
}

function thrown(fn: () => void): ApplicationFailure {
  try {
    fn();
  } catch (err) {
    return err as ApplicationFailure;
  }
  throw new Error('nothing thrown');
}

describe('a job that could not write to its scratch disk', () => {
  it.each([
    "OSError: [Errno 28] No space left on device: '/scratch/stages/x/checkpoints/checkpoint-20/model.safetensors'",
    'RuntimeError: [enforce fail at inline_container.cc:603] . unexpected pos 1472 vs 1366 (PytorchStreamWriter failed writing file data/0: file write failed) ... No space left on device',
    "OSError: [Errno 122] Disk quota exceeded: '/scratch/x'",
  ])('is infrastructure: scratch disk (%s)', (message) => {
    const err = thrown(() => throwIfJobFailed(jobEnd(message)));
    expect(err.type).toBe('ScratchDiskFailed');
    expect(err.nonRetryable).toBe(false);
    expect(err.message).toContain('after step 15');
    const c = classifyFailure(err);
    expect([c.class, c.kind]).toEqual(['infrastructure', 'scratch-disk']);
  });

  it('an ordinary crash stays a job crash', () => {
    const err = thrown(() => throwIfJobFailed(jobEnd('ValueError: shapes do not match')));
    expect(err.type).toBe('JobCrashed');
  });
});

describe('isLocalDiskError', () => {
  it("knows the local disk's errors, and only those", () => {
    const fsError = (code: string, syscall: string | undefined) => Object.assign(new Error(`${code}: ${syscall}`), { code, ...(syscall ? { syscall } : {}) });
    expect(isLocalDiskError(fsError('ENOSPC', 'write'))).toBe(true);
    expect(isLocalDiskError(fsError('EROFS', 'open'))).toBe(true);
    expect(isLocalDiskError(fsError('EIO', 'read'))).toBe(true);
    // Network errors, or the same code without a local syscall, are not the disk's.
    expect(isLocalDiskError(fsError('ECONNRESET', 'read'))).toBe(false);
    expect(isLocalDiskError(fsError('ENOSPC', undefined))).toBe(false);
    expect(isLocalDiskError(new LocalFilesystemError('/x: no space left on device', 'ENOSPC'))).toBe(true);
    // A missing local file is not a disk failure.
    expect(isLocalDiskError(new LocalFilesystemError('/x: no such file', 'ENOENT'))).toBe(false);
    expect(isLocalDiskError(new Error('sha256 mismatch'))).toBe(false);
  });
});
