/**
 * Turns a schema-valid spec into a plan: stages with defaults applied, inputs resolved and checked
 * (no dangling references, no cycles, the right kind of input for each stage), in a topological
 * order. Pure: no I/O, so the same function serves the CLI, the activities and the tests.
 */
import path from 'node:path';
import { isModelName } from './model-name.js';
import { InputError, type InputProblem } from './errors.js';
import type { LoadedSpec } from './load.js';
import type { DatasetFormat, Finetuning, Hyper, PipelineSpec, Stage, StageKind } from './schema.js';
import { Finetuning as FinetuningSchema } from './schema.js';
import { parseDuration } from './duration.js';
import { planDataset } from './dataset-info.js';
import { HYPER_DEFAULTS, HYPER_UNUSED, STAGE_PARAMS, type HyperField } from './stage-params.js';
import { DEFAULT_INFRASTRUCTURE_ATTEMPTS, type ModelRef, type PipelinePlan, type PlannedDataset, type PlannedStage } from './plan-types.js';

export type { ModelRef, PipelinePlan, PlannedDataset, PlannedStage } from './plan-types.js';

/** Which dataset formats each kind reads, and which model inputs it needs. */
const KIND_RULES: Record<StageKind, { formats: DatasetFormat[] | null; needs: ('from' | 'policy' | 'reward_model')[] }> = {
  cpt: { formats: ['text'], needs: [] },
  sft: { formats: ['chat', 'alpaca', 'sharegpt'], needs: [] },
  reward: { formats: ['preference'], needs: [] },
  dpo: { formats: ['preference'], needs: [] },
  ppo: { formats: ['prompts'], needs: ['reward_model'] },
  grpo: { formats: ['prompts'], needs: ['reward_model'] },
  kto: { formats: ['kto'], needs: [] },
  orpo: { formats: ['preference'], needs: [] },
  merge: { formats: null, needs: ['from'] },
  gguf: { formats: null, needs: [] },
  eval: { formats: ['chat', 'alpaca', 'sharegpt', 'text', 'preference', 'prompts'], needs: [] },
};

const TRAINING_KINDS: ReadonlySet<StageKind> = new Set(['cpt', 'sft', 'reward', 'ppo', 'dpo', 'grpo', 'kto', 'orpo']);

export const DEFAULT_TASK_QUEUE = 'refinery-gpu';
const DEFAULT_HEARTBEAT_MS = 60_000;
const DEFAULT_STALL_MS = 10 * 60_000;
const DEFAULT_START_TO_CLOSE_MS = 7 * 24 * 3600_000;

