// Reading a spec (spec/load.ts): every problem names the file, the line and the path in the
// document (invariant 5). Fixtures in test/fixtures/bad-specs/ say in their first line what is
// wrong and where; the semantic checks of the planner are in spec-plan.test.ts.
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatPath, formatProblem, InputError, type InputProblem } from '../../spec/errors.js';
import { loadSpecFile, parseSpec } from '../../spec/load.js';
import { DataPath, Id } from '../../spec/schema.js';
import { layout, segment } from '../../storage/layout.js';

const BAD_SPECS = fileURLToPath(new URL('../fixtures/bad-specs/', import.meta.url));
const fixture = (name: string) => path.join(BAD_SPECS, name);

/** The problems loadSpecFile reports for a fixture (fails the test when it loads). */
async function loadProblems(name: string): Promise<InputProblem[]> {
  const error = await loadSpecFile(fixture(name)).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, `${name} should not load`).toBeInstanceOf(InputError);
  const problems = (error as InputError).problems;
  for (const p of problems) expect(p.file).toBe(fixture(name));
  // zod reports in schema order, not document order: sort for readable assertions.
  return [...problems].sort((a, b) => (a.line ?? 0) - (b.line ?? 0));
}

/** The problems parseSpec reports for a YAML text. */
function parseProblems(text: string): InputProblem[] {
  try {
    parseSpec(text, '/specs/pipeline.yaml', 'pipeline.yaml');
  } catch (e) {
    expect(e).toBeInstanceOf(InputError);
    return (e as InputError).problems;
  }
  throw new Error('expected the spec to be refused');
}

const VALID = `name: demo
base_model: ./base
datasets:
  chats: { path: data/sft.jsonl, format: chat }
stages:
  - id: sft
    kind: sft
    dataset: chats
    hyper:
      learning_rate: 0.0002
`;

describe('YAML syntax', () => {
  it('a syntax error names the file and the line it is on', async () => {
    const problems = await loadProblems('malformed-yaml.yaml');
    expect(problems.length).toBeGreaterThanOrEqual(1);
    expect(problems[0]).toMatchObject({ line: 10, message: expect.stringMatching(/^invalid YAML: /) });
    const error = await loadSpecFile(fixture('malformed-yaml.yaml')).catch((e: unknown) => e as Error);
    expect((error as Error).message.split('\n')[0]).toMatch(new RegExp(`^${escape(fixture('malformed-yaml.yaml'))}:10: invalid YAML: `));
  });

  it('a duplicate key is an error at the second occurrence, not a silent override', async () => {
    const problems = await loadProblems('duplicate-key.yaml');
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({ line: 8, message: expect.stringMatching(/invalid YAML: .*unique/) });
  });

  it('tabs as indentation: the line of the tab', () => {
    const problems = parseProblems('name: a\nbase_model: ./b\nstages:\n\t- id: x\n');
    expect(problems[0]).toMatchObject({ file: 'pipeline.yaml', line: 4, message: expect.stringMatching(/^invalid YAML: .*[Tt]ab/) });
  });

  it('an unterminated flow collection still gets a line', () => {
    const problems = parseProblems('name: a\nbase_model: ./b\nstages:\n  - id: x\n    kind: sft\n    params: {a: 1\n    from: base\n');
    expect(problems[0]!.line).toBeGreaterThanOrEqual(6);
    expect(problems[0]!.message).toMatch(/^invalid YAML: /);
  });
});

