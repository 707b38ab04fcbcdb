/**
 * The worker's cache of stage inputs (model stacks, datasets) on local disk, one directory per
 * entry (`<dir>/<key>/`, the key being the artifact's manifest sha256), kept within a size cap by
 * least-recently-used eviction that never touches an entry a running job reads.
 *
 *   acquire(key, bytes, fill) → { dir, release() }
 *
 * - Reference counts per process (each worker process has its own scratch dir): an entry acquired
 *   and not yet released is in use, and an entry in use is never evicted.
 * - Concurrent acquires of one entry share one fill: the first starts it, the others wait for it.
 * - `fill(dir)` makes the directory hold the entry's whole content, verifying what is already there
 *   (storage/commit.ts downloadCommitted: files with the right sha256 are kept). It runs when an
 *   entry is new or incomplete, and whenever an idle entry is taken into use again (so each job
 *   reads inputs checked against their manifest, as before the cache — a verification, not a
 *   download); never while other holders read the entry.
 * - Before a fill, idle entries are evicted, least recently used first (by last acquire or
 *   release), until the cached bytes (every entry's size from its manifest, those being filled
 *   included) fit the cap. When entries in use alone exceed it, the fill goes ahead anyway (a job
 *   needs its inputs) and the excess is logged; once released, entries are evicted again until the
 *   cap holds — an entry bigger than the cap alone included.
 * - A completed fill leaves a stamp `<dir>/<key>.complete`. On startup the entries an earlier
 *   process of the same scratch dir left are accounted for (their sizes scanned on disk); a
 *   directory without a stamp (a fill that never finished) is removed.
 */
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

export const GiB = 1024 ** 3;
/** The default cap (REFINERY_INPUT_CACHE_GB, config/worker.ts). */
export const DEFAULT_INPUT_CACHE_BYTES = 64 * GiB;

export interface InputCacheLogger {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
}

export interface InputCacheOptions {
  dir: string;
  capBytes: number;
  log?: InputCacheLogger;
}

export interface CacheLease {
  /** The entry's directory: read it, never write it (other jobs may read it at the same time). */
  dir: string;
  /** Ends this hold (idempotent); resolves once any eviction it triggered is off the disk. */
  release(): Promise<void>;
}

/** One entry as the cache sees it (tests, logs). */
export interface CacheEntryInfo {
  key: string;
  bytes: number;
  refs: number;
  complete: boolean;
  filling: boolean;
}

interface Entry {
  key: string;
  dir: string;
  /** Bytes counted against the cap: the manifest's total (scanned on disk for an earlier process's entry). */
  bytes: number;
  refs: number;
  /** Logical clock of the last acquire or release: the LRU order. */
  lastUsed: number;
  /** Its content is whole and verified (a stamp on disk). */
  complete: boolean;
  /** The fill in progress that acquirers wait for. */
  filling?: Promise<void>;
}

const STAMP = '.complete';
const KEY = /^[A-Za-z0-9][A-Za-z0-9_-]*$/;

const consoleLog: InputCacheLogger = {
  info: (m, f) => console.log(`[input-cache] ${m}`, f ?? ''),
  warn: (m, f) => console.warn(`[input-cache] ${m}`, f ?? ''),
};

const gib = (bytes: number) => (bytes >= GiB / 10 ? `${+(bytes / GiB).toFixed(2)} GiB` : `${+(bytes / 1024 ** 2).toFixed(1)} MiB`);

export class InputCache {
  readonly dir: string;
  readonly capBytes: number;
  private readonly log: InputCacheLogger;
  private readonly entries = new Map<string, Entry>();
  /** Entries being removed from disk: an acquire of the same key waits until they are gone. */
  private readonly removing = new Map<string, Promise<void>>();
  private clock = 0;
  private opened?: Promise<void>;

  constructor(options: InputCacheOptions) {
    if (!Number.isFinite(options.capBytes) || options.capBytes < 0) throw new Error(`input cache cap must be a number of bytes >= 0, not ${options.capBytes}`);
    this.dir = options.dir;
    this.capBytes = options.capBytes;
    this.log = options.log ?? consoleLog;
  }

  /** Accounts for what an earlier process of this scratch dir left (once; acquire calls it). */
  open(): Promise<void> {
    this.opened ??= this.scan().catch((err: unknown) => {
      this.opened = undefined;
      throw err;
    });
    return this.opened;
  }

  /** Bytes of every entry counted against the cap (those in use and being filled included). */
  get totalBytes(): number {
    let total = 0;
    for (const e of this.entries.values()) total += e.bytes;
    return total;
  }

  list(): CacheEntryInfo[] {
    return [...this.entries.values()]
      .sort((a, b) => a.lastUsed - b.lastUsed)
      .map((e) => ({ key: e.key, bytes: e.bytes, refs: e.refs, complete: e.complete, filling: e.filling !== undefined }));
  }

