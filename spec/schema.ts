/**
 * The pipeline spec: the single source of truth. Types are inferred from it, the JSON Schema
 * (spec/pipeline.schema.json) and the field list in docs/spec-fields.md are generated from it
 * (`npm run gen:spec`). Keep descriptions short: they become the docs.
 */
import { z } from 'zod';
import { DataPath, Dataset } from './dataset-spec.js';
import { Hyper, HYPER_UNUSED, STAGE_PARAMS } from './stage-params.js';
import { ALIAS_NAME, MODEL_NAME } from './model-name.js';

export { DataPath, Dataset, DatasetFormat } from './dataset-spec.js';

/** Ids end up in object keys, workflow ids and file names: no slashes, dots or spaces. */
export const Id = z
  .string()
  .regex(/^[a-z][a-z0-9_-]{0,62}$/, 'lowercase letters, digits, "-" or "_", starting with a letter, at most 63 characters');

/** Durations are written like "30s", "5m", "2h", "7d" (or a number of milliseconds). */
export const Duration = z
  .union([z.number().int().positive(), z.string().regex(/^\d+(ms|s|m|h|d)$/, 'a duration such as "30s", "5m", "2h" or "7d"')])
  .describe('duration: "30s", "5m", "2h", "7d" or milliseconds');

export const StageKind = z.enum(['cpt', 'sft', 'reward', 'ppo', 'dpo', 'grpo', 'kto', 'orpo', 'merge', 'gguf', 'eval']);
export type StageKind = z.infer<typeof StageKind>;

export const Lora = z.strictObject({
  r: z.number().int().min(1).max(1024).default(8),
  alpha: z.number().positive().max(4096).default(16),
  dropout: z.number().min(0).max(0.9).default(0.05),
  target_modules: z.union([z.literal('all-linear'), z.array(z.string().regex(/^[A-Za-z0-9_.]+$/)).min(1)]).default('all-linear'),
});

export const Finetuning = z.strictObject({
  type: z.enum(['lora', 'full', 'qlora']).default('lora').describe('qlora needs CUDA and bitsandbytes'),
  lora: Lora.prefault({}),
});
export type Finetuning = z.infer<typeof Finetuning>;

export { Hyper } from './stage-params.js';

export const Resources = z.strictObject({
  gpus: z.number().int().min(0).max(64).optional().describe('GPUs the job needs (0 runs on CPU)'),
  task_queue: z.string().regex(/^[a-z][a-z0-9-]{0,62}$/).optional().describe('GPU pool (worker task queue)'),
});

export const Retry = z.strictObject({
  maximum_attempts: z.number().int().min(1).max(100).optional().describe('attempts the job itself may fail (crash, stall, divergence) before the stage fails; default 3'),
  infrastructure_attempts: z
    .number()
    .int()
    .min(0)
    .max(1000)
    .optional()
    .describe('attempts the fleet may lose (worker lost, node failure, drain, storage) on top of those: never counted as job failures; default 20'),
  oom_min_batch_size: z.number().int().min(1).optional().describe('out of memory: each retry halves the per-device batch (doubling gradient accumulation) down to this floor; default 1'),
  initial_interval: Duration.optional(),
  maximum_interval: Duration.optional(),
  backoff_coefficient: z.number().min(1).max(10).optional(),
});

export const Timeouts = z.strictObject({
  heartbeat: Duration.optional().describe('a worker that stops heartbeating for this long is presumed dead'),
  stall: Duration.optional().describe('a job with no progress event for this long is killed and retried'),
  start_to_close: Duration.optional().describe('upper bound for one attempt'),
});

export const Divergence = z.strictObject({
  loss_spike_factor: z.number().gt(1).optional().describe('diverged when the loss exceeds this many times the median of the last `window` losses (NaN/Inf loss always is)'),
  window: z.number().int().min(2).max(10_000).optional().describe('logged steps the spike test looks back over; default 20'),
  max_kl: z.number().positive().optional().describe('ppo/grpo: diverged when the `kl` metric exceeds this'),
  lr_factor: z.number().gt(0).max(1).optional().describe('the retry after a divergence multiplies the learning rate by this; default 1 (unchanged)'),
});

export const MetricGate = z.strictObject({
  metric: z.string().regex(/^[A-Za-z0-9_.]+$/),
  min: z.number().optional(),
  max: z.number().optional(),
});

export const Gate = z.strictObject({
  metrics: z.array(MetricGate).optional().describe('the run stops unless every metric is within bounds'),
  approval: z
    .strictObject({ timeout: Duration.default('24h').describe('rejected when nobody approves in time') })
    .optional()
    .describe('wait for `refinery approve` before dependants start'),
});

/** An eval stage's baseline: what a registry alias points at when the stage starts (storage/registry.ts). */
export const Baseline = z.strictObject({
  model: z.string().regex(MODEL_NAME, 'letters, digits, ".", "_" and "-", starting with a letter or digit').optional().describe("the registry's model name (default: the pipeline's name)"),
  alias: z.string().regex(ALIAS_NAME, 'lowercase letters, digits and "-", starting with a letter').default('production'),
  if_missing: z
    .enum(['fail', 'pass'])
    .default('fail')
    .describe('the alias points at nothing yet (a first run): fail the stage, or score the candidate alone and pass gates on relative metrics'),
});

