// The planner (spec/plan.ts): defaults, references, kind rules, cycles and a topological order.
// Semantic errors carry the spec's file, a line and the document path, like schema errors.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseDuration } from '../../spec/duration.js';
import { InputError, type InputProblem } from '../../spec/errors.js';
import { loadSpecFile, parseSpec } from '../../spec/load.js';
import { DEFAULT_TASK_QUEUE, planPipeline, resolvePath, topologicalOrder, type PipelinePlan, type PlannedStage } from '../../spec/plan.js';
import { HYPER_DEFAULTS } from '../../spec/stage-params.js';

const BAD_SPECS = fileURLToPath(new URL('../fixtures/bad-specs/', import.meta.url));
const SPEC_FILE = '/specs/demo/pipeline.yaml';

function plan(text: string): PipelinePlan {
  return planPipeline(parseSpec(text, SPEC_FILE));
}

function planProblems(text: string): InputProblem[] {
  const loaded = parseSpec(text, SPEC_FILE); // must pass the schema: these are planner errors
  try {
    planPipeline(loaded);
  } catch (e) {
    expect(e).toBeInstanceOf(InputError);
    return (e as InputError).problems;
  }
  throw new Error('expected the planner to refuse the spec');
}

/** Problems of a spec the schema or the planner refuses. */
function specProblems(text: string): InputProblem[] {
  try {
    planPipeline(parseSpec(text, SPEC_FILE));
  } catch (e) {
    expect(e).toBeInstanceOf(InputError);
    return (e as InputError).problems;
  }
  throw new Error('expected the spec to be refused');
}

async function fixtureProblems(name: string): Promise<InputProblem[]> {
  const file = path.join(BAD_SPECS, name);
  const loaded = await loadSpecFile(file); // schema-valid: only the planner can refuse these
  const error = (() => {
    try {
      planPipeline(loaded);
      return undefined;
    } catch (e) {
      return e;
    }
  })();
  expect(error, `${name} should not plan`).toBeInstanceOf(InputError);
  const problems = (error as InputError).problems;
  for (const p of problems) expect(p.file).toBe(file);
  return problems;
}

const stageOf = (p: PipelinePlan, id: string): PlannedStage => {
  const s = p.stages.find((x) => x.id === id);
  if (!s) throw new Error(`no stage ${id}`);
  return s;
};

// Stages deliberately out of order; every kind of reference and default is exercised.
const FULL = `name: demo
base_model: ./models/base
storage: { prefix: team/refinery }
defaults:
  hyper: { learning_rate: 0.0002, batch_size: 4, max_length: 256 }
  resources: { gpus: 1, task_queue: gpu-a100 }
  retry: { maximum_attempts: 5, initial_interval: 10s }
  timeouts: { heartbeat: 2m, stall: 15m }
  finetuning: { lora: { r: 16 } }
datasets:
  chats: { path: data/sft.jsonl, format: chat }
  prefs: { path: s3://corpus/prefs.jsonl, format: preference }
  prompts: { path: data/prompts.jsonl, format: prompts }
stages:
  - id: export
    kind: gguf
    from: merged
    params: { exporter: llama.cpp, types: [q4_k_m] }
  - id: merged
    kind: merge
    from: ppo
  - id: ppo
    kind: ppo
    policy: dpo
    reward_model: rm
    dataset: prompts
    hyper: { max_steps: 20 }
  - id: dpo
    kind: dpo
    from: sft
    dataset: prefs
    hyper: { learning_rate: 0.00001 }
    gate: { metrics: [{ metric: eval_loss, max: 2 }], approval: {} }
  - id: rm
    kind: reward
    dataset: prefs
    finetuning: { type: full }
    resources: { gpus: 2 }
  - id: sft
    kind: sft
    dataset: chats
    eval_dataset: { path: data/sft_eval.jsonl, format: chat }
    hyper: { max_steps: 40 }
    timeouts: { start_to_close: 1d }
    retry: { maximum_interval: 30s }
  - id: judge
    kind: eval
    from: sft
    reward_model: rm
    dataset: chats
`;

