/**
 * Hands out this worker's GPUs to training jobs: a job that asks for n GPUs waits until n are
 * free, and the worker never runs more GPU work than it has GPUs for. CPU-only jobs (n = 0) pass.
 */
export interface GpuLease {
  devices: number[];
  release(): void;
}

export class GpuAllocator {
  private free: number[];
  private waiters: { n: number; resolve: (lease: GpuLease) => void }[] = [];

  constructor(readonly devices: number[]) {
    this.free = [...devices];
  }

  async acquire(n: number, signal?: AbortSignal): Promise<GpuLease> {
    if (n > this.devices.length) {
      throw new Error(`stage needs ${n} GPU(s); this worker has ${this.devices.length}`);
    }
    if (n === 0) return { devices: [], release: () => undefined };
    if (this.free.length >= n && this.waiters.length === 0) return this.lease(n);
    return new Promise((resolve, reject) => {
      const cancelled = () => (signal?.reason instanceof Error ? signal.reason : new Error('cancelled while waiting for a GPU'));
      // An already-aborted signal never fires 'abort': without this check the caller waits forever.
      if (signal?.aborted) return reject(cancelled());
      const onAbort = () => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(cancelled());
        this.drain(); // the aborted waiter may have been the head of the queue, blocking the others
      };
      const waiter = {
        n,
        resolve: (lease: GpuLease) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(lease);
        },
      };
      this.waiters.push(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  get available(): number {
    return this.free.length;
  }

  private lease(n: number): GpuLease {
    const devices = this.free.splice(0, n);
    let released = false;
    return {
      devices,
      release: () => {
        if (released) return;
        released = true;
        this.free.push(...devices);
        this.free.sort((a, b) => a - b);
        this.drain();
      },
    };
  }

  private drain(): void {
    while (this.waiters.length > 0 && this.free.length >= this.waiters[0]!.n) {
      const w = this.waiters.shift()!;
      w.resolve(this.lease(w.n));
    }
  }
}
