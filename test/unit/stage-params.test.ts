// Every stage parameter typed and checked before anything runs (spec/stage-params.ts): a typo or an
// out-of-range value in any stage's params or hyper is refused with file:line:field when the spec is
// read, and the job config the activity writes validates against the schema the Python jobs read.
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { jobConfigFor } from '../../bench/lib/jobs.js';
import { InputError, type InputProblem } from '../../spec/errors.js';
import { JOB_CONFIG_SCHEMA_FILE } from '../../spec/generate-docs.js';
import { JobConfigSchema } from '../../spec/job-config.js';
import { loadSpecFile, parseSpec } from '../../spec/load.js';
import { planPipeline } from '../../spec/plan.js';
import { HYPER_DEFAULTS, STAGE_PARAMS } from '../../spec/stage-params.js';
import { StageKind } from '../../spec/schema.js';

function problems(text: string): InputProblem[] {
  try {
    planPipeline(parseSpec(text, '/specs/pipeline.yaml', 'pipeline.yaml'));
  } catch (e) {
    expect(e).toBeInstanceOf(InputError);
    return (e as InputError).problems;
  }
  throw new Error('expected the spec to be refused');
}

const stage = (lines: string) => `name: p\nbase_model: ./m\nstages:\n  - id: rl\n    kind: ppo\n    policy: base\n    reward_model: rm\n    dataset: {path: p.jsonl, format: prompts}\n${lines}  - id: rm\n    kind: reward\n    dataset: {path: q.jsonl, format: preference}\n`;

describe('stage params by kind', () => {
  it('a typo in a ppo param is refused at its line, before any stage runs', () => {
    expect(problems(stage('    params:\n      kl_coeff: 0.1\n'))).toEqual([
      { file: 'pipeline.yaml', line: 10, field: 'stages[0].params.kl_coeff', message: 'unknown key' },
    ]);
  });

  it('an out-of-range or mistyped param names its field and the bound', () => {
    const found = problems(stage('    params:\n      gamma: 1.5\n      ppo_epochs: two\n')).sort((a, b) => (a.line ?? 0) - (b.line ?? 0));
    expect(found).toEqual([
      expect.objectContaining({ line: 10, field: 'stages[0].params.gamma', message: expect.stringContaining('<=1') }),
      expect.objectContaining({ line: 11, field: 'stages[0].params.ppo_epochs', message: 'expected number' }),
    ]);
  });

  it('a param of another kind is refused too (beta is dpo\'s, not sft\'s)', () => {
    const text = 'name: p\nbase_model: ./m\nstages:\n  - id: s\n    kind: sft\n    dataset: {path: c.jsonl, format: chat}\n    params: {beta: 0.1}\n';
    expect(problems(text)).toEqual([expect.objectContaining({ line: 7, field: 'stages[0].params.beta', message: 'unknown key' })]);
  });

  it('each kind\'s defaults are in the plan, as the docs list them', () => {
    const plan = planPipeline(parseSpec(stage(''), '/specs/pipeline.yaml'));
    expect(plan.stages.find((s) => s.id === 'rl')!.params).toEqual(STAGE_PARAMS.ppo.parse({}));
    expect(plan.stages.find((s) => s.id === 'rl')!.params).toMatchObject({ kl_coef: 0.05, gamma: 1, lam: 0.95, clip_range: 0.2 });
  });
});

describe('hyper: the training arguments', () => {
  it('a TrainingArguments name gets a pointer to Refinery\'s', () => {
    expect(problems(stage('    hyper:\n      lr_scheduler_type: cosine\n      gradient_accumulation_steps: 4\n'))).toEqual([
      expect.objectContaining({
        line: 10,
        field: 'stages[0].hyper.lr_scheduler_type',
        message: expect.stringMatching(/lr_scheduler_type: Refinery's is scheduler; .*gradient_accumulation_steps: Refinery's is gradient_accumulation/),
      }),
    ]);
  });

  it('a field the kind\'s job does not use is refused, not ignored', () => {
    expect(problems(stage('    hyper:\n      optim: adafactor\n'))).toEqual([
      expect.objectContaining({ line: 10, field: 'stages[0].hyper.optim', message: 'the ppo job does not use hyper.optim' }),
    ]);
    const merge = 'name: p\nbase_model: ./m\nstages:\n  - id: s\n    kind: sft\n    dataset: {path: c.jsonl, format: chat}\n  - id: m\n    kind: merge\n    from: s\n    hyper: {learning_rate: 0.1}\n';
    expect(problems(merge)).toEqual([expect.objectContaining({ line: 10, field: 'stages[1].hyper.learning_rate', message: 'a merge stage does not train and takes no hyper' })]);
  });

  it('defaults.hyper applies where the kind uses a field and is dropped where it does not', () => {
    const text = 'name: p\nbase_model: ./m\ndefaults:\n  hyper: {optim: adafactor, max_grad_norm: 0.3}\nstages:\n  - id: s\n    kind: sft\n    dataset: {path: c.jsonl, format: chat}\n  - id: rl\n    kind: ppo\n    policy: s\n    reward_model: rm\n    dataset: {path: p.jsonl, format: prompts}\n  - id: rm\n    kind: reward\n    dataset: {path: q.jsonl, format: preference}\n';
    const plan = planPipeline(parseSpec(text, '/specs/pipeline.yaml'));
    expect(plan.stages.find((s) => s.id === 's')!.hyper).toMatchObject({ optim: 'adafactor', max_grad_norm: 0.3, learning_rate: HYPER_DEFAULTS.learning_rate });
    expect(plan.stages.find((s) => s.id === 'rl')!.hyper.optim).toBeUndefined();
    expect(plan.stages.find((s) => s.id === 'rl')!.hyper.max_grad_norm).toBe(0.3);
  });
});

describe('the job config schema', () => {
  it('the config the activity writes for every stage of the demo pipelines validates against it', async () => {
    for (const file of ['demo/pipeline.yaml', 'demo/pipeline-dpo.yaml']) {
      const plan = planPipeline(await loadSpecFile(file));
      for (const s of plan.stages) {
        const config = jobConfigFor(s, { output: '/w/out', checkpoints: '/w/ck' }, { model: '/w/model' }, { train: s.dataset ? '/w/data.jsonl' : null, eval: null });
        const parsed = JobConfigSchema.safeParse(config);
        expect(parsed.success, `${file} ${s.id}: ${parsed.error?.message}`).toBe(true);
        expect(STAGE_PARAMS[s.kind].safeParse(config.params).success, `${s.id} params`).toBe(true);
      }
    }
  });

  it('the generated file holds every kind\'s params with their defaults, and a kind check per kind', async () => {
    const schema = JSON.parse(await readFile(JOB_CONFIG_SCHEMA_FILE, 'utf8')) as { $defs: Record<string, { properties: Record<string, { default?: unknown }> }>; allOf: unknown[] };
    for (const kind of StageKind.options) expect(schema.$defs[`params_${kind}`], kind).toBeDefined();
    expect(schema.allOf).toHaveLength(StageKind.options.length);
    expect(schema.$defs.params_ppo!.properties.kl_coef!.default).toBe(0.05);
  });
});
