/**
 * Bad input is refused end to end (invariant 5): for every case of the corpus in
 * test/fixtures/bad-input/ — malformed YAML, unknown keys, wrong types, out-of-range values,
 * cycles, dangling references, a missing dataset, broken JSONL lines, a 100 MB line, "../" in ids,
 * names, prefixes and paths, shell metacharacters in every string field — `startRun` throws one
 * error that names the file, the line and the field; no workflow starts (a control worker is
 * running, so a started run would write to the bucket); nothing is written to the bucket; nothing
 * is executed. `bin/refinery validate` exits 2 with one line per problem.
 *
 * How the parser words each problem is covered by the unit tests (test/unit/spec-*.test.ts,
 * datasets.test.ts); this file is about the refusal.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@temporalio/client';
import { execa } from 'execa';
import { parseDocument } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRun } from '../../client/commands/run.js';
import { validateSpec } from '../../client/commands/validate.js';
import { CliError } from '../../client/errors.js';
import { InputError, type InputProblem } from '../../spec/errors.js';
import { MAX_LINE_BYTES } from '../../spec/datasets.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { REPO_ROOT } from '../../config/paths.js';
import { startTestWorkers, testClient, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';

const FIXTURES = fileURLToPath(new URL('../fixtures/bad-input/', import.meta.url));
const fixture = (name: string) => path.join(FIXTURES, name);
const RUN_PREFIX = `bad-input-${Date.now().toString(36)}`;

let store: ObjectStore;
let client: Client;
let closeClient: () => Promise<void>;
let control: TestWorkers;
let scratch: string;
let seq = 0;
const startedIds: string[] = [];
/** Created by any payload below if a shell ever ran it. */
let marker: string;

