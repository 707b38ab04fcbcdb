/**
 * Errors of the local filesystem (a full scratch disk, a read-only mount, a failing drive), as
 * opposed to errors of the object being moved. The difference matters on a download: a checkpoint
 * that fails its sha256 is skipped for an older one, but one that could not be written because the
 * worker's disk is full is as good as ever — the attempt fails (the node's fault) and the next one
 * resumes from it.
 */

/** The native mover's "local" kind (infra/mover), with the errno it named. */
export class LocalFilesystemError extends Error {
  override name = 'LocalFilesystemError';
  constructor(
    message: string,
    /** The errno's name where known: ENOSPC, EDQUOT, EROFS, EIO… */
    readonly code: string | undefined,
    readonly key?: string,
  ) {
    super(message);
  }
}

/** Errnos that say the local disk, not the data, is the problem. */
const LOCAL_DISK_CODES = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EIO']);

/**
 * Whether `err` is the local disk refusing a write (full, over quota, read-only, failing): from the
 * mover, or a Node fs call (those carry a `syscall`; network errors with the same codes do not).
 */
export function isLocalDiskError(err: unknown): boolean {
  if (err instanceof LocalFilesystemError) return err.code !== undefined && LOCAL_DISK_CODES.has(err.code);
  const e = err as NodeJS.ErrnoException | undefined;
  return typeof e?.code === 'string' && LOCAL_DISK_CODES.has(e.code) && typeof e.syscall === 'string';
}

/** A job's own words for a full or failing disk (Python's OSError, a C library's strerror). */
export const DISK_FULL_TEXT = /No space left on device|\[Errno 28\]|Disk quota exceeded|\[Errno 122\]|Read-only file system|\[Errno 30\]|\bENOSPC\b/;