  /**
   * Holds entry `key` (of `bytes` bytes, from its manifest) until release(); fills it first when
   * needed (see the module comment). A failed fill fails every acquire waiting on it; the entry
   * stays, incomplete, for the next acquire to fill again (what was verified is kept).
   */
  async acquire(key: string, bytes: number, fill: (dir: string) => Promise<void>): Promise<CacheLease> {
    if (!KEY.test(key)) throw new Error(`input cache key ${JSON.stringify(key)}: expected letters, digits, - and _ only`);
    if (!Number.isFinite(bytes) || bytes < 0) throw new Error(`input cache entry ${key}: bad size ${bytes}`);
    await this.open();
    // An eviction of this key still under way: let it finish, then fill anew.
    for (let gone = this.removing.get(key); gone && !this.entries.has(key); gone = this.removing.get(key)) await gone;
    let entry = this.entries.get(key);
    if (!entry) {
      entry = { key, dir: path.join(this.dir, key), bytes: 0, refs: 0, lastUsed: 0, complete: false };
      this.entries.set(key, entry);
    }
    const e = entry;
    e.refs++;
    e.lastUsed = ++this.clock;
    if (!e.filling && (e.refs === 1 || !e.complete)) {
      const filling = this.fill(e, bytes, fill).finally(() => {
        if (e.filling === filling) delete e.filling;
      });
      e.filling = filling;
    }
    try {
      await e.filling;
    } catch (err) {
      await this.release(e);
      throw err;
    }
    let released = false;
    return {
      dir: e.dir,
      release: async () => {
        if (released) return;
        released = true;
        await this.release(e);
      },
    };
  }

  private async fill(e: Entry, bytes: number, fill: (dir: string) => Promise<void>): Promise<void> {
    const fresh = !e.complete;
    e.bytes = bytes;
    await this.makeRoom(e);
    const stamp = `${e.dir}${STAMP}`;
    try {
      if (fresh) await rm(stamp, { force: true });
      await mkdir(e.dir, { recursive: true });
      await fill(e.dir);
      if (fresh) await writeFile(stamp, JSON.stringify({ key: e.key, bytes, completedAt: new Date().toISOString() }) + '\n');
      e.complete = true;
    } catch (err) {
      // Part of it may be missing or wrong now: the next acquire fills (and verifies) it again.
      e.complete = false;
      await rm(stamp, { force: true }).catch(() => undefined);
      throw err;
    }
  }

  private async release(e: Entry): Promise<void> {
    e.refs--;
    e.lastUsed = ++this.clock;
    if (e.refs === 0 && this.totalBytes > this.capBytes) await this.makeRoom();
  }

  /**
   * Evicts idle entries, least recently used first, until the cached bytes fit the cap; waits
   * until they are off the disk. `filling`: the entry about to be filled (its size counted).
   */
  private async makeRoom(filling?: Entry): Promise<void> {
    let total = this.totalBytes;
    const idle = [...this.entries.values()].filter((x) => x.refs === 0 && !x.filling).sort((a, b) => a.lastUsed - b.lastUsed);
    for (const victim of idle) {
      if (total <= this.capBytes) break;
      total -= victim.bytes;
      this.evict(victim);
    }
    if (total > this.capBytes) {
      const inUse = [...this.entries.values()].filter((x) => x.refs > 0);
      this.log.warn(`input cache over its cap: ${gib(total)} cached > ${gib(this.capBytes)}, held by running jobs (${inUse.length} entr${inUse.length === 1 ? 'y' : 'ies'} in use)`, {
        cachedBytes: total,
        capBytes: this.capBytes,
        ...(filling ? { filling: filling.key, fillingBytes: filling.bytes } : {}),
        inUse: inUse.map((x) => x.key.slice(0, 12)),
      });
    }
    // Every eviction under way, this one's and others': what is counted out is off the disk first.
    await Promise.all(this.removing.values());
  }

  private evict(e: Entry): void {
    this.entries.delete(e.key);
    this.log.info(`evicting input ${e.key.slice(0, 12)}… (${gib(e.bytes)}, least recently used) to keep the cache within its cap of ${gib(this.capBytes)}`, { key: e.key, bytes: e.bytes });
    const gone = this.remove(e.key).finally(() => {
      if (this.removing.get(e.key) === gone) this.removing.delete(e.key);
    });
    this.removing.set(e.key, gone);
  }

  /** The stamp first: a removal cut short leaves a directory without one, removed on startup. */
  private async remove(key: string): Promise<void> {
    const dir = path.join(this.dir, key);
    try {
      await rm(`${dir}${STAMP}`, { force: true });
      await rm(dir, { recursive: true, force: true });
    } catch (err) {
      this.log.warn(`could not remove evicted input ${key}`, { error: String(err) });
    }
  }

  private async scan(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const names = await readdir(this.dir, { withFileTypes: true });
    const stamps = new Set(names.filter((d) => d.isFile() && d.name.endsWith(STAMP)).map((d) => d.name.slice(0, -STAMP.length)));
    let found = 0;
    let partial = 0;
    for (const d of names) {
      if (!d.isDirectory()) continue;
      if (!KEY.test(d.name) || !stamps.has(d.name)) {
        // A fill that never finished (or something that is no entry): not trusted, not kept.
        partial++;
        await rm(path.join(this.dir, d.name), { recursive: true, force: true });
        continue;
      }
      stamps.delete(d.name);
      const bytes = await du(path.join(this.dir, d.name));
      this.entries.set(d.name, { key: d.name, dir: path.join(this.dir, d.name), bytes, refs: 0, lastUsed: ++this.clock, complete: true });
      found++;
    }
    // Stamps whose directory is gone.
    for (const key of stamps) await rm(path.join(this.dir, `${key}${STAMP}`), { force: true });
    if (found > 0 || partial > 0) {
      this.log.info(`input cache ${this.dir}: ${found} entr${found === 1 ? 'y' : 'ies'} (${gib(this.totalBytes)}) kept from an earlier worker; ${partial} incomplete removed`, { found, partial, bytes: this.totalBytes });
    }
    await this.makeRoom();
  }
}

/** Bytes of the files under `dir`. */
async function du(dir: string): Promise<number> {
  let total = 0;
  for (const d of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, d.name);
    if (d.isDirectory()) total += await du(p);
    else if (d.isFile()) total += (await stat(p)).size;
  }
  return total;
}
