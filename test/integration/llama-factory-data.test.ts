/**
 * LLaMA-Factory's own demo datasets, in their shipped form (data/ of the llamafactory sdist that
 * infra/bootstrap.sh caches, toolchain.json `llamaFactoryData`), named through its dataset_info.json:
 * `refinery validate` accepts them, prepareRun commits each as canonical JSONL against real MinIO,
 * run.json records each source (path, sha256 of its bytes, entry) and the mix, and the Python jobs'
 * reader accepts what was committed.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { createControlActivities } from '../../activities/control.js';
import { validateSpec } from '../../client/commands/validate.js';
import { recordedToolchain } from '../../config/toolchain.js';
import { REPO_ROOT } from '../../config/paths.js';
import { layout } from '../../storage/layout.js';
import type { ObjectStore } from '../../storage/object-store.js';
import type { RunManifest } from '../../storage/run-manifest.js';
import type { PreparedRun } from '../../workflows/types.js';
import type { InputError } from '../../spec/errors.js';
import { loadSpecFile } from '../../spec/load.js';
import { planPipeline } from '../../spec/plan.js';
import { testStore } from '../helpers/env.js';
import { writeTestSpec } from '../helpers/specs.js';

const LF_DATA = recordedToolchain()?.llamaFactoryData as string | undefined;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let store: ObjectStore;
beforeAll(() => {
  if (!LF_DATA) throw new Error('no llamaFactoryData in .refinery/toolchain.json: run bash infra/bootstrap.sh llama-factory');
  store = testStore();
});

describe("LLaMA-Factory's demo datasets as shipped", () => {
  it('validate, are committed as canonical rows, and run.json records their sources and the mix', async () => {
    const info = path.join(LF_DATA!, 'dataset_info.json');
    const prefix = `lf-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`;
    const { file } = await writeTestSpec({
      name: 'lf-data',
      template: 'chatml',
      storage: { prefix },
      datasets: {
        alpaca_zh: { dataset_info: info, name: 'alpaca_zh_demo', val_size: 0.1 },
        dpo: { dataset_info: info, name: 'dpo_en_demo' },
        tools: { dataset_info: info, name: 'glaive_toolcall_en_demo' },
        kto: { dataset_info: info, name: 'kto_en_demo' },
        identity: { dataset_info: info, name: 'identity', mix: { dataset: 'alpaca_zh', ratio: 2, seed: 7 } },
      },
      stages: [
        { id: 'sft', kind: 'sft', dataset: 'alpaca_zh' },
        { id: 'dpo', kind: 'dpo', from: 'sft', dataset: 'dpo' },
        { id: 'tools', kind: 'sft', dataset: 'tools' },
        { id: 'kto', kind: 'kto', dataset: 'kto' },
        { id: 'identity', kind: 'sft', dataset: 'identity' },
      ],
    });

    const validated = await validateSpec(file);
    expect(Object.fromEntries(validated.datasets.map((d) => [d.name, d.rows]))).toEqual({ alpaca_zh: 1000, dpo: 300, tools: 300, kto: 300, identity: 91 });

    const plan = planPipeline(await loadSpecFile(file));
    const control = createControlActivities({ store, jobsVersion: 'test-jobs', codeVersion: 'test' });
    const env = new MockActivityEnvironment({ attempt: 1 });
    env.on('heartbeat', () => undefined);
    const prepared: PreparedRun = await env.run(control.prepareRun, { runId: 'lf-1', plan, requestedBy: 'tester' });
    const run = (await store.getJson<RunManifest>(`${layout.run(prefix, 'lf-1')}/run.json`))!;

    const committed = async (name: string) => {
      const dir = await mkdtemp(path.join(tmpdir(), 'refinery-lf-'));
      const local = path.join(dir, `${name}.jsonl`);
      await store.getFile(`${prepared.datasets[name]!.prefix}/files/data.jsonl`, local);
      const bytes = await readFile(local);
      expect(sha(bytes)).toBe(prepared.datasets[name]!.sha256);
      return { local, rows: bytes.toString('utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>) };
    };

    const alpaca = await committed('alpaca_zh');
    expect(alpaca.rows).toHaveLength(1000);
    expect(alpaca.rows[0]).toEqual({ messages: [{ role: 'user', content: expect.stringMatching(/^识别并解释/) }, { role: 'assistant', content: expect.any(String) }] });

    const dpo = await committed('dpo');
    expect(dpo.rows).toHaveLength(300);
    for (const r of dpo.rows) {
      expect(Object.keys(r)).toEqual(['prompt', 'chosen', 'rejected']);
      expect((r.prompt as { role: string }[]).at(-1)!.role).toBe('user');
    }
    // The 80 pairs whose conversation opens with a system turn keep it as the prompt's system message.
    expect(dpo.rows.filter((r) => (r.prompt as { role: string }[])[0]!.role === 'system')).toHaveLength(80);

    const tools = await committed('tools');
    const withCalls = tools.rows.filter((r) => (r.messages as { tool_calls?: unknown }[]).some((m) => m.tool_calls));
    expect(withCalls.length).toBeGreaterThan(100);
    const call = withCalls[0]!;
    expect(call.tools).toEqual([{ type: 'function', function: expect.objectContaining({ name: 'search_recipes', parameters: expect.any(Object) }) }]);
    expect((call.messages as unknown[]).slice(3, 5)).toEqual([
      { role: 'assistant', content: '', tool_calls: [{ type: 'function', function: { name: 'search_recipes', arguments: { ingredients: ['chicken', 'bell peppers', 'rice'] } } }] },
      { role: 'tool', content: expect.stringMatching(/^\{"recipes"/) },
    ]);
    // "tools": "[]" in the source: no tools key.
    expect(tools.rows.filter((r) => r.tools === undefined).length).toBe(109);

    const kto = await committed('kto');
    expect(kto.rows.map((r) => r.label).filter((l) => l === true)).toHaveLength(150);
    expect(kto.rows[0]).toEqual({ prompt: [{ role: 'user', content: expect.any(String) }], completion: [{ role: 'assistant', content: expect.any(String) }], label: true });

    // identity (91 rows) with 182 rows of alpaca_zh mixed in, seeded.
    const mixed = await committed('identity');
    expect(mixed.rows).toHaveLength(91 + 182);
    expect(run.datasets!.identity!.mix).toMatchObject({ dataset: 'alpaca_zh', ratio: 2, seed: 7, rows: { identity: 91, alpaca_zh: 182 }, generalRows: 1000 });

    // run.json: each source, the sha256 of its bytes, how it was read; and what was committed.
    const source = path.join(LF_DATA!, 'glaive_toolcall_en_demo.json');
    expect(run.datasets!.tools).toMatchObject({
      path: source,
      source,
      sourceSha256: sha(await readFile(source)),
      sourceFormat: { kind: 'llama-factory', datasetInfo: info, entry: 'glaive_toolcall_en_demo', formatting: 'sharegpt', columns: { messages: 'conversations', tools: 'tools' } },
      format: 'chat',
      rows: 300,
      sha256: prepared.datasets.tools!.sha256,
    });
    expect(plan.stages.find((s) => s.id === 'sft')!.dataset).toMatchObject({ format: 'chat', valSize: 0.1 });

    // The jobs' reader takes the committed rows in their canonical formats.
    const python = recordedToolchain()!.python as string;
    const check = [
      ['chat', alpaca.local],
      ['preference', dpo.local],
      ['chat', tools.local],
      ['kto', kto.local],
    ];
    const script = `import sys, json\nfrom refinery_jobs import data\nfor fmt, p in zip(sys.argv[1::2], sys.argv[2::2]):\n    print(fmt, len(data.load_rows(p, fmt, (fmt,))[1]))`;
    const { stdout } = await execa(python, ['-c', script, ...check.flat()], { cwd: path.join(REPO_ROOT, 'jobs') });
    expect(stdout.split('\n')).toEqual(['chat 1000', 'preference 300', 'chat 300', 'kto 300']);

    // And they train: a few steps of each job on the committed files (the demo's tiny model).
    const jobs = path.join(REPO_ROOT, 'jobs');
    const work = await mkdtemp(path.join(tmpdir(), 'refinery-lf-train-'));
    const model = path.join(work, 'tiny');
    const demoData = ['sft', 'preference', 'prompts'].map((f) => path.join(REPO_ROOT, 'demo', 'data', `${f}.jsonl`));
    await execa(python, ['-m', 'refinery_jobs.make_tiny_model', '--out', model, '--data', ...demoData], { cwd: jobs });
    const train = async (kind: string, file: string, format: string, extra: { valSize?: number; template?: string } = {}) => {
      const dir = path.join(work, `${kind}-${path.basename(file, '.jsonl')}`);
      await mkdir(dir, { recursive: true });
      const config = {
        contract: 1, kind, run_id: 'lf', stage_id: kind, output_dir: path.join(dir, 'out'), checkpoint_dir: path.join(dir, 'ck'), resume_from: null,
        inputs: { model }, datasets: { train: file, eval: null, val_size: extra.valSize ?? null }, dataset_format: format,
        finetuning: { type: 'lora' }, hyper: { max_steps: 2, batch_size: 2, max_length: 192, save_steps: 2 }, params: {}, chat_template: extra.template ?? null,
      };
      await writeFile(path.join(dir, 'job.json'), JSON.stringify(config));
      // Without an events fd the contract writes its events to stderr.
      const result = await execa(python, ['-m', `refinery_jobs.${kind}`, '--config', path.join(dir, 'job.json')], { cwd: jobs, reject: false, env: { HF_HUB_OFFLINE: '1' } });
      const events = result.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { event: string; metrics?: Record<string, unknown> });
      expect(result.exitCode, `${kind} on ${file}: ${result.stderr.slice(-2000)}`).toBe(0);
      return events.find((e) => e.event === 'done')!.metrics!;
    };
    // Side by side: most of each job's time is Python importing torch, transformers and TRL.
    const [sft] = await Promise.all([
      train('sft', alpaca.local, 'chat', { valSize: 0.1 }),
      train('dpo', dpo.local, 'preference'),
      train('sft', tools.local, 'chat', { template: 'qwen' }), // a template that renders the tools
      train('kto', kto.local, 'kto'),
    ]);
    expect(sft.eval_loss).toEqual(expect.any(Number)); // val_size's held-out rows, evaluated
  });

  it('refinery validate refuses val_size with an eval_dataset, and names a missing entry file at the entry', async () => {
    const { dir, file } = await writeTestSpec({
      name: 'lf-val',
      template: 'chatml',
      datasets: { chats: { path: 'data/sft.jsonl', format: 'chat', val_size: 0.1 }, gone: { dataset_info: 'lf/dataset_info.json', name: 'gone' } },
      stages: [
        { id: 'sft', kind: 'sft', dataset: 'chats', eval_dataset: { path: 'data/sft.jsonl', format: 'chat' } },
        { id: 'sft2', kind: 'sft', dataset: 'gone' },
      ],
    });
    await mkdir(path.join(dir, 'lf'));
    await writeFile(path.join(dir, 'lf', 'dataset_info.json'), JSON.stringify({ gone: { file_name: 'gone.json', formatting: 'sharegpt' } }));
    const problems = await validateSpec(file).then(
      () => [],
      (err: InputError) => err.problems,
    );
    expect(problems).toEqual([
      expect.objectContaining({ field: 'stages[0].eval_dataset', message: 'stage "sft": its dataset "chats" sets val_size; give either eval_dataset or val_size' }),
      expect.objectContaining({ field: 'datasets.gone.name', message: `dataset "gone": ${path.join(dir, 'lf', 'gone.json')} does not exist` }),
    ]);
  });

  it('a plan from before canonical datasets (no source) commits its file as it is; a new plan commits canonical rows', async () => {
    const prefix = `lf-old-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`;
    const { dir, file } = await writeTestSpec({ name: 'lf-old', template: 'chatml', storage: { prefix }, datasets: { alp: { path: 'data/alpaca.jsonl', format: 'alpaca' } }, stages: [{ id: 'sft', kind: 'sft', dataset: 'alp' }] });
    await writeFile(path.join(dir, 'data', 'alpaca.jsonl'), await readFile(path.join(REPO_ROOT, 'demo', 'data', 'alpaca.jsonl')));
    const plan = planPipeline(await loadSpecFile(file));
    const { source: _s, ...oldDataset } = plan.stages[0]!.dataset!;
    const oldPlan = { ...plan, stages: [{ ...plan.stages[0]!, dataset: { ...oldDataset, format: 'alpaca' as const } }] };
    const control = createControlActivities({ store, jobsVersion: 'test-jobs', codeVersion: 'test' });
    const env = new MockActivityEnvironment({ attempt: 1 });
    env.on('heartbeat', () => undefined);
    const old: PreparedRun = await env.run(control.prepareRun, { runId: 'old-1', plan: oldPlan, requestedBy: 'tester' });
    const bytes = await readFile(path.join(dir, 'data', 'alpaca.jsonl'));
    expect(old.datasets.alp!.sha256).toBe(sha(bytes));
    const now: PreparedRun = await env.run(control.prepareRun, { runId: 'new-1', plan, requestedBy: 'tester' });
    expect(now.datasets.alp!.sha256).not.toBe(sha(bytes));
    const run = (await store.getJson<RunManifest>(`${layout.run(prefix, 'new-1')}/run.json`))!;
    expect(run.datasets!.alp).toMatchObject({ sourceSha256: sha(bytes), sourceFormat: { kind: 'refinery', format: 'alpaca' }, format: 'chat', rows: 25 });
  });
});
