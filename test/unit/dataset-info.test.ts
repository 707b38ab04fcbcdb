// LLaMA-Factory dataset descriptions (spec/dataset-info.ts): its whole shipped dataset_info.json
// (infra/bootstrap.sh caches it: toolchain.json `llamaFactoryData`), every local text entry loads,
// every other entry is refused by name; its converter's semantics; the planner's handling.
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { beforeAll, describe, expect, it } from 'vitest';
import { recordedToolchain } from '../../config/toolchain.js';
import { canonicalFormatOf, convertLlamaFactoryRecord, llamaFactoryAttrs, readDatasetInfo, RecordProblem, resolveEntry, type LlamaFactoryAttrs } from '../../spec/dataset-info.js';
import { validateDatasetFile, validateRecords, type CanonicalRow } from '../../spec/datasets.js';
import { InputError } from '../../spec/errors.js';
import { parseSpec } from '../../spec/load.js';
import { planPipeline } from '../../spec/plan.js';

const LF_DATA = recordedToolchain()?.llamaFactoryData as string | undefined;
const infoFile = () => path.join(LF_DATA!, 'dataset_info.json');

beforeAll(() => {
  if (!LF_DATA) throw new Error('no llamaFactoryData in .refinery/toolchain.json: run bash infra/bootstrap.sh llama-factory');
});

/** Local text entries of LLaMA-Factory 0.9.5's data/dataset_info.json, their canonical format and rows. */
const LOCAL: Record<string, [string, number]> = {
  identity: ['chat', 91],
  alpaca_en_demo: ['chat', 999],
  alpaca_zh_demo: ['chat', 1000],
  glaive_toolcall_en_demo: ['chat', 300],
  glaive_toolcall_zh_demo: ['chat', 300],
  dpo_en_demo: ['preference', 300],
  dpo_zh_demo: ['preference', 300],
  kto_en_demo: ['kto', 300],
  wiki_demo: ['text', 30],
  c4_demo: ['text', 300],
};
const MULTIMODAL = ['mllm_demo', 'mllm_audio_demo', 'mllm_video_demo', 'mllm_video_audio_demo'];

describe("LLaMA-Factory's whole dataset_info.json", () => {
  it('every local text entry loads; every hub and multimodal entry is refused by name', async () => {
    const info = readDatasetInfo(infoFile());
    expect(Object.keys(info).length).toBeGreaterThan(100);
    const loaded: Record<string, [string, number]> = {};
    for (const name of Object.keys(info)) {
      const entry = resolveEntry(info, infoFile(), name);
      if ('refused' in entry) {
        expect(entry.refused).toContain(`dataset_info.json: entry "${name}"`);
        if (MULTIMODAL.includes(name)) expect(entry.refused).toMatch(/a multimodal dataset \((images|videos|audios)[^)]*\); Refinery trains on text only$/);
        else expect(entry.refused).toMatch(/names a hub dataset \((hf_hub_url|ms_hub_url|om_hub_url|script_url|cloud_file_name)[^)]*\); Refinery reads local files only$/);
        continue;
      }
      const format = canonicalFormatOf(entry.attrs);
      const report = await validateDatasetFile(entry.file, { format, source: { kind: 'llama-factory', attrs: entry.attrs } });
      expect(report.problems, name).toEqual([]);
      loaded[name] = [format, report.rows];
    }
    expect(loaded).toEqual(LOCAL);
  });

  it('a hub entry named in a spec is refused at its line, with the entry and the key', () => {
    const text = `name: p\nbase_model: ./m\ntemplate: chatml\ndatasets:\n  gpt4:\n    dataset_info: ${infoFile()}\n    name: alpaca_gpt4_en\nstages:\n  - { id: sft, kind: sft, dataset: gpt4 }\n`;
    const loaded = parseSpec(text, '/specs/p.yaml', 'p.yaml');
    expect(() => planPipeline({ ...loaded, file: 'p.yaml' })).toThrow(InputError);
    try {
      planPipeline({ ...loaded, file: 'p.yaml' });
    } catch (err) {
      expect((err as InputError).problems).toEqual([
        { file: 'p.yaml', line: 7, field: 'datasets.gpt4.name', message: `${infoFile()}: entry "alpaca_gpt4_en" names a hub dataset (hf_hub_url, ms_hub_url); Refinery reads local files only` },
      ]);
    }
  });
});