beforeAll(async () => {
  useTestStackEnv();
  store = testStore();
  ({ client, close: closeClient } = await testClient());
  // A control worker: a run that started by mistake would prepare itself and write to the bucket.
  control = await startTestWorkers({ trainingQueues: [] });
  scratch = await mkdtemp(path.join(tmpdir(), 'refinery-bad-input-'));
  marker = path.join(scratch, 'PWNED');
});
afterAll(async () => {
  await closeClient?.();
  await control?.shutdown();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

async function bucketKeys(): Promise<Set<string>> {
  return new Set((await store.list('', true)).map((o) => `${o.key}:${o.size}`));
}

/**
 * Objects written between two listings that a refused run could have written: anything under the
 * corpus' prefix, anything naming the run id, anything under a new top-level prefix. (Objects under
 * other existing prefixes may come from runs other test files left behind.)
 */
function writtenBy(before: Set<string>, after: Set<string>, runId: string): string[] {
  const tops = new Set([...before].map((k) => k.split('/')[0]));
  return [...after].filter((k) => !before.has(k) && (k.startsWith('bad-input/') || k.includes(runId) || !tops.has(k.split('/')[0])));
}

async function workflowExists(id: string): Promise<boolean> {
  try {
    await client.workflow.getHandle(id).describe();
    return true;
  } catch (err) {
    if ((err as Error).name === 'WorkflowNotFoundError') return false;
    throw err;
  }
}

/**
 * Runs `startRun` on a spec that must be refused; returns the one problem it reports after
 * checking that no workflow started and the bucket did not change.
 */
async function refused(specFile: string, options: { id?: string; forceStages?: string[] } = {}): Promise<{ error: Error; problem?: InputProblem }> {
  const id = options.id ?? `${RUN_PREFIX}-${++seq}`;
  startedIds.push(id);
  const before = await bucketKeys();
  const error = await startRun(client, specFile, { id, forceStages: options.forceStages }).then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  expect(error, `${path.basename(specFile)} must be refused`).toBeDefined();
  expect(error).toSatisfy((e: unknown) => e instanceof InputError || e instanceof CliError);
  expect(error!.message.split('\n'), `one line: ${error!.message}`).toHaveLength(1);
  expect(await workflowExists(id), 'no workflow may start').toBe(false);
  expect(writtenBy(before, await bucketKeys(), id), 'nothing may be written to the bucket').toEqual([]);
  return { error: error!, problem: error instanceof InputError ? error.problems[0] : undefined };
}

interface Case {
  spec: string;
  /** The file the problem names (the spec unless a data file). */
  file?: string;
  line: number;
  /** undefined: a problem that has no field (a YAML syntax error, a line that is not JSON). */
  field?: string;
  message: RegExp;
}

const CASES: Case[] = [
  { spec: 'malformed-yaml.yaml', line: 9, message: /invalid YAML/ },
  { spec: 'unknown-key.yaml', line: 11, field: 'stages[0].hyper.learning_rat', message: /unknown key/ },
  { spec: 'wrong-type.yaml', line: 12, field: 'stages[0].hyper.max_steps', message: /expected number/ },
  { spec: 'out-of-range.yaml', line: 13, field: 'stages[0].hyper.learning_rate', message: /<=\s*1/ },
  { spec: 'cycle.yaml', line: 8, field: 'stages[0]', message: /dependency cycle: a -> b -> a/ },
  { spec: 'dangling-ref.yaml', line: 14, field: 'stages[1].from', message: /no stage with id "sftt"/ },
  { spec: 'dangling-dataset.yaml', line: 10, field: 'stages[0].dataset', message: /no dataset named "chatz"/ },
  { spec: 'missing-dataset.yaml', line: 6, field: 'datasets.chats.path', message: /no-such-file\.jsonl does not exist/ },
  { spec: 'data-invalid-json.yaml', file: 'data/invalid-json.jsonl', line: 3, message: /invalid JSON/ },
  { spec: 'data-unknown-role.yaml', file: 'data/unknown-role.jsonl', line: 2, field: 'messages[1].role', message: /expected one of "system" \| "user" \| "assistant"/ },
  { spec: 'data-empty-content.yaml', file: 'data/empty-content.jsonl', line: 4, field: 'messages[0].content', message: /empty/ },
  { spec: 'data-missing-chosen.yaml', file: 'data/missing-chosen.jsonl', line: 2, field: 'chosen', message: /required/ },
  { spec: 'data-missing-rejected.yaml', file: 'data/missing-rejected.jsonl', line: 3, field: 'rejected', message: /required/ },
  { spec: 'traversal-stage-id.yaml', line: 8, field: 'stages[0].id', message: /lowercase letters/ },
  { spec: 'traversal-pipeline-name.yaml', line: 2, field: 'name', message: /lowercase letters/ },
  { spec: 'traversal-storage-prefix.yaml', line: 4, field: 'storage.prefix', message: /pattern|prefix/ },
  { spec: 'traversal-dataset-path.yaml', line: 6, field: 'datasets.chats.path', message: /without "\.\." segments/ },
  { spec: 'traversal-dataset-s3.yaml', line: 9, field: 'stages[0].dataset.path', message: /without "\.\." segments/ },
  { spec: 'traversal-base-model.yaml', line: 3, field: 'base_model', message: /without "\.\." segments/ },
  { spec: 'traversal-dataset-name.yaml', line: 6, field: 'datasets.../x', message: /key/ },
  { spec: 'other-bucket.yaml', line: 6, field: 'storage.bucket', message: /not this deployment's bucket "refinery-test"/ },
];

describe('the bad-input corpus is refused before anything runs', () => {
  it('the baseline the corpus breaks is valid', async () => {
    const { plan } = await validateSpec(fixture('valid.yaml'));
    expect(plan.stages.map((s) => s.id)).toEqual(['sft', 'dpo']);
  });

  it.each(CASES)('$spec: names $file:$line $field', async (c) => {
    const { problem } = await refused(fixture(c.spec));
    expect(problem).toBeDefined();
    expect(problem!.file).toBe(fixture(c.file ?? c.spec));
    expect(problem!.line).toBe(c.line);
    expect(problem!.field).toBe(c.field);
    expect(problem!.message).toMatch(c.message);
    // Each fixture is wrong in exactly one place.
    const error = await validateSpec(fixture(c.spec)).catch((e: unknown) => e as InputError);
    expect((error as InputError).problems).toHaveLength(1);
  });

  it('a 100 MB line (generated here, never committed) is refused by its length, without parsing it', async () => {
    const dir = await mkdtemp(path.join(scratch, 'huge-'));
    const data = path.join(dir, 'huge.jsonl');
    const fh = await open(data, 'w');
    const ok = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n';
    await fh.write(ok);
    await fh.write('{"messages": [{"role": "user", "content": "');
    const chunk = Buffer.alloc(1 << 20, 0x61);
    for (let i = 0; i < 100; i++) await fh.write(chunk);
    await fh.write('"}, {"role": "assistant", "content": "Hello!"}]}\n');
    await fh.write(ok);
    await fh.close();
    const spec = path.join(dir, 'pipeline.yaml');
    await writeFile(spec, `name: bad-huge-line\nbase_model: ${fixture('base')}\nstorage: { prefix: bad-input }\ndatasets:\n  chats: { path: huge.jsonl, format: chat }\nstages:\n  - { id: sft, kind: sft, dataset: chats }\n`);
    try {
      const { problem } = await refused(spec);
      expect(problem).toMatchObject({ file: data, line: 2 });
      expect(problem!.message).toMatch(new RegExp(`line is \\d+ bytes, more than the ${MAX_LINE_BYTES} allowed`));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('"../" in a run id or a --force-stage is refused', async () => {
    const a = await refused(fixture('valid.yaml'), { id: '../../other-run' });
    expect(a.error.message).toMatch(/run id "\.\.\/\.\.\/other-run" is not valid/);
    const b = await refused(fixture('valid.yaml'), { forceStages: ['../sft'] });
    expect(b.error.message).toMatch(/no stage "\.\.\/sft"/);
  });
});

describe('shell metacharacters in every string field', () => {
  /** Every metacharacter a shell would act on; if any of this ever reached a shell, `marker` would appear. */
  const payload = () => `x;y|z&$(touch ${marker})\`touch ${marker}\`>o<i'q"\\*?[a]{b}~!#%`;

  /** Where the payload goes; the field the problem names (default: that path); what it says. */
  const REFUSED: { at: (string | number)[]; field?: string; message: RegExp }[] = [
    { at: ['name'], message: /lowercase letters/ },
    { at: ['base_model'], message: /is not a directory/ },
    { at: ['storage', 'prefix'], message: /pattern/ },
    { at: ['storage', 'bucket'], message: /pattern/ },
    { at: ['datasets', 'chats', 'path'], message: /does not exist/ },
    { at: ['datasets', 'chats', 'format'], message: /expected one of/ },
    { at: ['defaults', 'finetuning', 'type'], message: /expected one of/ },
    { at: ['defaults', 'finetuning', 'lora', 'target_modules', 0], field: 'defaults.finetuning.lora.target_modules', message: /./ },
    { at: ['defaults', 'hyper', 'scheduler'], message: /expected one of/ },
    { at: ['defaults', 'resources', 'task_queue'], message: /pattern/ },
    { at: ['defaults', 'retry', 'initial_interval'], message: /./ },
    { at: ['defaults', 'timeouts', 'heartbeat'], message: /./ },
    { at: ['stages', 0, 'id'], message: /lowercase letters/ },
    { at: ['stages', 0, 'kind'], message: /expected one of/ },
    { at: ['stages', 0, 'dataset'], message: /./ },
    { at: ['stages', 1, 'from'], message: /no stage with id/ },
    { at: ['stages', 1, 'gate', 'metrics', 0, 'metric'], message: /pattern/ },
  ];

  /** The baseline (its base model and data by absolute path) with one field set to `value`, in a temp dir. */
  async function mutated(at: (string | number)[], value: string): Promise<{ file: string; line: number }> {
    const doc = parseDocument(await readFile(fixture('valid.yaml'), 'utf8'));
    doc.setIn(['base_model'], fixture('base'));
    doc.setIn(['datasets', 'chats', 'path'], fixture('data/chat.jsonl'));
    doc.setIn(['datasets', 'prefs', 'path'], fixture('data/preference.jsonl'));
    doc.setIn(at, value);
    const text = doc.toString({ lineWidth: 0 });
    const file = path.join(scratch, `metachar-${++seq}.yaml`);
    await writeFile(file, text);
    const line = text.split('\n').findIndex((l) => l.includes('touch')) + 1;
    return { file, line };
  }

  it.each(REFUSED.map((c) => ({ ...c, name: c.at.join('.') })))('$name: refused, named, never executed', async (c) => {
    const { file, line } = await mutated(c.at, payload());
    try {
      const { problem } = await refused(file);
      expect(problem).toBeDefined();
      expect(problem!.file).toBe(file);
      const field = c.field ?? c.at.map((k, i) => (typeof k === 'number' ? `[${k}]` : i === 0 ? k : `.${k}`)).join('');
      expect(problem!.field === field || problem!.field?.startsWith(`${field}[`) || problem!.field?.startsWith(`${field}.`), `field ${problem!.field} is ${field}`).toBe(true);
      expect(problem!.line).toBe(line);
      expect(problem!.message).toMatch(c.message);
    } finally {
      await rm(file, { force: true });
    }
  });

  it('free-text fields (description, job_params) keep the payload verbatim as data', async () => {
    for (const at of [['description'], ['stages', 1, 'job_params', 'note']]) {
      const { file } = await mutated(at, payload());
      try {
        const { plan } = await validateSpec(file);
        if (at[0] === 'stages') expect(plan.stages.find((s) => s.id === 'dpo')!.jobParams?.note).toBe(payload());
      } finally {
        await rm(file, { force: true });
      }
    }
  });

  it('a spec path full of metacharacters reaches the CLI as one argument, not a shell', async () => {
    const r = await execa(path.join(REPO_ROOT, 'bin', 'refinery'), ['validate', path.join(scratch, `$(touch ${marker}).yaml`)], { reject: false });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/^error: .*\$\(touch .*\)\.yaml: cannot read the spec: ENOENT$/m);
  });

  it('no payload was ever executed', () => {
    expect(existsSync(marker)).toBe(false);
  });
});

describe('bin/refinery validate', () => {
  it.each([
    ['out-of-range.yaml', `error: ${fixture('out-of-range.yaml')}:13: stages[0].hyper.learning_rate: Too big: expected number to be <=1`],
    ['data-unknown-role.yaml', `error: ${fixture('data/unknown-role.jsonl')}:2: messages[1].role: expected one of "system" | "user" | "assistant" | "tool"`],
  ])('%s: exit code 2 and one line naming file, line and field', async (spec, expected) => {
    const r = await execa(path.join(REPO_ROOT, 'bin', 'refinery'), ['validate', fixture(spec)], { reject: false });
    expect(r.exitCode).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toEqual([expected]);
  });
});

describe('afterwards', () => {
  it('no run of this file exists in Temporal', async () => {
    const ids: string[] = [];
    for await (const wf of client.workflow.list({ query: `WorkflowType = 'pipelineWorkflow'` })) ids.push(wf.workflowId);
    expect(ids.filter((id) => id.startsWith(RUN_PREFIX) || startedIds.includes(id))).toEqual([]);
    for (const id of startedIds) expect(await workflowExists(id)).toBe(false);
  });
});