export function planPipeline(loaded: Pick<LoadedSpec, 'spec' | 'file' | 'sha256' | 'lineOf'>): PipelinePlan {
  const { spec } = loaded;
  const file = loaded.file;
  const problems: InputProblem[] = [];
  const problem = (p: (string | number)[], message: string) =>
    problems.push({ file, line: loaded.lineOf(p), field: fieldOf(p), message });

  const ids = new Map<string, number>();
  spec.stages.forEach((s, i) => {
    if (s.id === 'base') problem(['stages', i, 'id'], '"base" is reserved for the base model');
    if (ids.has(s.id)) problem(['stages', i, 'id'], `duplicate stage id "${s.id}" (also stages[${ids.get(s.id)}])`);
    else ids.set(s.id, i);
  });
  const byId = new Map(spec.stages.map((s) => [s.id, s] as const));

  const planned: PlannedStage[] = spec.stages.map((stage, i) => {
    const rules = KIND_RULES[stage.kind];
    const at = (k: string) => ['stages', i, k];
    const modelRef = (key: 'from' | 'policy' | 'reward_model' | 'reference', value: string | undefined): ModelRef | undefined => {
      if (value === undefined) return undefined;
      if (value === 'base') {
        if (key === 'reward_model') problem(at(key), 'must name a reward stage, not "base"');
        return { base: true };
      }
      const target = byId.get(value);
      if (!target) {
        problem(at(key), `no stage with id "${value}"`);
        return undefined;
      }
      if (key === 'reward_model' && target.kind !== 'reward') problem(at(key), `stage "${value}" is a ${target.kind} stage, expected a reward stage`);
      if (target.kind === 'gguf' || target.kind === 'eval') problem(at(key), `stage "${value}" (${target.kind}) produces no model to build on`);
      return { stage: value };
    };

    for (const need of rules.needs) if (stage[need] === undefined) problem(at(need), `required for a ${stage.kind} stage`);
    if (stage.policy !== undefined && stage.from !== undefined) problem(at('policy'), 'give either "from" or "policy", not both');
    if (stage.policy !== undefined && stage.kind !== 'ppo' && stage.kind !== 'grpo') problem(at('policy'), `only ppo and grpo stages take a policy`);
    if (stage.reward_model !== undefined && !['ppo', 'grpo', 'eval'].includes(stage.kind)) problem(at('reward_model'), `a ${stage.kind} stage takes no reward_model`);
    if (stage.kind === 'merge' && stage.from !== undefined && byId.get(stage.from) && finetuningOf(spec, byId.get(stage.from)!).type === 'full') {
      problem(at('from'), `stage "${stage.from}" trains the full model: there is no adapter to merge`);
    }

    const model = modelRef(stage.policy !== undefined ? 'policy' : 'from', stage.policy ?? stage.from ?? 'base') ?? { base: true };
    const rewardModel = modelRef('reward_model', stage.reward_model);
    if (stage.kind !== 'eval') {
      if (stage.baseline !== undefined) problem(at('baseline'), `only eval stages take a baseline (a ${stage.kind} stage trains)`);
      if (stage.reference !== undefined) problem(at('reference'), `only eval stages take a reference`);
    }
    const reference = stage.kind === 'eval' ? modelRef('reference', stage.reference) : undefined;

    const dataset = resolveDataset(spec, loaded.file, stage.dataset, at('dataset'), problem);
    const evalDataset = resolveDataset(spec, loaded.file, stage.eval_dataset, at('eval_dataset'), problem);
    if (rules.formats) {
      if (!dataset) {
        if (stage.dataset === undefined) problem(at('dataset'), `required for a ${stage.kind} stage`);
      } else if (!rules.formats.includes(dataset.format)) {
        problem(at('dataset'), `a ${stage.kind} stage reads ${rules.formats.join(' | ')} data, got "${dataset.format}"`);
      }
    } else if (stage.dataset !== undefined) {
      problem(at('dataset'), `a ${stage.kind} stage takes no dataset`);
    }

    // KL and answer lengths are measured on the candidate's answers to prompts.
    if (reference && dataset && dataset.format !== 'prompts') problem(at('reference'), `KL from a reference is measured on answers to prompts: this stage reads ${dataset.format} data`);

    const finetuning = finetuningOf(spec, stage);
    const hyper = hyperOf(spec, stage);
    const resources = { ...spec.defaults?.resources, ...stage.resources };
    const retry = { ...spec.defaults?.retry, ...stage.retry };
    const timeouts = { ...spec.defaults?.timeouts, ...stage.timeouts };
    const divergence = { ...spec.defaults?.divergence, ...stage.divergence };

    const deps = [...new Set([model, rewardModel, reference].flatMap((r) => (r && 'stage' in r ? [r.stage] : [])))];
    return {
      id: stage.id,
      kind: stage.kind,
      deps,
      inputs: { model, ...(rewardModel ? { reward_model: rewardModel } : {}), ...(reference ? { reference } : {}) },
      ...(stage.kind === 'eval' && stage.baseline
        ? { baseline: { model: stage.baseline.model ?? spec.name, alias: stage.baseline.alias, ifMissing: stage.baseline.if_missing } }
        : {}),
      dataset,
      evalDataset,
      finetuning,
      hyper,
      // Schema-checked already (spec/schema.ts); parsed again here for the defaults.
      params: STAGE_PARAMS[stage.kind].parse(stage.params ?? {}) as Record<string, unknown>,
      ...(stage.job_params !== undefined ? { jobParams: stage.job_params } : {}),
      ...((stage.template ?? spec.template) !== undefined ? { template: stage.template ?? spec.template } : {}),
      gpus: resources.gpus ?? 0,
      taskQueue: resources.task_queue ?? DEFAULT_TASK_QUEUE,
      retry: {
        maximumAttempts: retry.maximum_attempts ?? 3,
        initialIntervalMs: parseDuration(retry.initial_interval ?? '5s'),
        maximumIntervalMs: parseDuration(retry.maximum_interval ?? '5m'),
        backoffCoefficient: retry.backoff_coefficient ?? 2,
        infrastructureAttempts: retry.infrastructure_attempts ?? DEFAULT_INFRASTRUCTURE_ATTEMPTS,
        oomMinBatchSize: retry.oom_min_batch_size ?? 1,
      },
      divergence: {
        ...(divergence.loss_spike_factor !== undefined ? { lossSpikeFactor: divergence.loss_spike_factor } : {}),
        window: divergence.window ?? 20,
        ...(divergence.max_kl !== undefined ? { maxKl: divergence.max_kl } : {}),
        lrFactor: divergence.lr_factor ?? 1,
      },
      timeouts: {
        heartbeatMs: timeouts.heartbeat !== undefined ? parseDuration(timeouts.heartbeat) : DEFAULT_HEARTBEAT_MS,
        stallMs: timeouts.stall !== undefined ? parseDuration(timeouts.stall) : DEFAULT_STALL_MS,
        startToCloseMs: timeouts.start_to_close !== undefined ? parseDuration(timeouts.start_to_close) : DEFAULT_START_TO_CLOSE_MS,
      },
      gate: stage.gate
        ? {
            metrics: stage.gate.metrics ?? [],
            approvalTimeoutMs: stage.gate.approval ? parseDuration(stage.gate.approval.timeout) : undefined,
          }
        : undefined,
      // The reward job always writes a standalone model (it merges its LoRA itself).
      producesAdapter: TRAINING_KINDS.has(stage.kind) && stage.kind !== 'reward' && finetuning.type !== 'full',
    } satisfies PlannedStage;
  });

  const order = topologicalOrder(planned, (cycle) =>
    problem(['stages', ids.get(cycle[0]!) ?? 0], `dependency cycle: ${[...cycle, cycle[0]].join(' -> ')}`),
  );
  const promote = spec.promote ? planPromotion(spec, planned, problem) : undefined;
  if (problems.length > 0) throw new InputError(dedupe(problems));

  return {
    name: spec.name,
    specSha256: loaded.sha256,
    // A bare name is a model pushed with `refinery model push` (storage/models.ts): no "/", never a path.
    baseModel: isModelName(spec.base_model) ? spec.base_model : resolvePath(loaded.file, spec.base_model),
    storage: { bucket: spec.storage?.bucket, prefix: spec.storage?.prefix ?? 'refinery' },
    stages: order.map((id) => planned.find((s) => s.id === id)!),
    ...(promote ? { promote } : {}),
  };
}