/** The step a pipeline can end with: once every stage completed (gates passed, approvals given). */
export const Promote = z.strictObject({
  stage: Id.describe('the stage whose committed output the alias will point at'),
  model: z.string().regex(MODEL_NAME, 'letters, digits, ".", "_" and "-", starting with a letter or digit').optional().describe("the registry's model name (default: the pipeline's name)"),
  alias: z.string().regex(ALIAS_NAME, 'lowercase letters, digits and "-", starting with a letter').default('production'),
  reason: z.string().min(1).max(2000).optional().describe('recorded with the promotion (default: the gates that passed)'),
});

/**
 * `finetuning` as written under `defaults` or in a stage: no defaults filled in here (a `.partial()`
 * of Finetuning would fill them), so every field a stage leaves out is inherited from `defaults`.
 * The planner merges the two, then applies Finetuning's defaults.
 */
const FinetuningOverride = z.strictObject({
  type: Finetuning.shape.type.unwrap().optional().describe('qlora needs CUDA and bitsandbytes'),
  lora: z
    .strictObject({
      r: Lora.shape.r.unwrap().optional(),
      alpha: Lora.shape.alpha.unwrap().optional(),
      dropout: Lora.shape.dropout.unwrap().optional(),
      target_modules: Lora.shape.target_modules.unwrap().optional(),
    })
    .optional(),
});

/** A chat template by name (docs/models.md lists them) or as Jinja text (it contains "{%" or "{{"). */
export const ChatTemplate = z
  .string()
  .min(1)
  .max(100_000)
  .describe('chat template: a name from docs/models.md (as LLaMA-Factory\'s `template: qwen`) or a Jinja string; default: the model\'s own');

/** Settings a stage inherits from `defaults` unless it sets them itself. */
const Inheritable = {
  finetuning: FinetuningOverride.optional(),
  hyper: Hyper.optional(),
  resources: Resources.optional(),
  retry: Retry.optional(),
  timeouts: Timeouts.optional(),
  divergence: Divergence.optional().describe('when an attempt counts as diverged (NaN/Inf loss always does), and what its retry changes'),
};

export const Stage = z
  .strictObject({
    id: Id.describe('unique within the pipeline'),
    kind: StageKind,
    from: z.string().optional().describe('model input: "base" or a stage id (default "base")'),
    policy: z.string().optional().describe('ppo/grpo: the policy to train ("base" or a stage id)'),
    reward_model: z.string().optional().describe('ppo/grpo/eval: a reward stage id'),
    baseline: Baseline.optional().describe('eval: also score the model an alias of the registry points at (e.g. production), for relative metrics and gates'),
    reference: z.string().optional().describe('eval: the model KL is measured from ("base" or a stage id; default the baseline)'),
    dataset: z.union([Id, Dataset]).optional().describe('a name from `datasets` or an inline dataset'),
    eval_dataset: z.union([Id, Dataset]).optional(),
    params: z.record(z.string(), z.unknown()).optional().describe('kind-specific settings passed to the job'),
    job_params: z
      .record(z.string(), z.unknown())
      .optional()
      .describe('free-form settings for a job other than the built-in ones (a trainer of your own behind the job contract, the contract test job): passed as they are; the built-in jobs refuse any'),
    template: ChatTemplate.optional().describe('this stage\'s chat template (overrides the pipeline\'s `template`)'),
    gate: Gate.optional(),
    ...Inheritable,
  })
  .superRefine((stage, ctx) => {
    // Each kind's params are checked against that kind's schema (spec/stage-params.ts), so a typo
    // in the last stage is refused before the first one trains.
    const params = STAGE_PARAMS[stage.kind].safeParse(stage.params ?? {}, { reportInput: true });
    if (!params.success) for (const issue of params.error.issues) ctx.addIssue({ ...issue, path: ['params', ...issue.path] } as z.core.$ZodRawIssue);
    const unused = HYPER_UNUSED[stage.kind];
    for (const key of Object.keys(stage.hyper ?? {})) {
      if (unused === 'all' || unused?.includes(key as keyof Hyper)) {
        ctx.addIssue({ code: 'custom', path: ['hyper', key], input: stage.hyper, message: unused === 'all' ? `a ${stage.kind} stage does not train and takes no hyper` : `the ${stage.kind} job does not use hyper.${key}` });
      }
    }
  });
export type Stage = z.infer<typeof Stage>;

export const PipelineSpec = z.strictObject({
  name: Id.describe('pipeline name (a search attribute: `refinery list --pipeline`)'),
  description: z.string().max(2000).optional(),
  base_model: DataPath.describe('the model to start from: the name of a model stored with `refinery model push` (no "/"), a Hugging Face model directory (a path, relative to this file; stored by the control worker, which must see it), or the s3:// prefix of a committed model'),
  template: ChatTemplate.optional(),
  storage: z
    .strictObject({
      bucket: z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/).optional().describe("must be the deployment's bucket ($REFINERY_BUCKET): checked before the run starts"),
      prefix: z.string().regex(/^[a-z0-9][a-z0-9/_-]{0,200}$/).refine((p) => !p.includes('//')).optional(),
    })
    .optional()
    .describe('where artifacts go (default: $REFINERY_BUCKET, prefix "refinery")'),
  datasets: z.record(Id, Dataset).optional(),
  defaults: z.strictObject(Inheritable).optional(),
  stages: z.array(Stage).min(1),
  promote: Promote.optional().describe("point a registry alias at a stage's output when the run completes (`refinery model aliases NAME`)"),
});
export type PipelineSpec = z.infer<typeof PipelineSpec>;
