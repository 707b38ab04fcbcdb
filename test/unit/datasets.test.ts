// Dataset validation (spec/datasets.ts): every line of a JSONL file is checked before any GPU job
// starts (invariant 5), and every problem names the file, the line and the field.
import { createWriteStream } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_LINE_BYTES, mixCounts, mixRows, validateDatasetFile, validateJsonl, validateJsonlFile, validateRecords, type CanonicalRow, type DatasetReading } from '../../spec/datasets.js';
import { llamaFactoryAttrs } from '../../spec/dataset-info.js';
import type { DatasetFormat } from '../../spec/schema.js';

const DEMO = fileURLToPath(new URL('../../demo/data/', import.meta.url));
const BAD_DATA = fileURLToPath(new URL('../fixtures/bad-data/', import.meta.url));

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'refinery-datasets-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** Validates text as if it were a file, delivered in chunks of `chunkSize` bytes. */
function validateText(text: string | Buffer, format: DatasetFormat, chunkSize?: number) {
  const bytes = Buffer.isBuffer(text) ? text : Buffer.from(text, 'utf8');
  const chunks: Buffer[] = [];
  const size = chunkSize ?? Math.max(1, bytes.length);
  for (let i = 0; i < bytes.length; i += size) chunks.push(bytes.subarray(i, i + size));
  return validateJsonl(Readable.from(chunks), format, 'data.jsonl');
}

const chat = (...turns: [string, string][]) => JSON.stringify({ messages: turns.map(([role, content]) => ({ role, content })) });
const GOOD_CHAT = chat(['user', 'Hi'], ['assistant', 'Hello!']);
/** One valid record per format. */
const GOOD: Record<DatasetFormat, string> = {
  chat: GOOD_CHAT,
  alpaca: '{"instruction": "Add.", "input": "1+1", "output": "2"}',
  sharegpt: '{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}',
  text: '{"text": "Some text."}',
  kto: '{"prompt": "Hi", "completion": "Hello!", "label": true}',
  preference: '{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}',
  prompts: '{"prompt": "Hi"}',
};

describe('demo data is valid', () => {
  it.each([
    ['sft.jsonl', 'chat'],
    ['sft_eval.jsonl', 'chat'],
    ['preference.jsonl', 'preference'],
    ['preference_eval.jsonl', 'preference'],
    ['prompts.jsonl', 'prompts'],
    ['alpaca.jsonl', 'alpaca'],
    ['sharegpt.jsonl', 'sharegpt'],
    ['text.jsonl', 'text'],
  ] as const)('%s as %s', async (file, format) => {
    const text = await readFile(path.join(DEMO, file), 'utf8');
    const records = text.split('\n').filter((l) => l.trim() !== '').length;
    const report = await validateJsonlFile(path.join(DEMO, file), format);
    expect(report.problems).toEqual([]);
    expect(report.rows).toBe(records);
    expect(report.rows).toBeGreaterThan(0);
  });

  it('a demo file in the wrong format is refused on its first line', async () => {
    const report = await validateJsonlFile(path.join(DEMO, 'sft.jsonl'), 'preference', 'sft.jsonl');
    expect(report.problems[0]).toMatchObject({ file: 'sft.jsonl', line: 1, field: 'chosen', message: 'required in preference records' });
  });
});

