/** Sleeping and polling, for everything that drives a private stack (tests, the fault suite, benchmarks). */

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Polls `fn` until it returns something truthy (errors count as "not yet"); undefined on timeout. */
export async function waitFor<T>(fn: () => Promise<T | undefined | null | false> | T | undefined | null | false, timeoutMs: number, everyMs = 100): Promise<T | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let v: T | undefined | null | false;
    try {
      v = await fn();
    } catch {
      v = undefined;
    }
    if (v) return v;
    if (Date.now() > deadline) return undefined;
    await sleep(everyMs);
  }
}

/** `waitFor` that throws `timed out waiting for <what>` on timeout. */
export async function until<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 60_000, everyMs = 200): Promise<T> {
  const v = await waitFor(fn, timeoutMs, everyMs);
  if (!v) throw new Error(`timed out waiting for ${what}`);
  return v;
}