describe('schema errors: line and document path', () => {
  it('an unknown key: its own line and path', async () => {
    const problems = await loadProblems('unknown-key.yaml');
    expect(problems).toEqual([{ file: fixture('unknown-key.yaml'), line: 14, field: 'stages[1].hyperr', message: 'unknown key' }]);
    const error = await loadSpecFile(fixture('unknown-key.yaml')).catch((e: unknown) => e as Error);
    expect((error as Error).message).toBe(`${fixture('unknown-key.yaml')}:14: stages[1].hyperr: unknown key`);
  });

  it('several unknown keys in one object are listed together', () => {
    const problems = parseProblems(`${VALID}    foo: 1\n    bar: 2\n`);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({ line: 11, field: 'stages[0].foo', message: 'unknown keys "foo", "bar"' });
  });

  it('an unknown top-level key and an unknown nested key (hyper) are both reported', () => {
    const problems = parseProblems(`${VALID}      learnig_rate: 0.1\nstagez: []\n`);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ line: 12, field: 'stagez', message: 'unknown key' }),
        expect.objectContaining({ line: 11, field: 'stages[0].hyper.learnig_rate', message: 'unknown key' }),
      ]),
    );
  });

  it('a value of the wrong type says what was expected (not "required")', async () => {
    const problems = await loadProblems('wrong-types.yaml');
    expect(problems).toEqual([
      { file: fixture('wrong-types.yaml'), line: 11, field: 'stages[0].resources.gpus', message: 'expected number' },
      { file: fixture('wrong-types.yaml'), line: 13, field: 'stages[0].hyper.max_steps', message: 'expected int' },
    ]);
  });

  it('a missing required field says "required" and points at its parent', () => {
    const problems = parseProblems('name: demo\nstages:\n  - id: sft\n    kind: sft\n  - id: gguf\n');
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ field: 'base_model', line: 1, message: 'required, expected string' }),
        expect.objectContaining({ field: 'stages[1].kind', line: 5, message: expect.stringMatching(/^expected one of "cpt" \| "sft"/) }),
      ]),
    );
  });

  it('an unknown stage kind lists the allowed kinds', () => {
    const problems = parseProblems(VALID.replace('kind: sft', 'kind: rlhf'));
    expect(problems).toEqual([
      expect.objectContaining({ line: 7, field: 'stages[0].kind', message: 'expected one of "cpt" | "sft" | "reward" | "ppo" | "dpo" | "grpo" | "kto" | "orpo" | "merge" | "gguf" | "eval"' }),
    ]);
  });

  it('out-of-range hyper-parameters point at their own line', async () => {
    const problems = await loadProblems('out-of-range.yaml');
    expect(problems).toHaveLength(2);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ line: 12, field: 'stages[0].hyper.learning_rate', message: expect.stringMatching(/<=\s?1/) }),
        expect.objectContaining({ line: 16, field: 'stages[0].finetuning.lora.r', message: expect.stringMatching(/>=\s?1/) }),
      ]),
    );
  });

  it.each([
    ['learning_rate', '0', /0/],
    ['learning_rate', '-0.1', /0/],
    ['warmup_ratio', '1.5', /1/],
    ['batch_size', '0', /1/],
    ['max_length', '4', /8/],
    ['seed', '-1', /0/],
    ['scheduler', 'exponential', /expected one of "linear"/],
  ])('hyper.%s: %s is refused', (key, value, message) => {
    const problems = parseProblems(`${VALID.replace('learning_rate: 0.0002', 'max_steps: 10')}      ${key}: ${value}\n`);
    expect(problems).toEqual([expect.objectContaining({ line: 11, field: `stages[0].hyper.${key}`, message: expect.stringMatching(message) })]);
  });

  it('a bad duration names its field', () => {
    const problems = parseProblems(`${VALID}    timeouts:\n      heartbeat: 30s\n      stall: 5 min\n`);
    expect(problems).toEqual([expect.objectContaining({ line: 13, field: 'stages[0].timeouts.stall', message: expect.stringMatching(/duration/) })]);
  });

  it('an empty document, a list and an empty stage list are refused', () => {
    expect(parseProblems('')).toEqual([expect.objectContaining({ field: '(document)', message: expect.stringMatching(/expected object/) })]);
    expect(parseProblems('- a\n- b\n')).toEqual([expect.objectContaining({ field: '(document)', line: 1, message: 'expected object' })]);
    expect(parseProblems('name: a\nbase_model: ./b\nstages: []\n')).toEqual([
      expect.objectContaining({ field: 'stages', line: 3, message: expect.stringMatching(/>=\s?1/) }),
    ]);
  });

  it('every problem is reported, each on its own line of the message', () => {
    const text = 'name: Demo\nbase_model: ./b\nstages:\n  - id: sft\n    kind: sft\n    hyper: { learning_rate: 2, batch_size: 0 }\n';
    const problems = parseProblems(text);
    expect(problems.map((p) => p.field).sort()).toEqual(['name', 'stages[0].hyper.batch_size', 'stages[0].hyper.learning_rate']);
    expect(problems.every((p) => typeof p.line === 'number')).toBe(true);
    const message = new InputError(problems).message;
    expect(message.split('\n')).toHaveLength(3);
    expect(message).toContain('pipeline.yaml:1: name: lowercase letters');
  });

  it('JSON is YAML: a JSON spec gets lines too', () => {
    const json = JSON.stringify({ name: 'demo', base_model: './b', stages: [{ id: 'sft', kind: 'sft', hyper: { learning_rate: 7 } }] }, null, 2);
    const problems = parseProblems(json);
    expect(problems).toEqual([expect.objectContaining({ field: 'stages[0].hyper.learning_rate', line: json.split('\n').findIndex((l) => l.includes('learning_rate')) + 1 })]);
  });
});

