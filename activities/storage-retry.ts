/** Riding out object-storage outages inside an activity: which errors are transient, and a retry loop. */

/** Errors worth retrying: the store is unreachable, restarting or overloaded (not a local file problem). */
export function isTransientStorageError(err: unknown): boolean {
  const e = err as { code?: unknown; statusCode?: unknown; syscall?: unknown; message?: unknown } | undefined;
  const code = typeof e?.code === 'string' ? e.code : '';
  if (['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'UND_ERR_SOCKET'].includes(code)) return true;
  if (['SlowDown', 'ServiceUnavailable', 'InternalError', 'RequestTimeout', 'XMinioServerNotInitialized'].includes(code)) return true;
  if (typeof e?.statusCode === 'number' && e.statusCode >= 500) return true;
  return typeof e?.message === 'string' && /socket hang up|ECONNRESET|ECONNREFUSED|server not initialized/i.test(e.message);
}

export type StorageRetry = <T>(what: string, fn: () => Promise<T>) => Promise<T>;

/**
 * A retry policy for storage writes: a transient failure is retried with backoff (0.5 s … 8 s)
 * until `budgetMs` has passed since the first failure of that call; `onWait` runs about every
 * second meanwhile (heartbeat, so the attempt stays alive). Aborting stops the retries.
 */
export function storageRetry(options: { budgetMs: number; signal: AbortSignal; onWait?: () => void; warn?: (message: string, error: unknown) => void }): StorageRetry {
  return async (what, fn) => {
    const deadline = Date.now() + options.budgetMs;
    for (let delay = 500; ; delay = Math.min(delay * 2, 8_000)) {
      try {
        return await fn();
      } catch (err) {
        if (options.signal.aborted || !isTransientStorageError(err) || Date.now() + delay > deadline) throw err;
        options.warn?.(`${what} failed; retrying in ${delay} ms`, err);
        for (let waited = 0; waited < delay && !options.signal.aborted; waited += 1000) {
          options.onWait?.();
          await new Promise((resolve) => setTimeout(resolve, Math.min(1000, delay - waited)));
        }
      }
    }
  };
}
