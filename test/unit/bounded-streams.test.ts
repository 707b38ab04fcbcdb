/**
 * The streaming readers behind `audit verify`'s secret scan and `report`'s job events, without a
 * store: a secret is found wherever the chunk boundaries fall, and an events file of 300k progress
 * lines comes out as a bounded, evenly thinned sample that keeps its first and last progress event
 * and every other event, with the same lines as the whole-text parser for small files.
 */
import { describe, expect, it } from 'vitest';
import { findSecrets } from '../../client/audit/verify.js';
import { MAX_PROGRESS_EVENTS, parseJobEventLines, parseJobEventStream, ProgressSampler, type JobEventLine } from '../../client/run-records.js';

/** `bytes` cut at the given sizes, cycling. */
function* chunked(bytes: Buffer, sizes: number[]): Generator<Buffer> {
  let at = 0;
  for (let i = 0; at < bytes.length; i++) {
    const n = sizes[i % sizes.length]!;
    yield bytes.subarray(at, at + n);
    at += n;
  }
}

async function* asAsync<T>(items: Iterable<T>): AsyncGenerator<T> {
  for (const item of items) yield item;
}

describe('findSecrets (audit verify, section 4)', () => {
  const secrets = [
    { name: 'S3 secret key', value: 'minio-secret-key-0123456789' },
    { name: 'value of $HF_TOKEN', value: 'hf_abcdefgh' },
    { name: 'value of $DB_PASSWORD', value: 'pässwörd-ü' }, // multi-byte UTF-8
  ];

  it('finds a secret that straddles a chunk boundary, at every cut and chunk size', async () => {
    for (const secret of secrets) {
      const needle = Buffer.from(secret.value);
      const body = Buffer.concat([Buffer.alloc(1000, 'a'), needle, Buffer.alloc(1000, 'b')]);
      // Every cut through the secret, with chunks big and small (smaller than the secret too).
      for (let cut = 1001; cut < 1000 + needle.length; cut++) {
        const found = await findSecrets(asAsync([body.subarray(0, cut), body.subarray(cut)]), secrets);
        expect(found.map((s) => s.name), `cut at ${cut}`).toEqual([secret.name]);
      }
      for (const sizes of [[1], [2], [3, 5], [needle.length - 1], [needle.length], [7, 1, 13], [1024 * 1024]]) {
        const found = await findSecrets(asAsync(chunked(body, sizes)), secrets);
        expect(found.map((s) => s.name), `chunks of ${sizes.join(',')}`).toEqual([secret.name]);
      }
    }
  });

  it('finds nothing where there is nothing, and reports several in the order given', async () => {
    const clean = Buffer.alloc(3 * 1024 * 1024, 'x');
    expect(await findSecrets(asAsync(chunked(clean, [1024 * 1024])), secrets)).toEqual([]);
    // Almost a secret across a boundary: one byte short.
    const near = Buffer.from(`aaaa${secrets[0]!.value.slice(0, -1)}Zbbbb`);
    expect(await findSecrets(asAsync(chunked(near, [10])), secrets)).toEqual([]);
    const both = Buffer.from(`…${secrets[2]!.value}…${secrets[0]!.value}…`);
    expect((await findSecrets(asAsync(chunked(both, [4])), secrets)).map((s) => s.name)).toEqual([secrets[0]!.name, secrets[2]!.name]);
    // A whole buffer (how the records are scanned) as one chunk.
    expect((await findSecrets([both], secrets)).map((s) => s.name)).toEqual([secrets[0]!.name, secrets[2]!.name]);
    expect(await findSecrets([both], [])).toEqual([]);
  });
});

const progress = (step: number): JobEventLine => ({ at: new Date(1_700_000_000_000 + step * 1000).toISOString(), attempt: 1, event: 'progress', step, total_steps: 300_000, loss: 1 / (1 + step) });

