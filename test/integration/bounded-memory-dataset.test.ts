/**
 * Dataset validation streams: `refinery validate` reads a 512 MiB chat dataset (~1.9 M records,
 * JSON Lines and the same records as one JSON array) in memory that does not grow with the file —
 * the real CLI, its peak RSS read from the kernel. (The run's own validation, prepareRun, is the
 * same reader: spec/datasets.ts; its heartbeats on a timer are tested in input-commit.test.ts.)
 */
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMeasuringPeakRss } from '../helpers/peak-rss.js';

const BIN = path.resolve('bin/refinery');
const MiB = 1024 * 1024;
const TARGET_BYTES = 512 * MiB;
/** The CLI's baseline is ~150 MiB; a reader that held the file would need > 512 MiB. */
const PEAK_RSS_LIMIT = 300 * MiB;

let dir: string;
const records: Record<string, number> = {};

/** Writes records until the file reaches `bytes`, honouring backpressure (the test holds no file in memory). */
async function writeDataset(file: string, bytes: number, asArray: boolean): Promise<number> {
  const out = createWriteStream(file);
  let written = 0;
  let n = 0;
  if (asArray) out.write('[\n');
  while (written < bytes) {
    const row = JSON.stringify({ messages: [{ role: 'user', content: `Question ${n}: what is ${n} plus ${n}?` }, { role: 'assistant', content: `It is ${2 * n}. ${'Worked out step by step. '.repeat(6)}` }] });
    const line = asArray ? `${n ? ',\n' : ''}${row}` : `${row}\n`;
    written += line.length;
    n++;
    if (!out.write(line)) await once(out, 'drain');
  }
  if (asArray) out.write('\n]\n');
  out.end();
  await once(out, 'finish');
  return n;
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'refinery-big-dataset-'));
  records['big.jsonl'] = await writeDataset(path.join(dir, 'big.jsonl'), TARGET_BYTES, false);
  records['big.json'] = await writeDataset(path.join(dir, 'big.json'), TARGET_BYTES, true);
  await writeFile(path.join(dir, 'config.json'), '{}');
}, 180_000);

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('dataset validation in bounded memory', () => {
  for (const file of ['big.jsonl', 'big.json']) {
    it(`refinery validate reads a 512 MiB ${file.endsWith('l') ? 'JSON Lines' : 'JSON array'} dataset with peak RSS under 300 MiB`, async () => {
      expect((await stat(path.join(dir, file))).size).toBeGreaterThanOrEqual(TARGET_BYTES);
      const spec = path.join(dir, `pipeline-${file}.yaml`);
      await writeFile(spec, `name: big-data\nbase_model: ./\ntemplate: chatml\ndatasets:\n  chats: { path: ${file}, format: chat }\nstages:\n  - { id: sft, kind: sft, dataset: chats }\n`);
      const r = await runMeasuringPeakRss(BIN, ['validate', spec, '--json'], { env: { ...process.env } });
      expect(r.exitCode, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as { datasets: { name: string; rows: number }[] };
      expect(out.datasets).toEqual([expect.objectContaining({ name: 'chats', rows: records[file] })]);
      console.log(`[bounded-memory-dataset] ${file}: ${records[file]} records, ${(TARGET_BYTES / MiB).toFixed(0)} MiB, peak RSS ${(r.peakRssBytes / MiB).toFixed(0)} MiB`);
      expect(r.peakRssBytes).toBeGreaterThan(20 * MiB);
      expect(r.peakRssBytes).toBeLessThan(PEAK_RSS_LIMIT);
    }, 300_000);
  }
});