const attrsOf = (keys: Record<string, unknown>): LlamaFactoryAttrs => {
  const r = llamaFactoryAttrs(keys);
  if ('problem' in r) throw new Error(r.problem.message);
  return r.attrs;
};
const problemOf = (record: unknown, attrs: LlamaFactoryAttrs) => {
  try {
    convertLlamaFactoryRecord(record, attrs);
  } catch (err) {
    if (err instanceof RecordProblem) return { field: err.field, message: err.message };
    throw err;
  }
  throw new Error('converted');
};

describe('attributes as LLaMA-Factory resolves them', () => {
  it('defaults without columns/tags; with them, only what they name', () => {
    expect(attrsOf({})).toEqual({
      formatting: 'alpaca',
      ranking: false,
      columns: { prompt: 'instruction', query: 'input', response: 'output', messages: 'conversations' },
      tags: { role_tag: 'from', content_tag: 'value', user_tag: 'human', assistant_tag: 'gpt', observation_tag: 'observation', function_tag: 'function_call', system_tag: 'system' },
    });
    expect(attrsOf({ columns: { prompt: 'text' } }).columns).toEqual({ prompt: 'text' });
    expect(attrsOf({ formatting: 'sharegpt', tags: { role_tag: 'role', content_tag: 'content' } }).tags).toEqual({ role_tag: 'role', content_tag: 'content' });
  });

  it('refuses formatting openai and media columns by name', () => {
    expect(llamaFactoryAttrs({ formatting: 'openai' })).toMatchObject({ problem: { at: ['formatting'], message: expect.stringMatching(/not supported/) } });
    expect(llamaFactoryAttrs({ columns: { messages: 'm', images: 'images' } })).toMatchObject({ problem: { at: ['columns', 'images'] } });
  });

  it('the canonical format follows kto_tag, ranking, and a missing response column (pretraining)', () => {
    expect(canonicalFormatOf(attrsOf({ formatting: 'sharegpt', columns: { messages: 'messages', kto_tag: 'label' } }))).toBe('kto');
    expect(canonicalFormatOf(attrsOf({ ranking: true }))).toBe('preference');
    expect(canonicalFormatOf(attrsOf({ columns: { prompt: 'text' } }))).toBe('text');
    expect(canonicalFormatOf(attrsOf({ formatting: 'sharegpt' }))).toBe('chat');
  });
});

describe('alpaca records', () => {
  const full = attrsOf({ columns: { prompt: 'instruction', query: 'input', response: 'output', system: 'system', history: 'history' } });
  it('system, history, "instruction\\ninput" (as LLaMA-Factory joins them), output', () => {
    const row = convertLlamaFactoryRecord({ instruction: 'Add.', input: '1+1', output: '2', system: 'Be brief.', history: [['Hi', 'Hello']] }, full);
    expect(row).toEqual({
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hi' },
        { role: 'assistant', content: 'Hello' },
        { role: 'user', content: 'Add.\n1+1' },
        { role: 'assistant', content: '2' },
      ],
    });
  });
  it('without columns, system and history are not read (LLaMA-Factory leaves them unset)', () => {
    expect(convertLlamaFactoryRecord({ instruction: 'Q', input: '', output: 'A', system: 'ignored' }, attrsOf({}))).toEqual({
      messages: [{ role: 'user', content: 'Q' }, { role: 'assistant', content: 'A' }],
    });
  });
  it('ranking pairs of strings, kto labels, pretraining text', () => {
    expect(convertLlamaFactoryRecord({ instruction: 'Q', chosen: 'good', rejected: 'bad' }, attrsOf({ ranking: true, columns: { prompt: 'instruction', chosen: 'chosen', rejected: 'rejected' } }))).toEqual({
      prompt: [{ role: 'user', content: 'Q' }],
      chosen: [{ role: 'assistant', content: 'good' }],
      rejected: [{ role: 'assistant', content: 'bad' }],
    });
    expect(convertLlamaFactoryRecord({ instruction: 'Q', output: 'A', ok: false }, attrsOf({ columns: { prompt: 'instruction', response: 'output', kto_tag: 'ok' } }))).toEqual({
      prompt: [{ role: 'user', content: 'Q' }],
      completion: [{ role: 'assistant', content: 'A' }],
      label: false,
    });
    expect(convertLlamaFactoryRecord({ text: 'Once upon a time' }, attrsOf({ columns: { prompt: 'text' } }))).toEqual({ text: 'Once upon a time' });
  });
  it('problems name the source field', () => {
    expect(problemOf({ instruction: 'Q', output: 3 }, attrsOf({}))).toEqual({ field: 'output', message: 'expected string, got number' });
    expect(problemOf({ instruction: '', input: '' }, attrsOf({}))).toEqual({ field: 'instruction', message: 'must not be empty' });
    expect(problemOf({ instruction: 'Q', output: 'A', ok: 'yes' }, attrsOf({ columns: { prompt: 'instruction', response: 'output', kto_tag: 'ok' } }))).toEqual({ field: 'ok', message: 'expected true or false, got string' });
  });
});