/** The promote step names a stage that leaves a model (not an eval or gguf stage). */
function planPromotion(spec: PipelineSpec, stages: PlannedStage[], problem: (p: (string | number)[], m: string) => void): PipelinePlan['promote'] {
  const p = spec.promote!;
  const target = stages.find((s) => s.id === p.stage);
  if (!target) return void problem(['promote', 'stage'], `no stage with id "${p.stage}"`);
  if (target.kind === 'eval') return void problem(['promote', 'stage'], `stage "${p.stage}" (eval) produces no model to promote`);
  return { stage: p.stage, model: p.model ?? spec.name, alias: p.alias, ...(p.reason !== undefined ? { reason: p.reason } : {}) };
}

/**
 * The stage's hyper: its own fields over `defaults.hyper` over HYPER_DEFAULTS, without the fields
 * its kind's job has no use for (a default inherited from `defaults` is not an error there).
 */
function hyperOf(spec: PipelineSpec, stage: Stage): Hyper {
  const unused = HYPER_UNUSED[stage.kind];
  if (unused === 'all') return {};
  const merged: Record<string, unknown> = { ...HYPER_DEFAULTS, ...spec.defaults?.hyper, ...stage.hyper };
  if (merged.max_steps == null && merged.num_epochs == null) merged.num_epochs = 1;
  for (const key of Object.keys(merged)) if (merged[key] === null || unused?.includes(key as HyperField)) delete merged[key];
  return merged as Hyper;
}

