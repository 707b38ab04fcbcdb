// Chat templates before anything runs (spec/chat-template.ts): the named templates are the files the
// Python jobs read, and a stage that renders conversations must end up with a template.
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkChatTemplate, isJinjaText, modelChatTemplate, templateNames, TEMPLATES_DIR } from '../../spec/chat-template.js';

const CHATML = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}";
let root: string;

/** A model directory with the given tokenizer files (name -> contents). */
async function modelDir(name: string, files: Record<string, string>): Promise<string> {
  const dir = path.join(root, name);
  await mkdir(dir, { recursive: true });
  for (const [file, text] of Object.entries(files)) await writeFile(path.join(dir, file), text);
  return dir;
}

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'chat-template-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('templateNames', () => {
  it('lists the .jinja files of jobs/refinery_jobs/templates, the names docs/models.md gives', async () => {
    const names = templateNames();
    for (const name of ['chatml', 'gemma', 'llama2', 'llama3', 'mistral', 'phi3', 'qwen']) expect(names).toContain(name);
    expect(names).toEqual([...names].sort());
    expect(names).toHaveLength((await readdir(TEMPLATES_DIR)).filter((f) => f.endsWith('.jinja')).length);
  });
});

describe('modelChatTemplate', () => {
  it("reads chat_template.jinja, or tokenizer_config.json's chat_template (a string or a list of named templates)", async () => {
    expect(await modelChatTemplate(await modelDir('jinja', { 'chat_template.jinja': CHATML, 'tokenizer_config.json': '{}' }))).toBe(CHATML);
    expect(await modelChatTemplate(await modelDir('config', { 'tokenizer_config.json': JSON.stringify({ chat_template: CHATML }) }))).toBe(CHATML);
    const listed = JSON.stringify({ chat_template: [{ name: 'tool_use', template: 'x{{ tools }}' }, { name: 'default', template: CHATML }] });
    expect(await modelChatTemplate(await modelDir('listed', { 'tokenizer_config.json': listed }))).toBe(CHATML);
  });
  it('null for a tokenizer without one; undefined for a directory without a tokenizer', async () => {
    expect(await modelChatTemplate(await modelDir('none', { 'tokenizer_config.json': '{"eos_token": "</s>"}' }))).toBeNull();
    expect(await modelChatTemplate(await modelDir('fast-only', { 'tokenizer.json': '{}' }))).toBeNull();
    expect(await modelChatTemplate(await modelDir('weights-only', { 'config.json': '{}' }))).toBeUndefined();
  });
});

describe('checkChatTemplate', () => {
  it('accepts a named template, Jinja text, or a model with its own template', async () => {
    const bare = await modelDir('bare', { 'tokenizer_config.json': '{}' });
    expect(await checkChatTemplate({ modelDir: bare, template: 'qwen', needsChat: true })).toBeNull();
    expect(await checkChatTemplate({ modelDir: bare, template: CHATML, needsChat: true })).toBeNull();
    expect(isJinjaText('{{ bos_token }}')).toBe(true);
    const own = await modelDir('own', { 'chat_template.jinja': CHATML, 'tokenizer_config.json': '{}' });
    expect(await checkChatTemplate({ modelDir: own, needsChat: true })).toBeNull();
  });
  it('an unknown name: the message lists the named templates', async () => {
    const message = await checkChatTemplate({ modelDir: undefined, template: 'qwen7', needsChat: false });
    expect(message).toMatch(/unknown chat template "qwen7"/);
    for (const name of templateNames()) expect(message).toContain(name);
  });
  it('a chat stage over a model without a template and no override: says to set `template`', async () => {
    const bare = await modelDir('bare2', { 'tokenizer_config.json': '{}' });
    expect(await checkChatTemplate({ modelDir: bare, needsChat: true })).toMatch(/has no chat template.*set `template` in the spec/);
    // Text stages (cpt) need none; s3:// models (no local dir) are checked when the run starts.
    expect(await checkChatTemplate({ modelDir: bare, needsChat: false })).toBeNull();
    expect(await checkChatTemplate({ modelDir: undefined, needsChat: true })).toBeNull();
  });
});

describe('refinery validate refuses chat stages without a template, naming file:line:field', () => {
  const CHAT = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n';
  const PREFS = '{"prompt": "Hi", "chosen": "Hello there!", "rejected": "Hm."}\n';

  /** A spec over a base model whose tokenizer has no template; `extra` lines go after `storage`. */
  async function spec(name: string, { top = '', sftExtra = '' }: { top?: string; sftExtra?: string } = {}): Promise<string> {
    const dir = path.join(root, `spec-${name}`);
    await modelDir(`spec-${name}/base`, { 'config.json': '{}', 'tokenizer_config.json': '{}' });
    await writeFile(path.join(dir, 'chat.jsonl'), CHAT);
    await writeFile(path.join(dir, 'prefs.jsonl'), PREFS);
    const file = path.join(dir, 'pipeline.yaml');
    await writeFile(file, [
      `name: ${name}`,
      'base_model: ./base',
      'storage: { prefix: chat-template-test }',
      ...(top ? [top] : []),
      'datasets:',
      '  chats: { path: chat.jsonl, format: chat }',
      '  prefs: { path: prefs.jsonl, format: preference }',
      'stages:',
      `  - { id: sft, kind: sft, dataset: chats${sftExtra} }`,
      '  - { id: dpo, kind: dpo, from: sft, dataset: prefs }',
      '',
    ].join('\n'));
    return file;
  }

  async function problems(file: string) {
    const { validateSpec } = await import('../../client/commands/validate.js');
    const { InputError } = await import('../../spec/errors.js');
    const error = await validateSpec(file, { bucket: 'refinery' }).then(() => null, (e: unknown) => e);
    if (error === null) return [];
    expect(error).toBeInstanceOf(InputError);
    return (error as InstanceType<typeof InputError>).problems;
  }

  it('no template anywhere: every chat stage is refused, at its line', async () => {
    const file = await spec('missing');
    const found = await problems(file);
    expect(found.map((p) => [p.file, p.line, p.field])).toEqual([[file, 8, 'stages[0].template'], [file, 9, 'stages[1].template']]);
    expect(found[0]!.message).toMatch(/stage "sft".*has no chat template.*set `template`/);
  });

  it("the pipeline's `template` or the stage's own fixes it; an unknown name is refused where it is written", async () => {
    expect(await problems(await spec('pipeline-wide', { top: 'template: qwen' }))).toEqual([]);
    // dpo trains from sft's output, which carries the template sft used.
    expect(await problems(await spec('stage-own', { sftExtra: ', template: llama3' }))).toEqual([]);
    const unknownTop = await spec('unknown-top', { top: 'template: qwen7' });
    expect(await problems(unknownTop)).toMatchObject([{ file: unknownTop, line: 4, field: 'template', message: expect.stringMatching(/unknown chat template "qwen7"/) }]);
    const unknownStage = await spec('unknown-stage', { top: 'template: chatml', sftExtra: ', template: chatml2' });
    expect(await problems(unknownStage)).toMatchObject([{ file: unknownStage, line: 9, field: 'stages[0].template' }]);
  });
});