describe('sharegpt records', () => {
  const tools = attrsOf({ formatting: 'sharegpt', columns: { messages: 'conversations', tools: 'tools', system: 'system' } });
  it('tool calls: function_call turns become assistant tool_calls, observations tool messages, tools function schemas', () => {
    const row = convertLlamaFactoryRecord(
      {
        conversations: [
          { from: 'human', value: 'Weather in Paris?' },
          { from: 'function_call', value: '{"name": "weather", "arguments": "{\\"city\\": \\"Paris\\"}"}' },
          { from: 'observation', value: '{"temp": 21}' },
          { from: 'gpt', value: '21 degrees.' },
        ],
        tools: '[{"name": "weather", "description": "d", "parameters": {"type": "object"}}]',
        system: 'You help.',
      },
      tools,
    );
    expect(row).toEqual({
      messages: [
        { role: 'system', content: 'You help.' },
        { role: 'user', content: 'Weather in Paris?' },
        { role: 'assistant', content: '', tool_calls: [{ type: 'function', function: { name: 'weather', arguments: { city: 'Paris' } } }] },
        { role: 'tool', content: '{"temp": 21}' },
        { role: 'assistant', content: '21 degrees.' },
      ],
      tools: [{ type: 'function', function: { name: 'weather', description: 'd', parameters: { type: 'object' } } }],
    });
  });
  it('a leading system turn is the system prompt; tags rename roles and keys', () => {
    const attrs = attrsOf({ formatting: 'sharegpt', columns: { messages: 'messages' }, tags: { role_tag: 'role', content_tag: 'content', user_tag: 'user', assistant_tag: 'assistant', system_tag: 'system' } });
    expect(convertLlamaFactoryRecord({ messages: [{ role: 'system', content: 'S' }, { role: 'user', content: 'U' }, { role: 'assistant', content: 'A' }] }, attrs)).toEqual({
      messages: [{ role: 'system', content: 'S' }, { role: 'user', content: 'U' }, { role: 'assistant', content: 'A' }],
    });
  });
  it('ranking: the conversation ends with the user; chosen/rejected are {from, value} answers', () => {
    const attrs = attrsOf({ formatting: 'sharegpt', ranking: true, columns: { messages: 'conversations', chosen: 'chosen', rejected: 'rejected' } });
    expect(convertLlamaFactoryRecord({ conversations: [{ from: 'human', value: 'Q' }], chosen: { from: 'gpt', value: 'good' }, rejected: { from: 'gpt', value: 'bad' } }, attrs)).toEqual({
      prompt: [{ role: 'user', content: 'Q' }],
      chosen: [{ role: 'assistant', content: 'good' }],
      rejected: [{ role: 'assistant', content: 'bad' }],
    });
    expect(problemOf({ conversations: [{ from: 'human', value: 'Q' }], chosen: 'good', rejected: { from: 'gpt', value: 'bad' } }, attrs)).toEqual({ field: 'chosen', message: 'expected an object with from and value, got string' });
    expect(problemOf({ conversations: [{ from: 'human', value: 'Q' }, { from: 'gpt', value: 'A' }], chosen: { from: 'gpt', value: 'g' }, rejected: { from: 'gpt', value: 'b' } }, attrs)).toMatchObject({ field: 'conversations', message: expect.stringMatching(/^a ranking conversation ends with/) });
  });
  it('turns alternate as LLaMA-Factory requires; a broken one is named, not skipped', () => {
    expect(problemOf({ conversations: [{ from: 'human', value: 'a' }, { from: 'human', value: 'b' }] }, tools)).toEqual({
      field: 'conversations[1].from',
      message: 'expected "gpt" | "function_call" here (turns alternate "human/observation" and "gpt/function_call"), got "human"',
    });
    expect(problemOf({ conversations: [{ from: 'human', value: 'a' }] }, tools)).toMatchObject({ field: 'conversations', message: expect.stringMatching(/^must end with/) });
    expect(problemOf({ conversations: [{ from: 'human', value: 'a' }, { from: 'function_call', value: 'weather(Paris)' }] }, tools)).toMatchObject({ field: 'conversations[1].value', message: expect.stringMatching(/holds JSON/) });
    expect(problemOf({ conversations: [{ from: 'human', value: 'a' }, { from: 'gpt', value: 'b' }], tools: 'not json' }, tools)).toEqual({ field: 'tools', message: 'expected a JSON array of function schemas' });
  });
  it('kto: the last turn is the completion, the label a boolean', () => {
    const attrs = attrsOf({ formatting: 'sharegpt', columns: { messages: 'messages', kto_tag: 'label' }, tags: { role_tag: 'role', content_tag: 'content', user_tag: 'user', assistant_tag: 'assistant' } });
    const row: CanonicalRow = convertLlamaFactoryRecord({ messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }, { role: 'user', content: 'c' }, { role: 'assistant', content: 'd' }], label: false }, attrs);
    expect(row).toEqual({ prompt: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }, { role: 'user', content: 'c' }], completion: [{ role: 'assistant', content: 'd' }], label: false });
  });
  it('problems in a JSON array file name the line where the record starts', async () => {
    const text = '[\n  {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},\n  {\n    "conversations": [\n      {"from": "gpt", "value": "a"}\n    ]\n  }\n]\n';
    const report = await validateRecords(Readable.from([Buffer.from(text)]), 'json', { format: 'chat', source: { kind: 'llama-factory', attrs: tools } }, 'd.json');
    expect(report).toEqual({ rows: 1, problems: [{ file: 'd.json', line: 3, field: 'conversations[0].from', message: expect.stringMatching(/^expected "human" \| "observation" here/) }] });
  });
});