function finetuningOf(spec: PipelineSpec, stage: Stage): Finetuning {
  const inherited = spec.defaults?.finetuning;
  const own = stage.finetuning;
  return FinetuningSchema.parse({ ...inherited, ...own, lora: { ...inherited?.lora, ...own?.lora } });
}

function resolveDataset(
  spec: PipelineSpec,
  specFile: string,
  ref: Stage['dataset'],
  at: (string | number)[],
  problem: (p: (string | number)[], m: string) => void,
): PlannedDataset | undefined {
  if (ref === undefined) return undefined;
  const dataset = typeof ref === 'string' ? spec.datasets?.[ref] : ref;
  if (!dataset) {
    problem(at, `no dataset named "${ref as string}" in datasets`);
    return undefined;
  }
  // Problems with a named dataset are reported where it is declared.
  const where = typeof ref === 'string' ? ['datasets', ref] : at;
  const name = typeof ref === 'string' ? ref : `${at[1]}-${String(at[2])}`.replace(/_/g, '-');
  const resolve = (p: string) => resolvePath(specFile, p);
  const planned = planDataset(name, dataset, resolve, (p, m) => problem([...where, ...p], m));
  if (!planned || !dataset.mix) return planned;
  const general = spec.datasets?.[dataset.mix.dataset];
  const mixAt = [...where, 'mix', 'dataset'];
  if (!general) return void problem(mixAt, `no dataset named "${dataset.mix.dataset}" in datasets`);
  if (general.mix) return void problem(mixAt, `dataset "${dataset.mix.dataset}" is mixed itself; mix in a plain dataset`);
  const mixed = planDataset(dataset.mix.dataset, general, resolve, (p, m) => problem(['datasets', dataset.mix!.dataset, ...p], m));
  if (!mixed) return undefined;
  if (mixed.format !== planned.format) return void problem(mixAt, `dataset "${dataset.mix.dataset}" reads as ${mixed.format} data, this one as ${planned.format}: mix datasets of one format`);
  const { valSize: _v, ...mixedDataset } = mixed;
  return { ...planned, mix: { dataset: mixedDataset, ratio: dataset.mix.ratio, seed: dataset.mix.seed ?? 42 } };
}

/** s3:// URIs stay as they are; local paths become absolute, relative to the spec file. */
export function resolvePath(specFile: string, p: string): string {
  return p.startsWith('s3://') ? p : path.resolve(path.dirname(specFile), p);
}

/** Kahn's algorithm; stable (spec order among ready stages). Reports one cycle if any. */
export function topologicalOrder(stages: Pick<PlannedStage, 'id' | 'deps'>[], onCycle: (cycle: string[]) => void): string[] {
  const remaining = new Map(stages.map((s) => [s.id, new Set(s.deps.filter((d) => stages.some((x) => x.id === d)))]));
  const order: string[] = [];
  while (remaining.size > 0) {
    const ready = [...remaining].filter(([, deps]) => deps.size === 0).map(([id]) => id);
    if (ready.length === 0) {
      onCycle(findCycle(remaining));
      break;
    }
    for (const id of ready) {
      order.push(id);
      remaining.delete(id);
      for (const deps of remaining.values()) deps.delete(id);
    }
  }
  return order;
}

function findCycle(graph: Map<string, Set<string>>): string[] {
  const start = [...graph.keys()][0]!;
  const seen: string[] = [];
  let node = start;
  while (!seen.includes(node)) {
    seen.push(node);
    node = [...graph.get(node)!][0]!;
  }
  return seen.slice(seen.indexOf(node));
}

function fieldOf(p: (string | number)[]): string {
  return p.map((k, i) => (typeof k === 'number' ? `[${k}]` : i === 0 ? k : `.${k}`)).join('');
}

function dedupe(problems: InputProblem[]): InputProblem[] {
  const seen = new Set<string>();
  return problems.filter((p) => {
    const key = `${p.line}|${p.field}|${p.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}