describe('ids', () => {
  it('path traversal, shell metacharacters and uppercase are refused, each at its line', async () => {
    const problems = await loadProblems('bad-ids.yaml');
    expect(problems.map((p) => [p.line, p.field])).toEqual([
      [6, 'stages[0].id'],
      [9, 'stages[1].id'],
      [12, 'stages[2].id'],
    ]);
    for (const p of problems) expect(p.message).toMatch(/lowercase letters/);
  });

  it.each(['../x', 'a;rm -rf', 'Upper', 'sft/../../etc', 'a b', 'a.b', '$(id)', '`id`', 'a|b', '-x', '_x', '1abc', '', 'x'.repeat(64), 'a\nb', 'é'])(
    'Id refuses %j',
    (id) => {
      expect(Id.safeParse(id).success).toBe(false);
    },
  );

  it.each(['sft', 'dpo-2', 'reward_model', 'a', 'x'.repeat(63)])('Id accepts %j, and it is a safe object key segment', (id) => {
    expect(Id.parse(id)).toBe(id);
    expect(segment(id)).toBe(id);
  });

  it('a bad pipeline name and a bad dataset name are refused', () => {
    const problems = parseProblems(VALID.replace('name: demo', 'name: ../demo').replace('  chats:', '  Chats:'));
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ line: 1, field: 'name' }),
        expect.objectContaining({ line: 4, field: 'datasets.Chats' }),
      ]),
    );
  });
});

describe('paths', () => {
  it('a dataset path with ".." segments is refused at its line', async () => {
    const problems = await loadProblems('dotdot-path.yaml');
    expect(problems).toEqual([
      { file: fixture('dotdot-path.yaml'), line: 8, field: 'stages[0].dataset.path', message: 'a path without ".." segments' },
    ]);
  });

  it('".." in named datasets and in base_model is refused too', () => {
    const problems = parseProblems(VALID.replace('base_model: ./base', 'base_model: ../models/base').replace('data/sft.jsonl', 's3://bucket/../x.jsonl'));
    expect(problems).toEqual([
      expect.objectContaining({ line: 2, field: 'base_model', message: 'a path without ".." segments' }),
      expect.objectContaining({ line: 4, field: 'datasets.chats.path', message: 'a path without ".." segments' }),
    ]);
  });

  it.each(['..', '../x.jsonl', 'data/../../x.jsonl', 'data\\..\\x.jsonl', 'a/..', '', 'a\nb', 'a\0b'])('DataPath refuses %j', (p) => {
    expect(DataPath.safeParse(p).success).toBe(false);
  });

  it.each(['data/sft.jsonl', './data/sft.jsonl', '/abs/data.jsonl', 's3://bucket/key.jsonl', 'data/..hidden/x.jsonl', 'x..y.jsonl'])('DataPath accepts %j', (p) => {
    expect(DataPath.parse(p)).toBe(p);
  });
});