describe('planning', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'refinery-lf-plan-'));
    await writeFile(path.join(dir, 'dataset_info.json'), JSON.stringify({ mine: { file_name: 'mine.json', formatting: 'sharegpt' }, pt: { file_name: 'pt.txt', columns: { prompt: 'text' } }, folder: { file_name: '.' } }));
  });
  const plan = (datasets: string, stages: string) => {
    const text = `name: p\nbase_model: ./m\ntemplate: chatml\ndatasets:\n${datasets}stages:\n${stages}`;
    return planPipeline({ ...parseSpec(text, path.join(dir, 'p.yaml'), 'p.yaml'), file: path.join(dir, 'p.yaml') });
  };
  const problems = (datasets: string, stages: string) => {
    try {
      plan(datasets, stages);
    } catch (err) {
      return (err as InputError).problems;
    }
    throw new Error('planned');
  };

  it('an entry, inline keys, and the prompts of a chat dataset for ppo', () => {
    const p = plan(
      `  a: { dataset_info: dataset_info.json, name: mine, val_size: 0.05 }\n  b: { path: b.json, formatting: sharegpt, columns: { messages: msgs } }\n  c: { dataset_info: dataset_info.json, name: mine, format: prompts }\n`,
      `  - { id: sft, kind: sft, dataset: a }\n  - { id: rm, kind: reward, dataset: { path: r.jsonl, format: preference } }\n  - { id: ppo, kind: ppo, policy: sft, reward_model: rm, dataset: c }\n  - { id: s2, kind: sft, dataset: b }\n`,
    );
    const ds = (id: string) => p.stages.find((s) => s.id === id)!.dataset!;
    expect(ds('sft')).toEqual({
      name: 'a',
      path: path.join(dir, 'mine.json'),
      format: 'chat',
      source: { kind: 'llama-factory', attrs: expect.objectContaining({ formatting: 'sharegpt' }), datasetInfo: path.join(dir, 'dataset_info.json'), entry: 'mine' },
      valSize: 0.05,
    });
    expect(ds('ppo')).toMatchObject({ name: 'c', format: 'prompts' });
    expect(ds('s2')).toMatchObject({ path: path.join(dir, 'b.json'), format: 'chat', source: { kind: 'llama-factory', attrs: { columns: { messages: 'msgs' } } } });
    expect(ds('rm')).toMatchObject({ format: 'preference', source: { kind: 'refinery', format: 'preference' } });
  });

  it('refusals name the spec line and key', () => {
    expect(problems(`  a: { dataset_info: dataset_info.json, name: nope }\n`, `  - { id: sft, kind: sft, dataset: a }\n`)).toEqual([
      expect.objectContaining({ line: 5, field: 'datasets.a.name', message: expect.stringMatching(/^dataset_info.json: no entry "nope" \(3 entries: mine, pt, folder\)$/) }),
    ]);
    expect(problems(`  a: { dataset_info: dataset_info.json, name: folder }\n`, `  - { id: sft, kind: sft, dataset: a }\n`)[0]!.message).toMatch(/is a folder/);
    expect(problems(`  a: { dataset_info: dataset_info.json, name: pt, format: chat }\n`, `  - { id: cpt, kind: cpt, dataset: a }\n`)[0]).toMatchObject({ field: 'datasets.a.format', message: 'this entry reads as text data; format may be "text"' });
    expect(problems(`  a: { path: a.txt, format: chat }\n`, `  - { id: sft, kind: sft, dataset: a }\n`)[0]).toMatchObject({ field: 'datasets.a.format', message: expect.stringMatching(/is a .txt file/) });
    expect(problems(`  a: { path: a.json, formatting: sharegpt, columns: { messages: m, images: i } }\n`, `  - { id: sft, kind: sft, dataset: a }\n`)[0]).toMatchObject({ field: 'datasets.a.columns.images' });
  });

  it('mix: planned with its general dataset and seed; refused for an unknown, mixed or other-format one', () => {
    const p = plan(`  a: { path: a.jsonl, format: chat, mix: { dataset: g, ratio: 0.2 } }\n  g: { dataset_info: dataset_info.json, name: mine, val_size: 3 }\n`, `  - { id: sft, kind: sft, dataset: a }\n`);
    expect(p.stages[0]!.dataset!.mix).toEqual({ dataset: expect.objectContaining({ name: 'g', format: 'chat', path: path.join(dir, 'mine.json') }), ratio: 0.2, seed: 42 });
    expect(p.stages[0]!.dataset!.mix!.dataset).not.toHaveProperty('valSize');
    const stage = `  - { id: sft, kind: sft, dataset: a }\n`;
    expect(problems(`  a: { path: a.jsonl, format: chat, mix: { dataset: nope, ratio: 1 } }\n`, stage)[0]).toMatchObject({ field: 'datasets.a.mix.dataset', message: 'no dataset named "nope" in datasets' });
    expect(problems(`  a: { path: a.jsonl, format: chat, mix: { dataset: b, ratio: 1 } }\n  b: { path: b.jsonl, format: chat, mix: { dataset: a, ratio: 1 } }\n`, stage)[0]).toMatchObject({ field: 'datasets.a.mix.dataset', message: expect.stringMatching(/is mixed itself/) });
    expect(problems(`  a: { path: a.jsonl, format: chat, mix: { dataset: t, ratio: 1 } }\n  t: { path: t.txt, format: text }\n`, stage)[0]).toMatchObject({ field: 'datasets.a.mix.dataset', message: 'dataset "t" reads as text data, this one as chat: mix datasets of one format' });
  });

  it('the schema: path or dataset_info, name with it, format without LLaMA-Factory keys', () => {
    const fields = (datasets: string) => {
      try {
        parseSpec(`name: p\nbase_model: ./m\ndatasets:\n${datasets}stages:\n  - { id: m, kind: merge, from: base }\n`, '/p.yaml', 'p.yaml');
      } catch (err) {
        return (err as InputError).problems.map((p) => `${p.field}: ${p.message}`);
      }
      return [];
    };
    expect(fields('  a: { format: chat }\n')).toEqual(['datasets.a.path: give `path` (a data file) or `dataset_info` with `name`']);
    expect(fields('  a: { dataset_info: d.json }\n')).toEqual(['datasets.a.name: required with `dataset_info`: the entry to read']);
    expect(fields('  a: { path: a.jsonl }\n')).toEqual(['datasets.a.format: required (or describe the file with LLaMA-Factory keys: formatting, columns, tags, ranking)']);
    expect(fields('  a: { path: a.jsonl, format: chat, val_size: 1.5 }\n')).toEqual(['datasets.a.val_size: a fraction below 1 or a whole number of rows']);
    expect(fields('  a: { dataset_info: d.json, name: x, columns: { prompt: t } }\n')).toEqual(['datasets.a.columns: comes from the dataset_info.json entry, not the spec']);
  });
});