describe('a valid spec', () => {
  const p = plan(FULL);

  it('is planned in a stable topological order', () => {
    expect(p.stages.map((s) => s.id)).toEqual(['rm', 'sft', 'dpo', 'judge', 'ppo', 'merged', 'export']);
    const seen = new Set<string>();
    for (const s of p.stages) {
      for (const d of s.deps) expect(seen.has(d), `${s.id} after ${d}`).toBe(true);
      seen.add(s.id);
    }
  });

  it('resolves model inputs and dependencies', () => {
    expect(stageOf(p, 'sft')).toMatchObject({ deps: [], inputs: { model: { base: true } } });
    expect(stageOf(p, 'rm')).toMatchObject({ deps: [], inputs: { model: { base: true } } });
    expect(stageOf(p, 'dpo')).toMatchObject({ deps: ['sft'], inputs: { model: { stage: 'sft' } } });
    expect(stageOf(p, 'ppo').deps).toEqual(['dpo', 'rm']);
    expect(stageOf(p, 'ppo').inputs).toEqual({ model: { stage: 'dpo' }, reward_model: { stage: 'rm' } });
    expect(stageOf(p, 'judge').inputs).toEqual({ model: { stage: 'sft' }, reward_model: { stage: 'rm' } });
    expect(stageOf(p, 'merged').inputs).toEqual({ model: { stage: 'ppo' } });
    expect(stageOf(p, 'export').deps).toEqual(['merged']);
  });

  it('merges defaults.hyper with stage.hyper (the stage wins) over the documented defaults; num_epochs 1 for training only', () => {
    const withDefaults = (own: Record<string, unknown>) => {
      const all: Record<string, unknown> = { ...HYPER_DEFAULTS, ...own };
      return Object.fromEntries(Object.entries(all).filter(([, v]) => v !== null));
    };
    expect(stageOf(p, 'sft').hyper).toEqual(withDefaults({ learning_rate: 0.0002, batch_size: 4, max_length: 256, max_steps: 40 }));
    expect(stageOf(p, 'dpo').hyper).toEqual(withDefaults({ learning_rate: 0.00001, batch_size: 4, max_length: 256, num_epochs: 1 }));
    const { optim: _o, gradient_checkpointing: _g, eval_steps: _e, ...ppoFields } = withDefaults({ learning_rate: 0.0002, batch_size: 4, max_length: 256, max_steps: 20 });
    expect(stageOf(p, 'ppo').hyper).toEqual(ppoFields);
    expect(stageOf(p, 'merged').hyper).toEqual({});
    expect(stageOf(p, 'judge').hyper.num_epochs).toBeUndefined();
    expect(stageOf(p, 'judge').hyper.batch_size).toBe(4);
  });

  it('merges resources, retry and timeouts, parsing durations to milliseconds', () => {
    const sft = stageOf(p, 'sft');
    expect(sft.gpus).toBe(1);
    expect(sft.taskQueue).toBe('gpu-a100');
    expect(stageOf(p, 'rm').gpus).toBe(2);
    expect(stageOf(p, 'rm').taskQueue).toBe('gpu-a100');
    expect(sft.retry).toEqual({ maximumAttempts: 5, initialIntervalMs: 10_000, maximumIntervalMs: 30_000, backoffCoefficient: 2, infrastructureAttempts: 20, oomMinBatchSize: 1 });
    expect(stageOf(p, 'dpo').retry).toEqual({ maximumAttempts: 5, initialIntervalMs: 10_000, maximumIntervalMs: 300_000, backoffCoefficient: 2, infrastructureAttempts: 20, oomMinBatchSize: 1 });
    expect(sft.timeouts).toEqual({ heartbeatMs: 120_000, stallMs: 900_000, startToCloseMs: 86_400_000 });
    expect(stageOf(p, 'export').timeouts).toEqual({ heartbeatMs: 120_000, stallMs: 900_000, startToCloseMs: 7 * 86_400_000 });
  });

  it('marks LoRA training stages as producing an adapter, full fine-tuning and merge/gguf/eval not', () => {
    const adapters = Object.fromEntries(p.stages.map((s) => [s.id, s.producesAdapter]));
    expect(adapters).toEqual({ rm: false, sft: true, dpo: true, judge: false, ppo: true, merged: false, export: false });
  });

  it('applies finetuning defaults under defaults.finetuning', () => {
    expect(stageOf(p, 'sft').finetuning).toEqual({ type: 'lora', lora: { r: 16, alpha: 16, dropout: 0.05, target_modules: 'all-linear' } });
    expect(stageOf(p, 'rm').finetuning.type).toBe('full');
    expect(stageOf(p, 'rm').finetuning.lora.r).toBe(16);
  });

  it('resolves dataset paths against the spec folder and leaves s3:// alone', () => {
    expect(stageOf(p, 'sft').dataset).toEqual({ name: 'chats', path: '/specs/demo/data/sft.jsonl', format: 'chat', source: { kind: 'refinery', format: 'chat' } });
    expect(stageOf(p, 'sft').evalDataset).toMatchObject({ path: '/specs/demo/data/sft_eval.jsonl', format: 'chat' });
    expect(stageOf(p, 'dpo').dataset).toEqual({ name: 'prefs', path: 's3://corpus/prefs.jsonl', format: 'preference', source: { kind: 'refinery', format: 'preference' } });
    expect(stageOf(p, 'merged').dataset).toBeUndefined();
    expect(p.baseModel).toBe('/specs/demo/models/base');
  });

  it('carries gates, params, storage and the spec hash', () => {
    expect(stageOf(p, 'dpo').gate).toEqual({ metrics: [{ metric: 'eval_loss', max: 2 }], approvalTimeoutMs: 24 * 3_600_000 });
    expect(stageOf(p, 'sft').gate).toBeUndefined();
    expect(stageOf(p, 'export').params).toEqual({ exporter: 'llama.cpp', types: ['q4_k_m'], check_new_tokens: 16 });
    expect(stageOf(p, 'sft').params).toEqual({ packing: false, assistant_only_loss: true });
    expect(p.name).toBe('demo');
    expect(p.storage).toEqual({ bucket: undefined, prefix: 'team/refinery' });
    expect(p.specSha256).toBe(parseSpec(FULL, SPEC_FILE).sha256);
    expect(p.specSha256).toMatch(/^[0-9a-f]{64}$/);
  });

  it('a minimal spec gets the documented defaults', () => {
    const m = plan('name: mini\nbase_model: s3://models/base\nstages:\n  - id: sft\n    kind: sft\n    dataset: { path: d.jsonl, format: alpaca }\n');
    expect(m.baseModel).toBe('s3://models/base');
    expect(m.storage).toEqual({ bucket: undefined, prefix: 'refinery' });
    expect(m.stages).toHaveLength(1);
    expect(m.stages[0]).toMatchObject({
      gpus: 0,
      taskQueue: DEFAULT_TASK_QUEUE,
      hyper: { num_epochs: 1 },
      finetuning: { type: 'lora', lora: { r: 8, alpha: 16, dropout: 0.05, target_modules: 'all-linear' } },
      retry: { maximumAttempts: 3, initialIntervalMs: 5_000, maximumIntervalMs: 300_000, backoffCoefficient: 2 },
      timeouts: { heartbeatMs: 60_000, stallMs: 600_000, startToCloseMs: 7 * 86_400_000 },
      producesAdapter: true,
      // An alpaca file is read as alpaca and committed in the canonical chat form.
      dataset: { path: '/specs/demo/d.jsonl', format: 'chat', source: { kind: 'refinery', format: 'alpaca' } },
    });
    expect(DEFAULT_TASK_QUEUE).toBe('refinery-gpu');
  });

  it('a full fine-tuning stage produces no adapter; qlora does', () => {
    const text = (type: string) =>
      `name: ft\nbase_model: ./b\nstages:\n  - id: cpt\n    kind: cpt\n    dataset: { path: t.jsonl, format: text }\n    finetuning: { type: ${type} }\n`;
    expect(plan(text('full')).stages[0]!.producesAdapter).toBe(false);
    expect(plan(text('qlora')).stages[0]!.producesAdapter).toBe(true);
    expect(plan(text('lora')).stages[0]!.producesAdapter).toBe(true);
  });
});

