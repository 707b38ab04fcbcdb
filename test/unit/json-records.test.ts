// The streaming record reader (spec/json-records.ts): JSON arrays element by element with the line
// each starts on, JSON Lines, .txt lines; bounded memory (an oversized record is refused by its size).
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { layoutOf, MAX_RECORD_BYTES, readRecords, type FileLayout, type RawRecord } from '../../spec/json-records.js';

/** All records of `text`, delivered in chunks of `size` bytes. */
async function read(text: string | Buffer, layout: FileLayout = 'json', size?: number): Promise<RawRecord[]> {
  const bytes = Buffer.isBuffer(text) ? text : Buffer.from(text, 'utf8');
  const step = size ?? Math.max(1, bytes.length);
  const chunks: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += step) chunks.push(bytes.subarray(i, i + step));
  const out: RawRecord[] = [];
  for await (const r of readRecords(Readable.from(chunks), layout)) out.push(r);
  return out;
}

/** The same records whatever the chunking (1 byte at a time, odd sizes, whole). */
async function readAnyChunking(text: string, layout: FileLayout = 'json'): Promise<RawRecord[]> {
  const whole = await read(text, layout);
  for (const size of [1, 2, 3, 7, 64]) expect(await read(text, layout, size)).toEqual(whole);
  return whole;
}

describe('JSON arrays', () => {
  it("yields each element with the line it starts on (LLaMA-Factory's indented .json)", async () => {
    const text = ['[', '  {', '    "instruction": "a",', '    "output": "b"', '  },', '  {"instruction": "c", "output": "d"}', ']', ''].join('\n');
    expect(await readAnyChunking(text)).toEqual([
      { line: 2, value: { instruction: 'a', output: 'b' } },
      { line: 6, value: { instruction: 'c', output: 'd' } },
    ]);
  });

  it('brackets, braces, quotes and escapes inside strings do not end an element; scalars and nested arrays are elements', async () => {
    const text = '[{"a": "x]}\\"{["}, [1, [2]], 3.5e2, "s\\\\", true, null,\n{"b": "Grüß 👋"}]';
    expect(await readAnyChunking(text)).toEqual([
      { line: 1, value: { a: 'x]}"{[' } },
      { line: 1, value: [1, [2]] },
      { line: 1, value: 350 },
      { line: 1, value: 's\\' },
      { line: 1, value: true },
      { line: 1, value: null },
      { line: 2, value: { b: 'Grüß 👋' } },
    ]);
  });

  it('an empty array, a BOM, blank lines before the array', async () => {
    expect(await readAnyChunking('[]')).toEqual([]);
    expect(await readAnyChunking('\ufeff\n\n  [ {"a": 1} ]\n')).toEqual([{ line: 3, value: { a: 1 } }]);
  });

  it('an element that is not JSON is reported at its line and the next ones are read', async () => {
    expect(await readAnyChunking('[{"a": 1},\n{"a": tru},\n{"a": 3}]')).toEqual([
      { line: 1, value: { a: 1 } },
      { line: 2, error: expect.stringMatching(/^invalid JSON \(/) },
      { line: 3, value: { a: 3 } },
    ]);
  });

  it.each([
    ['[{"a": 1}\n{"a": 2}]', 2, 'expected "," or "]" after the record that starts on line 1, got "{"'],
    ['[{"a": 1},\n]', 2, 'expected a record after the "," that follows the record ending on line 1, got "]"'],
    ['[{"a": 1},\n{"a": 2}', 2, 'the JSON array is not closed ("]") at the end of the file'],
    ['[{"a": 1},\n{"a": [2,\n', 3, 'the record that starts on line 2 is not closed at the end of the file'],
    ['[{"a": 1}]\n{"b": 2}', 2, 'unexpected "{" after the end of the JSON array'],
  ])('a broken array stops the reading with its line: %j', async (text, line, message) => {
    const records = await readAnyChunking(text);
    expect(records.at(-1)).toEqual({ line, error: message, fatal: true });
  });

  it(`an element over ${MAX_RECORD_BYTES} bytes is refused by its size; the ones after keep their lines`, async () => {
    const big = `{"text": "${'a'.repeat(MAX_RECORD_BYTES)}"}`;
    const text = `[{"n": 1},\n${big},\n{"n": 2}]`;
    expect(await read(text, 'json', 1 << 20)).toEqual([
      { line: 1, value: { n: 1 } },
      { line: 2, error: `record is ${big.length} bytes, more than the ${MAX_RECORD_BYTES} allowed` },
      { line: 3, value: { n: 2 } },
    ]);
  });
});

describe('JSON Lines and text lines', () => {
  it('a .json file of JSON Lines (first byte "{") reads as lines, as HF datasets reads it', async () => {
    expect(await readAnyChunking('{"a": 1}\r\n\n{"a": 2}\n{"a":')).toEqual([
      { line: 1, value: { a: 1 } },
      { line: 3, value: { a: 2 } },
      { line: 4, error: expect.stringMatching(/^invalid JSON/) },
    ]);
  });

  it('.txt: each non-blank line is one text record', async () => {
    expect(await readAnyChunking('\ufeffFirst line.\r\n\n  \nSecond {not json}\n', 'text')).toEqual([
      { line: 1, value: { text: 'First line.' } },
      { line: 4, value: { text: 'Second {not json}' } },
    ]);
  });

  it('the layout comes from the file name', () => {
    expect(layoutOf('/data/wiki_demo.txt')).toBe('text');
    expect(layoutOf('/data/WIKI.TXT')).toBe('text');
    expect(layoutOf('/data/alpaca.json')).toBe('json');
    expect(layoutOf('s3://b/data.jsonl')).toBe('json');
  });
});

describe('bounded memory', () => {
  it('a 128 MiB JSON array streams through with RSS growth far below its size', async () => {
    const record = Buffer.from(JSON.stringify({ instruction: 'Q '.repeat(200), input: '', output: 'A '.repeat(300) }, null, 2));
    const total = 128 * 1024 * 1024;
    const count = Math.floor(total / (record.length + 2));
    // 1 MiB chunks of ",\n<record>" generated on the fly: nothing holds the whole array.
    const perChunk = Math.floor((1 << 20) / (record.length + 2));
    const chunk = Buffer.concat(Array.from({ length: perChunk }, () => Buffer.concat([Buffer.from(',\n'), record])));
    const source = Readable.from(
      (function* () {
        yield Buffer.concat([Buffer.from('[\n'), record]);
        for (let done = 1; done < count; done += perChunk) yield chunk;
        yield Buffer.from('\n]\n');
      })(),
    );
    global.gc?.();
    const before = process.memoryUsage().rss;
    let peak = before;
    let n = 0;
    for await (const r of readRecords(source, 'json')) {
      if (r.error) throw new Error(r.error);
      if (++n % 10_000 === 0) peak = Math.max(peak, process.memoryUsage().rss);
    }
    expect(n).toBeGreaterThan(count - 1);
    // A whole-file JSON.parse needs several times the file; the stream needs about one chunk.
    expect((peak - before) / 1048576).toBeLessThan(96);
  });
});