describe('loadSpecFile', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'refinery-spec-load-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('loads a valid spec: absolute file, text, sha256 and lines of document paths', async () => {
    const file = path.join(dir, 'pipeline.yaml');
    await writeFile(file, VALID);
    const loaded = await loadSpecFile(path.relative(process.cwd(), file));
    expect(loaded.file).toBe(file);
    expect(loaded.text).toBe(VALID);
    expect(loaded.sha256).toBe(createHash('sha256').update(VALID).digest('hex'));
    expect(loaded.spec.stages[0]).toMatchObject({ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { learning_rate: 0.0002 } });
    expect(loaded.lineOf(['stages', 0, 'dataset'])).toBe(8);
    expect(loaded.lineOf(['stages', 0, 'hyper', 'learning_rate'])).toBe(10);
    expect(loaded.lineOf(['datasets', 'chats', 'format'])).toBe(4);
    // A path that does not exist points at the deepest node that does.
    expect(loaded.lineOf(['stages', 0, 'from'])).toBe(6);
    expect(loaded.lineOf(['stages', 5, 'from'])).toBe(5);
  });

  it('a missing file is an InputError naming the file as given', async () => {
    const error = await loadSpecFile('no/such/pipeline.yaml').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    expect((error as InputError).problems).toEqual([{ file: 'no/such/pipeline.yaml', message: 'cannot read the spec: ENOENT' }]);
  });

  it('messages use the display name', () => {
    expect(() => parseSpec('name: x\n', '/abs/p.yaml', 'p.yaml')).toThrow(/^p\.yaml:1: base_model: required/);
  });
});

describe('errors.ts', () => {
  it('formatPath writes zod paths the way users read them', () => {
    expect(formatPath(['stages', 2, 'hyper', 'learning_rate'])).toBe('stages[2].hyper.learning_rate');
    expect(formatPath([0, 'content'])).toBe('[0].content');
    expect(formatPath(['messages', 1, 'role'])).toBe('messages[1].role');
    expect(formatPath([])).toBe('');
  });

  it('formatProblem: file[:line][: field]: message', () => {
    expect(formatProblem({ file: 'a.yaml', line: 3, field: 'x.y', message: 'bad' })).toBe('a.yaml:3: x.y: bad');
    expect(formatProblem({ file: 'a.yaml', line: 3, message: 'bad' })).toBe('a.yaml:3: bad');
    expect(formatProblem({ file: 'a.yaml', message: 'bad' })).toBe('a.yaml: bad');
    const error = new InputError([{ file: 'a', message: 'one' }, { file: 'b', line: 2, message: 'two' }]);
    expect(error.name).toBe('InputError');
    expect(error.message).toBe('a: one\nb:2: two');
  });
});

describe('storage segment()', () => {
  it.each(['abc', 'a.b-c_d', 'A1', 'x'.repeat(128), createHash('sha256').update('x').digest('hex'), 'sft-3f9a'])('accepts %j', (s) => {
    expect(segment(s)).toBe(s);
  });

  it.each(['', '.', '..', '../x', 'a/b', 'a\\b', '/abs', '-x', '_x', '.hidden', 'a..b', 'x'.repeat(129), 'a b', 'a\nb', '%2e%2e', 'a;b', 'é'])(
    'refuses %j',
    (s) => {
      expect(() => segment(s)).toThrow(`unsafe object key segment: ${JSON.stringify(s)}`);
    },
  );

  it('layout builds keys only from safe segments', () => {
    expect(layout.jobLog('refinery', 'run-1', 'sft', 2)).toBe('refinery/runs/run-1/logs/sft/attempt-2.log');
    expect(layout.checkpoint('p/artifacts/sft-abc', 40)).toBe('p/artifacts/sft-abc/checkpoints/step-000000040');
    expect(() => layout.jobLog('refinery', 'run-1', '../../x', 1)).toThrow(/unsafe/);
    expect(() => layout.run('refinery', 'a/b')).toThrow(/unsafe/);
    expect(() => layout.artifact('refinery', 'sft', '../k')).toThrow(/unsafe/);
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