describe('finetuning: a stage inherits every field it does not set', () => {
  const spec = (defaults: string, own: string) => `name: ft
base_model: ./b
defaults:
  finetuning: ${defaults}
datasets:
  chats: { path: d.jsonl, format: chat }
stages:
  - id: sft
    kind: sft
    dataset: chats
    finetuning: ${own}
  - id: merged
    kind: merge
    from: sft
`;

  it('setting only lora options keeps the default type', () => {
    const loaded = parseSpec(spec('{ type: full }', '{ lora: { r: 4 } }'), SPEC_FILE);
    const error = (() => {
      try {
        planPipeline(loaded);
      } catch (e) {
        return e as InputError;
      }
      return undefined;
    })();
    // sft is a full fine-tune (inherited), so there is no adapter to merge.
    expect(error).toBeInstanceOf(InputError);
    expect(error!.problems).toEqual([expect.objectContaining({ field: 'stages[1].from', message: expect.stringMatching(/trains the full model/) })]);
  });

  it('setting only the type keeps the default lora options', () => {
    const p = plan(spec('{ lora: { r: 32, dropout: 0.1 } }', '{ type: qlora }'));
    expect(stageOf(p, 'sft').finetuning).toEqual({ type: 'qlora', lora: { r: 32, alpha: 16, dropout: 0.1, target_modules: 'all-linear' } });
  });

  it('lora options merge field by field', () => {
    const p = plan(spec('{ lora: { r: 32, target_modules: [q_proj, v_proj] } }', '{ lora: { alpha: 64 } }'));
    expect(stageOf(p, 'sft').finetuning).toEqual({ type: 'lora', lora: { r: 32, alpha: 64, dropout: 0.05, target_modules: ['q_proj', 'v_proj'] } });
    expect(stageOf(p, 'sft').producesAdapter).toBe(true);
  });
});

