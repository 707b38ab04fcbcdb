/**
 * The job log shipper (activities/log-shipper.ts) and the one reader of job logs
 * (storage/job-logs.ts) against the real MinIO of the test stack: parts appear while a file
 * grows, early when enough bytes are there, end on line ends, become one object on finish(),
 * read back as the file so far, and survive an object-store outage (a TCP proxy in front of
 * MinIO that goes down and comes back on the same port).
 */
import { appendFile, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { startLogShipping, type LogShipper } from '../../activities/log-shipper.js';
import { getFreePort } from '../../infra/stack.js';
import { JobLogTail, listJobLogParts, listJobLogs, readJobLog } from '../../storage/job-logs.js';
import { layout } from '../../storage/layout.js';
import { ObjectStore } from '../../storage/object-store.js';
import { testStore } from '../helpers/env.js';

let store: ObjectStore;
let dir: string;
const started: LogShipper[] = [];

beforeAll(async () => {
  store = testStore();
  dir = await mkdtemp(path.join(tmpdir(), 'refinery-log-shipper-'));
});
afterEach(async () => {
  await Promise.all(started.splice(0).map((s) => s.finish()));
  vi.restoreAllMocks();
});

let seq = 0;
/** A fresh local file and the key it ships to (an events file of its own run). */
function target(kind: 'log' | 'events' = 'events') {
  const runId = `ship-${Date.now()}-${++seq}`;
  const key = kind === 'log' ? layout.jobLog('it-ship', runId, 'sft', 1) : layout.jobEvents('it-ship', runId, 'sft', 1);
  return { runId, runKey: layout.run('it-ship', runId), key, file: path.join(dir, `${runId}.${kind}`) };
}

function ship(options: Parameters<typeof startLogShipping>[0]): LogShipper {
  const s = startLogShipping(options);
  started.push(s);
  return s;
}

async function parts(key: string): Promise<Buffer[]> {
  const list = await listJobLogParts(store, key);
  return Promise.all(list.map(async (p) => (await store.getBytes(p.key))!));
}

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 20_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const line = (i: number) => JSON.stringify({ at: new Date().toISOString(), attempt: 1, event: 'progress', step: i, loss: 1 / (i + 1) }) + '\n';

describe('log shipper', () => {
  it('ships appended lines as parts within the interval while the file grows', async () => {
    const t = target();
    const intervalMs = 1500;
    const pollMs = 250;
    ship({ store, file: t.file, key: t.key, intervalMs, pollMs });
    const appended: number[] = [];
    const seenAt: number[] = [];
    let content = '';
    const writer = (async () => {
      for (let i = 0; i < 60; i++) {
        const l = line(i);
        content += l;
        await appendFile(t.file, l);
        appended.push(Date.now());
        await new Promise((r) => setTimeout(r, 80));
      }
    })();
    // Meanwhile: what the bucket holds is always the file so far, up to a line end.
    let done = false;
    void writer.then(() => (done = true));
    while (!done || seenAt.length < 60) {
      const bytes = (await readJobLog(store, t.key)) ?? Buffer.alloc(0);
      const text = bytes.toString('utf8');
      expect(content.startsWith(text)).toBe(true);
      if (text.length > 0) expect(text.endsWith('\n')).toBe(true);
      const lines = text.split('\n').filter(Boolean).length;
      while (seenAt.length < lines) seenAt.push(Date.now());
      if (done && Date.now() - appended.at(-1)! > intervalMs + pollMs + 3000) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await writer;
    expect(seenAt).toHaveLength(60);
    // Every line is in the bucket within the interval (plus one size check and the upload).
    const lag = Math.max(...seenAt.map((s, i) => s - appended[i]!));
    expect(lag).toBeLessThanOrEqual(intervalMs + pollMs + 1500);
    const got = await parts(t.key);
    expect(got.length).toBeGreaterThanOrEqual(2);
    for (const p of got) expect(p.toString('utf8').endsWith('\n')).toBe(true);
    expect(await store.exists(t.key)).toBe(false);
  });

  it('flushes early once maxBytes new bytes are there; parts hold whole lines, at most maxBytes', async () => {
    const t = target();
    const maxBytes = 4096;
    ship({ store, file: t.file, key: t.key, intervalMs: 600_000, maxBytes, pollMs: 100 });
    let content = '';
    for (let i = 0; content.length < maxBytes / 2; i++) content += line(i);
    await writeFile(t.file, content);
    // Under maxBytes: waits for the (10 min) interval.
    await new Promise((r) => setTimeout(r, 1000));
    expect(await listJobLogParts(store, t.key)).toEqual([]);
    let more = '';
    for (let i = 0; content.length + more.length < 3 * maxBytes + 500; i++) more += line(1000 + i);
    content += more;
    await appendFile(t.file, more);
    // Over it: everything there goes up at the next size check, in parts of at most maxBytes.
    const t0 = Date.now();
    await until('the file in parts', async () => (await readJobLog(store, t.key))?.toString('utf8') === content, 10_000, 50);
    expect(Date.now() - t0).toBeLessThan(5000);
    const got = await parts(t.key);
    expect(got.length).toBeGreaterThanOrEqual(4);
    for (const p of got) {
      expect(p.length).toBeLessThanOrEqual(maxBytes);
      expect(p.toString('utf8').endsWith('\n')).toBe(true);
      for (const l of p.toString('utf8').split('\n').filter(Boolean)) expect(() => JSON.parse(l)).not.toThrow();
    }
  });

  it('never ships half a line; flushNow ships what is complete; finish leaves one whole object and no parts', async () => {
    const t = target('log');
    const s = ship({ store, file: t.file, key: t.key, intervalMs: 600_000 });
    await s.flushNow(); // no file yet: nothing, no error
    expect(await listJobLogs(store, t.runKey)).toEqual([]);
    expect(await readJobLog(store, t.key)).toBeUndefined();

    await writeFile(t.file, 'step 1 ok\nstep 2 is half');
    await s.flushNow();
    expect((await readJobLog(store, t.key))?.toString('utf8')).toBe('step 1 ok\n');
    await appendFile(t.file, ' done\nstep 3 ok\n');
    await s.flushNow();
    expect((await parts(t.key)).map((p) => p.toString('utf8'))).toEqual(['step 1 ok\n', 'step 2 is half done\nstep 3 ok\n']);
    // Parts only: the listing knows the attempt, not complete; the reader joins the parts.
    expect(await listJobLogs(store, t.runKey)).toEqual([{ stage: 'sft', attempt: 1, kind: 'log', key: t.key, complete: false }]);
    expect((await readJobLog(store, t.key))?.toString('utf8')).toBe('step 1 ok\nstep 2 is half done\nstep 3 ok\n');

    // The log's last line may lack its end: finish() keeps it (the whole file goes up).
    await appendFile(t.file, 'exit without newline');
    await s.finish();
    await s.finish(); // once is enough; twice is harmless
    const whole = await store.getBytes(t.key);
    expect(whole?.toString('utf8')).toBe(await readFile(t.file, 'utf8'));
    expect(await store.list(`${layout.jobLogParts(t.key)}/`)).toEqual([]);
    expect(await listJobLogs(store, t.runKey)).toEqual([{ stage: 'sft', attempt: 1, kind: 'log', key: t.key, complete: true, size: whole!.length }]);
    expect(await readJobLog(store, t.key)).toEqual(whole);
  });

  it('a follower reads on from the parts into the whole object without losing or repeating a byte', async () => {
    const t = target('log');
    const s = ship({ store, file: t.file, key: t.key, intervalMs: 600_000 });
    const tail = new JobLogTail(store, t.key);
    let followed = '';
    await writeFile(t.file, 'a\nb\n');
    await s.flushNow();
    followed += (await tail.read()).toString('utf8');
    await appendFile(t.file, 'c\n');
    await s.flushNow();
    followed += (await tail.read()).toString('utf8');
    followed += (await tail.read()).toString('utf8'); // nothing new
    expect(followed).toBe('a\nb\nc\n');
    await appendFile(t.file, 'd\ne');
    await s.finish();
    // The parts are gone now: the tail carries on in the whole object from where it was.
    followed += (await tail.read()).toString('utf8');
    expect(tail.complete).toBe(true);
    expect(followed).toBe('a\nb\nc\nd\ne');
    expect((await tail.read()).length).toBe(0);
  });

  it('removes parts a crashed earlier holder of the same key left behind', async () => {
    const t = target();
    await store.putBytes(layout.jobLogPart(t.key, 1), 'stale 1\n');
    await store.putBytes(layout.jobLogPart(t.key, 7), 'stale 7\n');
    const s = ship({ store, file: t.file, key: t.key, intervalMs: 600_000 });
    await writeFile(t.file, line(1));
    await s.flushNow();
    expect((await store.list(`${layout.jobLogParts(t.key)}/`)).map((o) => o.key)).toEqual([layout.jobLogPart(t.key, 1)]);
    expect((await readJobLog(store, t.key))?.toString('utf8')).toBe(await readFile(t.file, 'utf8'));
  });

  it('survives the object store going away: no throw, one warning, and it catches up when the store is back', async () => {
    const proxy = await TcpProxy.start(store.config.endPoint, store.config.port);
    try {
      const flaky = new ObjectStore({ ...store.config, endPoint: '127.0.0.1', port: proxy.port, useSSL: false });
      const warnings: string[] = [];
      vi.spyOn(console, 'warn').mockImplementation((m: string) => void warnings.push(String(m)));
      const t = target();
      const intervalMs = 500;
      const s = ship({ store: flaky, file: t.file, key: t.key, intervalMs, pollMs: 100, finishRetryMs: 10_000 });
      let content = '';
      const add = async (n: number) => {
        for (let i = 0; i < n; i++) {
          const l = line(i);
          content += l;
          await appendFile(t.file, l);
        }
      };
      await add(5);
      await until('the first part', async () => (await readJobLog(store, t.key))?.toString('utf8') === content);

      await proxy.down();
      await add(5);
      await expect(s.flushNow()).resolves.toBeUndefined();
      await new Promise((r) => setTimeout(r, 4 * intervalMs)); // several failed ticks
      await add(5);
      await expect(s.flushNow()).resolves.toBeUndefined();
      expect((await readJobLog(store, t.key))?.toString('utf8').length).toBeLessThan(content.length);
      // One warning for the whole outage, not one per try.
      expect(warnings.filter((w) => w.startsWith('could not ship the job log'))).toHaveLength(1);

      await proxy.up();
      await until('the shipper to catch up', async () => (await readJobLog(store, t.key))?.toString('utf8') === content, 10_000);
      expect(warnings.filter((w) => w.startsWith('job log shipping caught up'))).toHaveLength(1);

      // finish() while the store is away retries the whole upload until it is back.
      await add(3);
      await proxy.down();
      const finishing = s.finish();
      await new Promise((r) => setTimeout(r, 1500));
      await proxy.up();
      await finishing;
      expect((await store.getBytes(t.key))?.toString('utf8')).toBe(content);
      expect(await listJobLogParts(store, t.key)).toEqual([]);
    } finally {
      await proxy.close();
    }
  });
});

/** A TCP proxy to MinIO that can go down (refusing connections, cutting open ones) and come back on its port. */
class TcpProxy {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();

  private constructor(
    readonly port: number,
    private readonly host: string,
    private readonly targetPort: number,
  ) {}

  static async start(host: string, targetPort: number): Promise<TcpProxy> {
    const p = new TcpProxy(await getFreePort(), host, targetPort);
    await p.up();
    return p;
  }

  async up(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(this.targetPort, this.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('error', () => undefined);
        s.on('close', () => {
          this.sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(this.port, '127.0.0.1', () => resolve()));
    this.server = server;
  }

  async down(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  close(): Promise<void> {
    return this.down();
  }
}