/** An events file of `steps` progress lines (with a started, checkpoints, a metrics and a done), as ~1 MiB chunks made as they are read. */
async function* eventsFile(steps: number, torn = false): AsyncGenerator<Buffer> {
  let buf = `${JSON.stringify({ at: new Date(1_700_000_000_000).toISOString(), attempt: 1, event: 'started', total_steps: steps, resumed_from_step: null })}\n`;
  for (let step = 1; step <= steps; step++) {
    buf += `${JSON.stringify(progress(step))}\n`;
    if (step % 50_000 === 0) buf += `${JSON.stringify({ at: progress(step).at, attempt: 1, event: 'checkpoint', step, path: `/ckpt/${step}` })}\n`;
    if (step === 123_457) buf += `${JSON.stringify({ at: progress(step).at, attempt: 1, event: 'metrics', metrics: { reward_mean: 0.5 } })}\n`;
    if (buf.length >= 1024 * 1024) {
      // Cut mid-line, as a stream does (the lines are ASCII).
      yield Buffer.from(buf.slice(0, -37));
      buf = buf.slice(-37);
    }
  }
  buf += `${JSON.stringify({ at: progress(steps).at, attempt: 1, event: 'done', metrics: { final_loss: 0.01 } })}\n`;
  if (torn) buf += '{"at":"2026-01-01T00:00:00Z","attempt":1,"event":"progr';
  yield Buffer.from(buf);
}

describe('parseJobEventStream (report: job events)', () => {
  it('keeps a bounded sample of 300k progress lines: first and last exactly, every other event', async () => {
    const lines = await parseJobEventStream(eventsFile(300_000, true));
    const prog = lines.filter((l) => l.event === 'progress');
    const others = lines.filter((l) => l.event !== 'progress');
    expect(prog.length).toBeLessThanOrEqual(MAX_PROGRESS_EVENTS + others.length);
    expect(prog.length).toBeGreaterThan(MAX_PROGRESS_EVENTS / 4);
    expect(prog[0]).toEqual(progress(1));
    expect(prog.at(-1)).toEqual(progress(300_000));
    // Every non-progress event, in order; the torn last line skipped.
    expect(others.map((l) => l.event)).toEqual(['started', 'checkpoint', 'checkpoint', 'metrics', 'checkpoint', 'checkpoint', 'checkpoint', 'checkpoint', 'done']);
    expect(lines[0]!.event).toBe('started');
    expect(lines.at(-1)!.event).toBe('done');
    // In step order, evenly spread: no gap wider than a few strides.
    const steps = prog.map((l) => l.step!);
    expect([...steps].sort((a, b) => a - b)).toEqual(steps);
    const gaps = steps.slice(1).map((s, i) => s - steps[i]!);
    expect(Math.max(...gaps)).toBeLessThanOrEqual((2 * 300_000) / (MAX_PROGRESS_EVENTS / 2));
    // The progress event right before the metrics event is kept (a metrics event without a step belongs to it).
    const m = lines.findIndex((l) => l.event === 'metrics');
    expect(lines[m - 1]).toEqual(progress(123_457));
  });

  it('is the whole-text parser for a small file, whatever the chunks; maxProgress Infinity keeps every event', async () => {
    const text = [
      JSON.stringify({ at: 'x', attempt: 2, event: 'started', resumed_from_step: 4, message: 'héllo wörld ✓' }),
      '',
      'not json',
      JSON.stringify({ no: 'event' }),
      ...Array.from({ length: 30 }, (_, i) => JSON.stringify(progress(i + 5))),
      '  ',
      JSON.stringify({ at: 'y', attempt: 2, event: 'error', message: 'ünïcode ✗' }) + '\r',
      '{"torn":',
    ].join('\n');
    const bytes = Buffer.from(text);
    const expected = parseJobEventLines(text);
    for (const sizes of [[1], [3], [17, 2], [bytes.length]]) {
      expect(await parseJobEventStream(asAsync(chunked(bytes, sizes)))).toEqual(expected);
      expect(await parseJobEventStream(asAsync(chunked(bytes, sizes)), { maxProgress: Infinity })).toEqual(expected);
    }
    const all = await parseJobEventStream(eventsFile(10_000), { maxProgress: Infinity });
    expect(all.filter((l) => l.event === 'progress')).toHaveLength(10_000);
  });

  it('ProgressSampler: halves and doubles the stride, the first and the newest always kept', () => {
    const s = new ProgressSampler(10);
    for (let step = 0; step < 1000; step++) {
      s.add(progress(step));
      const kept = s.events();
      expect(kept.length).toBeLessThanOrEqual(11);
      expect(kept[0]).toEqual(progress(0));
      expect(kept.at(-1)).toEqual(progress(step));
    }
    expect(s.progressSeen).toBe(1000);
    expect(() => new ProgressSampler(1)).toThrow(RangeError);
  });
});