describe('planner errors name the line and the field', () => {
  it('duplicate ids', async () => {
    expect(await fixtureProblems('duplicate-ids.yaml')).toEqual([
      expect.objectContaining({ line: 10, field: 'stages[1].id', message: 'duplicate stage id "sft" (also stages[0])' }),
    ]);
  });

  it('"base" is reserved', () => {
    expect(planProblems('name: a\nbase_model: ./b\nstages:\n  - id: base\n    kind: gguf\n')).toEqual([
      expect.objectContaining({ line: 4, field: 'stages[0].id', message: '"base" is reserved for the base model' }),
    ]);
  });

  it('dangling from, policy and reward_model references, all at once', async () => {
    const problems = await fixtureProblems('dangling-refs.yaml');
    expect(problems).toHaveLength(3);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ line: 11, field: 'stages[0].from', message: 'no stage with id "pretrain"' }),
        expect.objectContaining({ line: 15, field: 'stages[1].policy', message: 'no stage with id "sftt"' }),
        expect.objectContaining({ line: 16, field: 'stages[1].reward_model', message: 'no stage with id "rm"' }),
      ]),
    );
  });

  it('a cycle is reported once, listing only the stages in it', async () => {
    const problems = await fixtureProblems('cycle.yaml');
    expect(problems).toEqual([expect.objectContaining({ line: 13, field: 'stages[2]', message: 'dependency cycle: a -> c -> b -> a' })]);
    const error = await loadSpecFile(path.join(BAD_SPECS, 'cycle.yaml')).then((l) => planPipeline(l)).catch((e: unknown) => e as Error);
    expect((error as Error).message).not.toMatch(/export|base-sft/);
  });

  it('a stage that builds on itself is a cycle', () => {
    expect(planProblems('name: a\nbase_model: ./b\nstages:\n  - id: m\n    kind: merge\n    from: m\n')).toEqual([
      expect.objectContaining({ line: 4, field: 'stages[0]', message: 'dependency cycle: m -> m' }),
    ]);
  });

  it('reward_model must be a reward stage', async () => {
    expect(await fixtureProblems('reward-not-reward.yaml')).toEqual([
      expect.objectContaining({ line: 15, field: 'stages[1].reward_model', message: 'stage "sft" is a sft stage, expected a reward stage' }),
    ]);
    const base = planProblems(
      'name: a\nbase_model: ./b\nstages:\n  - id: ppo\n    kind: ppo\n    dataset: { path: p.jsonl, format: prompts }\n    reward_model: base\n',
    );
    expect(base).toEqual([expect.objectContaining({ line: 7, field: 'stages[0].reward_model', message: 'must name a reward stage, not "base"' })]);
  });

  it('a dataset of the wrong format for the kind', async () => {
    expect(await fixtureProblems('wrong-format.yaml')).toEqual([
      expect.objectContaining({ line: 12, field: 'stages[1].dataset', message: 'a dpo stage reads preference data, got "chat"' }),
    ]);
  });

  it.each([
    ['cpt', 'chat', 'text'],
    ['sft', 'preference', 'chat | alpaca | sharegpt'],
    ['reward', 'prompts', 'preference'],
    ['grpo', 'text', 'prompts'],
    ['eval', 'kto', 'chat | alpaca | sharegpt | text | preference | prompts'],
  ])('a %s stage refuses %s data', (kind, format, allowed) => {
    const extra = kind === 'grpo' ? '\n    reward_model: rm\n  - id: rm\n    kind: reward\n    dataset: { path: p.jsonl, format: preference }' : '';
    const problems = planProblems(`name: a\nbase_model: ./b\nstages:\n  - id: s\n    kind: ${kind}\n    dataset: { path: x.jsonl, format: ${format} }${extra}\n`);
    expect(problems).toEqual([expect.objectContaining({ line: 6, field: 'stages[0].dataset', message: `a ${kind} stage reads ${allowed} data, got "${format}"` })]);
  });

  it('an sft stage without a dataset', async () => {
    expect(await fixtureProblems('sft-without-dataset.yaml')).toEqual([
      expect.objectContaining({ line: 5, field: 'stages[0].dataset', message: 'required for a sft stage' }),
    ]);
  });

  it('an unknown dataset name', () => {
    expect(planProblems('name: a\nbase_model: ./b\nstages:\n  - id: s\n    kind: sft\n    dataset: chatz\n')).toEqual([
      expect.objectContaining({ line: 6, field: 'stages[0].dataset', message: 'no dataset named "chatz" in datasets' }),
    ]);
  });

  it('merge from a full fine-tuning stage', async () => {
    expect(await fixtureProblems('merge-from-full.yaml')).toEqual([
      expect.objectContaining({ line: 15, field: 'stages[1].from', message: 'stage "sft" trains the full model: there is no adapter to merge' }),
    ]);
  });

  it.each([
    ['merge without from', '  - id: m\n    kind: merge\n', 'stages[0].from', 4, 'required for a merge stage'],
    ['ppo without reward_model', '  - id: p\n    kind: ppo\n    dataset: { path: p.jsonl, format: prompts }\n', 'stages[0].reward_model', 4, 'required for a ppo stage'],
    ['gguf with a dataset', '  - id: g\n    kind: gguf\n    dataset: { path: t.jsonl, format: text }\n', 'stages[0].dataset', 6, 'a gguf stage takes no dataset'],
    ['policy on an sft stage', '  - id: s\n    kind: sft\n    dataset: { path: c.jsonl, format: chat }\n    policy: base\n', 'stages[0].policy', 7, 'only ppo and grpo stages take a policy'],
    ['reward_model on a dpo stage', '  - id: r\n    kind: reward\n    dataset: { path: p.jsonl, format: preference }\n  - id: d\n    kind: dpo\n    dataset: { path: p.jsonl, format: preference }\n    reward_model: r\n', 'stages[1].reward_model', 10, 'a dpo stage takes no reward_model'],
    ['from on top of an eval stage', '  - id: e\n    kind: eval\n    dataset: { path: c.jsonl, format: chat }\n  - id: m\n    kind: merge\n    from: e\n', 'stages[1].from', 9, 'stage "e" (eval) produces no model to build on'],
  ])('%s', (_name, stages, field, line, message) => {
    const problems = planProblems(`name: a\nbase_model: ./b\nstages:\n${stages}`);
    expect(problems).toContainEqual(expect.objectContaining({ field, line, message }));
  });

  it('eval baselines and references, and the promote step: planned with their defaults', () => {
    const p = plan(
      'name: nightly\nbase_model: ./b\nstages:\n  - id: sft\n    kind: sft\n    dataset: { path: c.jsonl, format: chat }\n' +
        '  - id: ev\n    kind: eval\n    from: sft\n    reference: base\n    dataset: { path: q.jsonl, format: prompts }\n    baseline: {}\n' +
        'promote: { stage: sft }\n',
    );
    expect(stageOf(p, 'ev')).toMatchObject({ baseline: { model: 'nightly', alias: 'production', ifMissing: 'fail' }, inputs: { model: { stage: 'sft' }, reference: { base: true } }, deps: ['sft'] });
    expect(p.promote).toEqual({ stage: 'sft', model: 'nightly', alias: 'production' });
    const q = plan('name: n\nbase_model: ./b\nstages:\n  - id: sft\n    kind: sft\n    dataset: { path: c.jsonl, format: chat }\n  - id: ev\n    kind: eval\n    from: sft\n    reference: sft\n    dataset: { path: q.jsonl, format: prompts }\n    baseline: { model: chat-model, alias: candidate, if_missing: pass }\npromote: { stage: sft, model: chat-model, alias: candidate, reason: nightly }\n');
    expect(stageOf(q, 'ev').baseline).toEqual({ model: 'chat-model', alias: 'candidate', ifMissing: 'pass' });
    expect(q.promote).toEqual({ stage: 'sft', model: 'chat-model', alias: 'candidate', reason: 'nightly' });
  });

  it('a baseline or reference outside eval, KL on data that has no prompts, promoting what is not a model: refused with line and field', () => {
    const problems = planProblems(
      'name: a\nbase_model: ./b\nstages:\n  - id: sft\n    kind: sft\n    dataset: { path: c.jsonl, format: chat }\n    baseline: {}\n    reference: base\n' +
        '  - id: ev\n    kind: eval\n    from: sft\n    reference: sft\n    dataset: { path: c.jsonl, format: chat }\n' +
        'promote: { stage: ev }\n',
    );
    expect(problems).toEqual([
      expect.objectContaining({ line: 7, field: 'stages[0].baseline', message: 'only eval stages take a baseline (a sft stage trains)' }),
      expect.objectContaining({ line: 8, field: 'stages[0].reference', message: 'only eval stages take a reference' }),
      expect.objectContaining({ line: 12, field: 'stages[1].reference', message: 'KL from a reference is measured on answers to prompts: this stage reads chat data' }),
      expect.objectContaining({ line: 14, field: 'promote.stage', message: 'stage "ev" (eval) produces no model to promote' }),
    ]);
    expect(planProblems('name: a\nbase_model: ./b\nstages:\n  - id: s\n    kind: sft\n    dataset: { path: c.jsonl, format: chat }\npromote: { stage: nope }\n')).toEqual([
      expect.objectContaining({ line: 7, field: 'promote.stage', message: 'no stage with id "nope"' }),
    ]);
    expect(specProblems('name: a\nbase_model: ./b\nstages:\n  - id: s\n    kind: eval\n    dataset: { path: c.jsonl, format: chat }\n    baseline: { alias: Prod }\n')).toEqual([
      expect.objectContaining({ line: 7, field: 'stages[0].baseline.alias' }),
    ]);
  });

  it('ppo with both from and policy', () => {
    const problems = planProblems(
      'name: a\nbase_model: ./b\nstages:\n  - id: rm\n    kind: reward\n    dataset: { path: p.jsonl, format: preference }\n  - id: p\n    kind: ppo\n    dataset: { path: q.jsonl, format: prompts }\n    reward_model: rm\n    from: base\n    policy: base\n',
    );
    expect(problems).toEqual([expect.objectContaining({ line: 12, field: 'stages[1].policy', message: 'give either "from" or "policy", not both' })]);
  });

  it('gguf params: exporter, the types that exporter writes, no unknown keys (before anything runs)', () => {
    const gguf = (params: string) => specProblems(`name: a\nbase_model: ./b\nstages:\n  - id: g\n    kind: gguf\n    params:\n${params}`);
    expect(gguf('      exporter: llamacpp\n')).toEqual([
      expect.objectContaining({ line: 7, field: 'stages[0].params.exporter', message: 'expected one of "gguf-py" | "llama.cpp"' }),
    ]);
    expect(gguf('      types: [f16, q4_k_m]\n')).toEqual([
      expect.objectContaining({ line: 7, field: 'stages[0].params.types[1]', message: expect.stringContaining('with exporter "gguf-py", got "q4_k_m"') }),
    ]);
    expect(gguf('      exporter: llama.cpp\n      types:\n        - f16\n        - q4_K_M\n')).toEqual([
      expect.objectContaining({ line: 10, field: 'stages[0].params.types[1]', message: expect.stringContaining('"q4_k_m" | "q5_k_s"') }),
    ]);
    expect(gguf('      types: []\n')).toEqual([expect.objectContaining({ field: 'stages[0].params.types', message: 'expected a non-empty array of GGUF types' })]);
    expect(gguf('      exporter: llama.cpp\n      type: [f16]\n')).toEqual([
      expect.objectContaining({ line: 8, field: 'stages[0].params.type', message: 'unknown key' }),
    ]);
    const ok = plan('name: a\nbase_model: ./b\nstages:\n  - id: g\n    kind: gguf\n    params: { exporter: llama.cpp, types: [f16, q8_0, q4_k_m, q6_k] }\n');
    expect(stageOf(ok, 'g').params).toEqual({ exporter: 'llama.cpp', types: ['f16', 'q8_0', 'q4_k_m', 'q6_k'], check_new_tokens: 16 });
  });

  it('every problem is formatted as file:line: field: message', async () => {
    const file = path.join(BAD_SPECS, 'dangling-refs.yaml');
    const error = await loadSpecFile(file).then((l) => planPipeline(l)).catch((e: unknown) => e as Error);
    for (const line of (error as Error).message.split('\n')) expect(line).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+: stages\\[\\d\\]\\.\\w+: `));
  });
});

describe('topologicalOrder', () => {
  it('is stable: ready stages keep spec order', () => {
    const order = topologicalOrder(
      [
        { id: 'c', deps: ['a'] },
        { id: 'a', deps: [] },
        { id: 'b', deps: [] },
        { id: 'd', deps: ['c', 'b'] },
      ],
      () => {
        throw new Error('no cycle here');
      },
    );
    expect(order).toEqual(['a', 'b', 'c', 'd']);
  });

  it('ignores deps outside the list and reports one cycle', () => {
    const cycles: string[][] = [];
    const order = topologicalOrder(
      [
        { id: 'x', deps: ['missing'] },
        { id: 'p', deps: ['q'] },
        { id: 'q', deps: ['p'] },
      ],
      (c) => cycles.push(c),
    );
    expect(order).toEqual(['x']);
    expect(cycles).toEqual([['p', 'q']]);
  });
});

describe('durations and paths', () => {
  it.each([
    ['250ms', 250],
    ['30s', 30_000],
    ['5m', 300_000],
    ['2h', 7_200_000],
    ['7d', 604_800_000],
    [1500, 1500],
  ] as const)('parseDuration(%j) = %d', (input, ms) => {
    expect(parseDuration(input)).toBe(ms);
  });

  it.each(['5', '5 m', '1.5h', '-5s', '5M', 'h', ''])('parseDuration refuses %j', (input) => {
    expect(() => parseDuration(input)).toThrow(/invalid duration/);
  });

  it('resolvePath', () => {
    expect(resolvePath('/a/b/pipeline.yaml', 'data/x.jsonl')).toBe('/a/b/data/x.jsonl');
    expect(resolvePath('/a/b/pipeline.yaml', '/abs/x.jsonl')).toBe('/abs/x.jsonl');
    expect(resolvePath('/a/b/pipeline.yaml', 's3://bkt/x.jsonl')).toBe('s3://bkt/x.jsonl');
  });
});