describe('bad data: one problem, its line and its field', () => {
  it.each([
    ['chat-invalid-json.jsonl', 'chat', 3, undefined, /^invalid JSON \(/],
    ['chat-unknown-role.jsonl', 'chat', 3, 'messages[1].role', /^expected one of "system" \| "user" \| "assistant" \| "tool"$/],
    ['chat-empty-content.jsonl', 'chat', 4, 'messages[0].content', /^must not be empty$/],
    ['preference-missing-chosen.jsonl', 'preference', 2, 'chosen', /^required in preference records$/],
    ['preference-missing-rejected.jsonl', 'preference', 3, 'rejected', /^required in preference records$/],
    ['preference-identical.jsonl', 'preference', 2, 'rejected', /^chosen and rejected are identical$/],
    ['prompts-ends-with-assistant.jsonl', 'prompts', 3, 'messages', /^must end with a user message$/],
    ['sharegpt-no-gpt.jsonl', 'sharegpt', 2, 'conversations', /^needs at least one "gpt" turn$/],
  ] as const)('%s', async (name, format, line, field, message) => {
    const file = path.join(BAD_DATA, name);
    const report = await validateJsonlFile(file, format);
    expect(report.problems).toHaveLength(1);
    const [problem] = report.problems;
    expect(problem).toMatchObject({ file, line, message: expect.stringMatching(message) });
    expect(problem!.field).toBe(field);
    const lines = (await readFile(file, 'utf8')).split('\n').filter((l) => l.trim() !== '').length;
    expect(report.rows).toBe(lines - 1);
  });

  it('an empty file has no records', async () => {
    const report = await validateJsonlFile(path.join(BAD_DATA, 'empty.jsonl'), 'chat', 'empty.jsonl');
    expect(report).toEqual({ rows: 0, problems: [{ file: 'empty.jsonl', message: 'no records' }] });
  });

  it('a file of blank lines has no records either', async () => {
    expect(await validateText('\n  \n\r\n', 'text')).toEqual({ rows: 0, problems: [{ file: 'data.jsonl', message: 'no records' }] });
  });

  it('a missing file rejects', async () => {
    await expect(validateJsonlFile(path.join(tmp, 'nope.jsonl'), 'chat')).rejects.toThrow(/ENOENT/);
  });

  it.each([
    ['chat', '[1]', '(record)', 'expected object'],
    ['chat', 'null', '(record)', 'expected object'],
    ['chat', '"a string"', '(record)', 'expected object'],
    ['chat', '{"messages": []}', 'messages', 'must hold at least one message'],
    ['chat', '{"messages": "hi"}', 'messages', 'expected array'],
    ['chat', chat(['user', 'Hi']), 'messages', 'needs at least one assistant message'],
    ['chat', '{"messages": [{"role": "user", "content": "Hi", "name": "x"}, {"role": "assistant", "content": "Yo"}]}', 'messages[0]', 'unknown key(s) name'],
    ['chat', '{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "Yo"}]}', 'messages[0].content', 'expected string'],
    ['text', '{"text": 5}', 'text', 'expected string'],
    ['text', '{"txt": "a"}', 'text', 'required in text records'],
    ['alpaca', '{"instruction": "a"}', 'output', 'required in alpaca records'],
    ['alpaca', '{"instruction": "", "output": "b"}', 'instruction', 'must not be empty'],
    ['alpaca', '{"instruction": "a", "output": "b", "history": [["q"]]}', 'history[0]', /./],
    ['sharegpt', '{"conversations": [{"from": "bot", "value": "x"}]}', 'conversations[0].from', 'expected one of "human" | "gpt" | "system" | "function_call" | "observation"'],
    ['prompts', '{}', 'prompt', 'required in prompts records'],
    ['prompts', '{"prompt": " "}', 'prompt', 'must not be empty'],
    ['preference', '{"prompt": "p", "chosen": [{"role": "assistant", "content": ""}], "rejected": "r"}', 'chosen[0].content', 'must not be empty'],
    ['preference', '{"prompt": "p", "chosen": 3, "rejected": "r"}', 'chosen', /^(expected string|expected array|does not match)/],
  ] as const)('%s record %s → %s: %s', async (format, record, field, message) => {
    const report = await validateText(`${GOOD[format]}\n${record}\n`, format);
    expect(report.rows).toBe(1);
    expect(report.problems).toHaveLength(1);
    const [problem] = report.problems;
    expect(problem).toMatchObject({ file: 'data.jsonl', line: 2 });
    expect(problem!.field).toBe(field);
    if (typeof message === 'string') expect(problem!.message).toBe(message);
    else expect(problem!.message).toMatch(message);
  });
});

describe('bad data in LLaMA-Factory shapes: the line where the record starts, the field in its own terms', () => {
  const sharegpt = (columns: Record<string, string>, ranking = false) => {
    const r = llamaFactoryAttrs({ formatting: 'sharegpt', ranking, columns });
    if ('problem' in r) throw new Error(r.problem.message);
    return r.attrs;
  };
  it.each([
    ['alpaca-array-missing-comma.json', { format: 'chat', source: { kind: 'refinery', format: 'alpaca' } }, 2, 12, undefined, 'expected "," or "]" after the record that starts on line 7, got "{"'],
    ['sharegpt-tools-bad-call.json', { format: 'chat', source: { kind: 'llama-factory', attrs: sharegpt({ messages: 'conversations', tools: 'tools' }) } }, 1, 11, 'conversations[1].value', 'a function call holds JSON: {"name": ..., "arguments": {...}} or an array of them'],
    ['dpo-pair-turns-not-alternating.json', { format: 'preference', source: { kind: 'llama-factory', attrs: sharegpt({ messages: 'conversations', chosen: 'chosen', rejected: 'rejected' }, true) } }, 1, 7, 'conversations[1].from', 'expected "gpt" | "function_call" here (turns alternate "human/observation" and "gpt/function_call"), got "human"'],
  ] as const)('%s', async (name, reading, rows, line, field, message) => {
    const file = path.join(BAD_DATA, name);
    const report = await validateDatasetFile(file, reading as DatasetReading);
    expect(report).toEqual({ rows, problems: [{ file, line, ...(field ? { field } : {}), message }] });
  });
});

describe("LLaMA-Factory's shapes named as a Refinery format", () => {
  it('the problem says how to name them instead', async () => {
    const dpo = await validateText('{"conversations": [{"from": "human", "value": "Q"}], "chosen": {"from": "gpt", "value": "A"}, "rejected": {"from": "gpt", "value": "B"}}', 'preference');
    expect(dpo.problems[0]).toMatchObject({ field: 'chosen', message: expect.stringMatching(/^expected string \(LLaMA-Factory sharegpt pairs: .*ranking: true/) });
    const kto = await validateText('{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "label": true}', 'kto');
    expect(kto.problems[0]).toMatchObject({ field: 'prompt', message: expect.stringMatching(/^required in kto records \(LLaMA-Factory KTO data: .*kto_tag: label/) });
  });
});

describe('lines', () => {
  it('CRLF line endings: records parse, blank lines are skipped, line numbers stay right', async () => {
    const file = path.join(tmp, 'crlf.jsonl');
    await writeFile(file, ['{"text": "One."}', '', '{"text": "Two."}', '{"text": ""}', '{"text": "Three."}', ''].join('\r\n'));
    const report = await validateJsonlFile(file, 'text', 'crlf.jsonl');
    expect(report).toEqual({ rows: 3, problems: [{ file: 'crlf.jsonl', line: 4, field: 'text', message: 'must not be empty' }] });
  });

  it('a last line without a newline is still checked', async () => {
    const report = await validateText(`${GOOD_CHAT}\n{"messages": []}`, 'chat');
    expect(report.problems).toEqual([expect.objectContaining({ line: 2, field: 'messages' })]);
    expect(report.rows).toBe(1);
  });

  it('chunk boundaries anywhere (even inside a UTF-8 character) change nothing', async () => {
    const text = [chat(['user', 'Grüß dich 👋'], ['assistant', 'こんにちは']), '', '{"text": 1}', chat(['user', 'ü'])].join('\n') + '\n';
    const whole = await validateText(text, 'chat');
    expect(whole.rows).toBe(1);
    expect(whole.problems.map((p) => p.line)).toEqual([3, 4]);
    for (const size of [1, 2, 3, 7, 64]) expect(await validateText(text, 'chat', size)).toEqual(whole);
  });

  it('stops after 20 problems', async () => {
    const text = Array.from({ length: 50 }, () => '{"bad": 1}').join('\n');
    const report = await validateText(text, 'text');
    expect(report.problems).toHaveLength(20);
    expect(report.problems.map((p) => p.line)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
  });

  it(`a line of exactly ${MAX_LINE_BYTES} bytes is read; one byte more is refused by its length`, async () => {
    const record = (bytes: number) => {
      const prefix = '{"text": "';
      const suffix = '"}';
      return Buffer.concat([Buffer.from(prefix), Buffer.alloc(bytes - prefix.length - suffix.length, 'a'), Buffer.from(suffix)]);
    };
    const nl = Buffer.from('\n');
    const atLimit = await validateText(Buffer.concat([record(MAX_LINE_BYTES), nl]), 'text', 1 << 20);
    expect(atLimit).toEqual({ rows: 1, problems: [] });
    const over = await validateText(Buffer.concat([record(MAX_LINE_BYTES + 1), nl, Buffer.from('{"text": "ok"}\n')]), 'text', 1 << 20);
    expect(over).toEqual({
      rows: 1,
      problems: [{ file: 'data.jsonl', line: 1, message: `line is ${MAX_LINE_BYTES + 1} bytes, more than the ${MAX_LINE_BYTES} allowed` }],
    });
  });

  it('a 100 MB line is refused by its length, and the following lines keep their numbers', async () => {
    const file = path.join(tmp, 'huge.jsonl');
    const hugeBytes = 100 * 1024 * 1024;
    const out = createWriteStream(file);
    const write = (b: Buffer | string) => new Promise<void>((resolve, reject) => out.write(b, (e) => (e ? reject(e) : resolve())));
    await write('{"text": "before"}\n');
    const chunk = Buffer.alloc(1024 * 1024, 'a');
    await write('{"text": "');
    let written = '{"text": "'.length;
    while (written + chunk.length <= hugeBytes - 2) {
      await write(chunk);
      written += chunk.length;
    }
    const rest = hugeBytes - 2 - written;
    await write(Buffer.alloc(rest, 'a'));
    await write('"}\n');
    await write('{"text": "after"}\n\n{"text": ""}\n{"text": "last"}\n');
    await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(e) : resolve())));

    const report = await validateJsonlFile(file, 'text', 'huge.jsonl');
    expect(report.problems).toEqual([
      { file: 'huge.jsonl', line: 2, message: `line is ${hugeBytes} bytes, more than the ${MAX_LINE_BYTES} allowed` },
      { file: 'huge.jsonl', line: 5, field: 'text', message: 'must not be empty' },
    ]);
    expect(report.rows).toBe(3);
  });
});

describe('validation progress', () => {
  it('reports rows and bytes as chunks are read, and the totals at the end', async () => {
    const line = `${JSON.stringify({ text: 'x'.repeat(100) })}\n`;
    const text = line.repeat(50);
    const chunks: Buffer[] = [];
    for (let i = 0; i < text.length; i += 512) chunks.push(Buffer.from(text.slice(i, i + 512)));
    const seen: { rows: number; bytesRead: number }[] = [];
    const report = await validateJsonl(Readable.from(chunks), 'text', 'data.jsonl', { onProgress: (p) => seen.push(p) });
    expect(report).toEqual({ rows: 50, problems: [] });
    expect(seen.length).toBeGreaterThan(5);
    for (let i = 1; i < seen.length; i++) {
      expect(seen[i]!.bytesRead).toBeGreaterThanOrEqual(seen[i - 1]!.bytesRead);
      expect(seen[i]!.rows).toBeGreaterThanOrEqual(seen[i - 1]!.rows);
    }
    expect(seen.at(-1)).toEqual({ rows: 50, bytesRead: text.length });
  });

  it('a file is reported per chunk read (1 MiB)', async () => {
    const file = path.join(tmp, 'progress.jsonl');
    await writeFile(file, `${JSON.stringify({ text: 'y'.repeat(1000) })}\n`.repeat(3000));
    const seen: number[] = [];
    const report = await validateJsonlFile(file, 'text', 'progress.jsonl', { onProgress: (p) => seen.push(p.rows) });
    expect(report.rows).toBe(3000);
    expect(seen.length).toBeGreaterThanOrEqual(3);
    expect(seen.at(-1)).toBe(3000);
  });
});

describe('canonical rows', () => {
  /** The canonical rows of `text` read as `format` (a Refinery format). */
  async function canonical(text: string, format: DatasetFormat, layout: 'json' | 'text' = 'json') {
    const rows: CanonicalRow[] = [];
    const report = await validateRecords(Readable.from([Buffer.from(text)]), layout, { format: CANONICAL[format], source: { kind: 'refinery', format } }, 'd', { onRow: (r) => void rows.push(r) });
    expect(report.problems).toEqual([]);
    return rows;
  }
  const CANONICAL: Record<DatasetFormat, DatasetFormat> = { chat: 'chat', alpaca: 'chat', sharegpt: 'chat', text: 'text', preference: 'preference', prompts: 'prompts', kto: 'kto' };

  it('alpaca becomes chat with the messages data.py builds (system, history, "instruction\\n\\ninput")', async () => {
    expect(await canonical('{"instruction": "Add.", "input": "1+1", "output": "2", "system": "S", "history": [["Hi", "Yo"]]}', 'alpaca')).toEqual([
      { messages: [{ role: 'system', content: 'S' }, { role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Yo' }, { role: 'user', content: 'Add.\n\n1+1' }, { role: 'assistant', content: '2' }] },
    ]);
  });

  it('sharegpt becomes chat, function_call/observation turns tool calls and tool messages', async () => {
    const rec = { conversations: [{ from: 'system', value: 'S' }, { from: 'human', value: 'Q' }, { from: 'function_call', value: '{"name": "f", "arguments": {"x": 1}}' }, { from: 'observation', value: '2' }, { from: 'gpt', value: 'A' }], tools: '[{"name": "f"}]' };
    expect(await canonical(JSON.stringify(rec), 'sharegpt')).toEqual([
      {
        messages: [
          { role: 'system', content: 'S' },
          { role: 'user', content: 'Q' },
          { role: 'assistant', content: '', tool_calls: [{ type: 'function', function: { name: 'f', arguments: { x: 1 } } }] },
          { role: 'tool', content: '2' },
          { role: 'assistant', content: 'A' },
        ],
        tools: [{ type: 'function', function: { name: 'f' } }],
      },
    ]);
  });

  it('prompts, preference and kto strings become messages; text stays text; canonical rows read as themselves', async () => {
    expect(await canonical('{"prompt": "Hi"}', 'prompts')).toEqual([{ prompt: [{ role: 'user', content: 'Hi' }] }]);
    expect(await canonical('{"prompt": "Hi", "chosen": "A", "rejected": "B"}', 'preference')).toEqual([{ prompt: [{ role: 'user', content: 'Hi' }], chosen: [{ role: 'assistant', content: 'A' }], rejected: [{ role: 'assistant', content: 'B' }] }]);
    expect(await canonical('{"prompt": "Hi", "completion": "A", "label": true}', 'kto')).toEqual([{ prompt: [{ role: 'user', content: 'Hi' }], completion: [{ role: 'assistant', content: 'A' }], label: true }]);
    for (const [format, row] of [
      ['prompts', { prompt: [{ role: 'user', content: 'Hi' }] }],
      ['preference', { prompt: [{ role: 'user', content: 'Hi' }], chosen: [{ role: 'assistant', content: 'A' }], rejected: [{ role: 'assistant', content: 'B' }] }],
      ['chat', { messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: '', tool_calls: [{ type: 'function', function: { name: 'f', arguments: {} } }] }, { role: 'tool', content: '' }, { role: 'assistant', content: 'A' }], tools: [{ type: 'function', function: { name: 'f' } }] }],
    ] as const) {
      expect(await canonical(JSON.stringify(row), format)).toEqual([row]);
    }
    expect(await canonical('One.\n\nTwo.\n', 'text', 'text')).toEqual([{ text: 'One.' }, { text: 'Two.' }]);
  });

  it('a JSON array of records in a Refinery format: problems at the line where the record starts', async () => {
    const file = path.join(tmp, 'chat.json');
    await writeFile(file, JSON.stringify([JSON.parse(GOOD_CHAT), { messages: [{ role: 'bot', content: 'x' }] }], null, 2));
    const report = await validateDatasetFile(file, { format: 'chat', source: { kind: 'refinery', format: 'chat' } });
    expect(report).toEqual({ rows: 1, problems: [{ file, line: 14, field: 'messages[0].role', message: 'expected one of "system" | "user" | "assistant" | "tool"' }] });
  });
});

describe('mixing', () => {
  it('takes round(ratio x rows) general rows, each once while they last, the same for a seed', () => {
    const counts = mixCounts(100, 50, 0.2, 7);
    expect(counts.reduce((a, b) => a + b, 0)).toBe(20);
    expect(Math.max(...counts)).toBe(1);
    expect([...mixCounts(100, 50, 0.2, 7)]).toEqual([...counts]);
    expect([...mixCounts(100, 50, 0.2, 8)]).not.toEqual([...counts]);
    // More than the general dataset holds: every row once per full pass, the rest sampled.
    const over = mixCounts(100, 30, 0.5, 1);
    expect(over.reduce((a, b) => a + b, 0)).toBe(50);
    expect(new Set(over)).toEqual(new Set([1, 2]));
  });

  it('interleaves both sides, each in its own order, deterministically', async () => {
    const rows = (tag: string, n: number) =>
      (async function* () {
        for (let i = 0; i < n; i++) yield { text: `${tag}${i}` } as CanonicalRow;
      })();
    const mix = async (seed: number) => {
      const out: string[] = [];
      const counts = mixCounts(40, 10, 0.5, seed);
      for await (const r of mixRows(rows('u', 40), 40, rows('g', 10), counts, seed)) out.push((r as { text: string }).text);
      return out;
    };
    const a = await mix(3);
    expect(a).toHaveLength(60);
    expect(a.filter((t) => t.startsWith('u'))).toEqual(Array.from({ length: 40 }, (_, i) => `u${i}`));
    expect(a.filter((t) => t.startsWith('g')).sort()).toEqual(Array.from({ length: 10 }, (_, i) => [`g${i}`, `g${i}`]).flat().sort());
    expect(a.slice(0, 20).some((t) => t.startsWith('g'))).toBe(true); // spread out, not appended
    expect(await mix(3)).toEqual(a);
  });
});
