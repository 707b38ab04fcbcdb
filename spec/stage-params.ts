/**
 * Every stage parameter, typed, bounded and with its default: the one source of truth for
 * - `hyper` (training arguments every training kind shares; TrainingArguments' name in each description),
 * - each kind's `params` (STAGE_PARAMS),
 * - the job config's JSON Schema (jobs/refinery_jobs/job_config.schema.json, `npm run gen:spec`),
 *   which the Python jobs validate against and take their defaults from,
 * - the generated field reference (docs/spec-fields.md).
 *
 * `hyper` fields carry their default as metadata, not as a zod default: a stage inherits each field
 * it leaves out from `defaults.hyper`, so the planner applies HYPER_DEFAULTS after merging the two.
 * `params` belong to one stage and use zod defaults directly.
 */
import { z } from 'zod';
import type { StageKind } from './schema.js';

/** An optional hyper field whose default is documented (JSON Schema `default`) and applied by the planner. */
function tunable<T extends z.ZodType>(schema: T, fallback: z.output<T> | null, description: string) {
  return schema.optional().meta({ default: fallback, description });
}

export const SCHEDULERS = ['linear', 'cosine', 'cosine_with_restarts', 'polynomial', 'constant', 'constant_with_warmup', 'inverse_sqrt', 'cosine_with_min_lr', 'warmup_stable_decay'] as const;
export const OPTIMIZERS = ['adamw_torch', 'adamw_torch_fused', 'adafactor', 'sgd', 'adagrad', 'rmsprop', 'adamw_bnb_8bit', 'paged_adamw_8bit'] as const;

/** The shared training arguments. Refinery's name first; TrainingArguments' where it differs. */
export const Hyper = z.strictObject({
  learning_rate: tunable(z.number().positive().max(1), 1e-4, 'peak learning rate (TrainingArguments learning_rate)'),
  num_epochs: tunable(z.number().positive().max(1000), null, 'passes over the dataset (num_train_epochs); 1 when neither this nor max_steps is set'),
  max_steps: tunable(z.number().int().positive().max(10_000_000), null, 'optimizer steps; overrides num_epochs (max_steps)'),
  batch_size: tunable(z.number().int().min(1).max(4096), 4, 'rows per device per forward pass (per_device_train_batch_size, per_device_eval_batch_size)'),
  gradient_accumulation: tunable(z.number().int().min(1).max(4096), 1, 'forward passes per optimizer step (gradient_accumulation_steps)'),
  max_length: tunable(z.number().int().min(8).max(1_048_576), 512, 'tokens per row; longer rows are truncated (max_length)'),
  scheduler: tunable(z.enum(SCHEDULERS), 'linear', 'learning-rate schedule (lr_scheduler_type)'),
  warmup_ratio: tunable(z.number().min(0).max(1), 0, 'share of the steps spent warming up (warmup_steps as a ratio)'),
  warmup_steps: tunable(z.number().int().min(0), null, 'warm-up steps; overrides warmup_ratio (warmup_steps)'),
  weight_decay: tunable(z.number().min(0).max(1), 0, 'AdamW weight decay (weight_decay)'),
  max_grad_norm: tunable(z.number().min(0), 1, 'gradient clipping norm; 0 turns clipping off (max_grad_norm)'),
  optim: tunable(z.enum(OPTIMIZERS), 'adamw_torch', 'optimizer (optim); the 8-bit ones need CUDA and bitsandbytes'),
  adam_beta1: tunable(z.number().min(0).lt(1), 0.9, 'AdamW beta1 (adam_beta1)'),
  adam_beta2: tunable(z.number().min(0).lt(1), 0.999, 'AdamW beta2 (adam_beta2)'),
  adam_epsilon: tunable(z.number().positive().max(1), 1e-8, 'AdamW epsilon (adam_epsilon)'),
  precision: tunable(z.enum(['auto', 'bf16', 'fp16', 'fp32']), 'auto', 'mixed precision (bf16 / fp16): auto = bf16 on a GPU that has it, else fp32'),
  gradient_checkpointing: tunable(z.union([z.boolean(), z.literal('auto')]), 'auto', 'recompute activations to save memory (gradient_checkpointing): auto = on a GPU'),
  neftune_noise_alpha: tunable(z.number().positive().max(100), null, 'NEFTune noise on the embeddings while training (neftune_noise_alpha)'),
  save_steps: tunable(z.number().int().min(1), 50, 'checkpoint interval in steps: at most this much work is lost to a crash (save_steps)'),
  save_total_limit: tunable(z.number().int().min(1).max(1000), 3, 'committed checkpoints kept in object storage (the worker prunes; not TrainingArguments save_total_limit)'),
  eval_steps: tunable(z.number().int().min(1), null, 'eval-loss interval in steps when there is an eval set (eval_steps); default save_steps'),
  seed: tunable(z.number().int().min(0).max(2 ** 31 - 1), 42, 'seed for initialisation, shuffling and sampling (seed, data_seed)'),
});
export type Hyper = z.infer<typeof Hyper>;
export type HyperField = keyof Hyper;

/** What each hyper field is when a stage and `defaults` leave it out. */
export const HYPER_DEFAULTS = Object.fromEntries(
  Object.entries(Hyper.shape).map(([name, schema]) => [name, (schema.meta() as { default?: unknown } | undefined)?.default ?? null]),
) as { [K in HyperField]-?: Exclude<Hyper[K], undefined> | null };

/**
 * TrainingArguments names users of LLaMA-Factory and TRL write, and what Refinery calls them: an
 * unknown key among these gets a pointer instead of a bare "unknown key".
 */
export const HYPER_ALIASES: Readonly<Record<string, string>> = {
  num_train_epochs: 'num_epochs',
  per_device_train_batch_size: 'batch_size',
  per_device_eval_batch_size: 'batch_size',
  gradient_accumulation_steps: 'gradient_accumulation',
  lr_scheduler_type: 'scheduler',
  cutoff_len: 'max_length',
  max_seq_length: 'max_length',
  bf16: 'precision: bf16',
  fp16: 'precision: fp16',
  packing: 'params.packing (sft, cpt)',
};

// ---------------------------------------------------------------------------------------------
// Per-kind params
// ---------------------------------------------------------------------------------------------

const TrainSft = z.strictObject({
  packing: z.boolean().default(false).describe('pack several rows into each max_length block (SFTConfig packing)'),
  assistant_only_loss: z.boolean().default(true).describe('chat data: loss on the assistant turns only, under the model\'s chat template'),
});

const Reward = z.strictObject({
  center_rewards_coefficient: z.number().min(0).nullable().default(null).describe('pull the mean reward towards 0 (RewardConfig center_rewards_coefficient)'),
});

const Dpo = z.strictObject({
  beta: z.number().min(0).max(100).default(0.1).describe('strength of the pull towards the reference model (DPOConfig beta)'),
  loss_type: z.enum(['sigmoid', 'ipo', 'hinge', 'robust', 'sigmoid_norm']).default('sigmoid').describe('DPO loss variant (DPOConfig loss_type)'),
});

const Ppo = z.strictObject({
  kl_coef: z.number().min(0).max(100).default(0.05).describe('per-token KL penalty against the frozen reference'),
  max_new_tokens: z.number().int().min(1).max(65_536).default(32).describe('tokens sampled per rollout'),
  temperature: z.number().min(1e-3).max(100).default(1).describe('rollout sampling temperature'),
  ppo_epochs: z.number().int().min(1).max(100).default(4).describe('optimisation passes over each batch of rollouts'),
  num_mini_batches: z.number().int().min(1).max(4096).default(1).describe('mini-batches per pass; must divide batch_size x gradient_accumulation'),
  clip_range: z.number().min(0).max(10).default(0.2).describe('policy ratio clip'),
  clip_range_value: z.number().min(0).max(100).default(0.2).describe('value function clip'),
  vf_coef: z.number().min(0).max(100).default(0.1).describe('weight of the value loss'),
  gamma: z.number().min(0).max(1).default(1).describe('discount'),
  lam: z.number().min(0).max(1).default(0.95).describe('GAE lambda'),
  value_learning_rate: z.number().positive().max(1).nullable().default(null).describe('value model learning rate (default: hyper.learning_rate)'),
  missing_eos_penalty: z.number().min(0).nullable().default(null).describe('subtracted from the score of a response that never ends'),
  eval_max_prompts: z.number().int().min(1).default(64).describe('eval prompts scored at each checkpoint'),
});

const Grpo = z.strictObject({
  num_generations: z.number().int().min(2).max(1024).default(4).describe('completions per prompt (GRPOConfig num_generations); batch_size x gradient_accumulation must be a multiple'),
  max_completion_length: z.number().int().min(1).max(65_536).default(32).describe('tokens per completion (GRPOConfig max_completion_length)'),
  temperature: z.number().min(1e-3).max(100).default(1).describe('sampling temperature (GRPOConfig temperature)'),
  beta: z.number().min(0).max(100).default(0).describe('KL coefficient against the reference (GRPOConfig beta)'),
  num_iterations: z.number().int().min(1).max(100).default(1).describe('optimisation passes per generation batch (GRPOConfig num_iterations)'),
  epsilon: z.number().min(0).max(10).default(0.2).describe('ratio clip (GRPOConfig epsilon)'),
});

const Kto = z.strictObject({
  beta: z.number().min(0).max(100).default(0.1).describe('strength of the pull towards the reference model (KTOConfig beta)'),
  desirable_weight: z.number().positive().max(100).default(1).describe('weight of desirable (label true) rows (KTOConfig desirable_weight)'),
  undesirable_weight: z.number().positive().max(100).default(1).describe('weight of undesirable rows (KTOConfig undesirable_weight)'),
});

const Orpo = z.strictObject({
  beta: z.number().min(0).max(100).default(0.1).describe('weight of the odds-ratio term, ORPO\'s lambda (ORPOConfig beta)'),
});

const Merge = z.strictObject({
  dtype: z.enum(['auto', 'float32', 'bfloat16', 'float16']).default('auto').describe('dtype of the merged weights (auto: the base model\'s)'),
});

/** GGUF types each exporter can write (jobs/refinery_jobs/gguf.py). */
export const GGUF_EXPORTER_TYPES = {
  'gguf-py': ['f32', 'f16', 'bf16', 'q8_0', 'q4_0'],
  'llama.cpp': ['f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'q2_k', 'q3_k_s', 'q3_k_m', 'q3_k_l', 'q4_k_s', 'q4_k_m', 'q5_k_s', 'q5_k_m', 'q6_k'],
} as const satisfies Record<string, readonly string[]>;
const GGUF_TYPES = [...new Set(Object.values(GGUF_EXPORTER_TYPES).flat())] as [string, ...string[]];

const Gguf = z
  .strictObject({
    exporter: z.enum(['gguf-py', 'llama.cpp']).default('gguf-py').describe('gguf-py (Llama architectures) or llama.cpp\'s convert script (every family it supports)'),
    types: z.array(z.enum(GGUF_TYPES)).min(1, 'expected a non-empty array of GGUF types').default(['f16', 'q8_0', 'q4_0']).describe('GGUF files to write'),
    check_prompts: z.array(z.string().min(1).max(4000)).min(1).max(64).optional().describe('prompts of the llama.cpp check (default: a built-in set)'),
    check_new_tokens: z.number().int().min(1).max(256).default(16).describe('greedy tokens compared per check prompt'),
  })
  .superRefine((p, ctx) => {
    const allowed: readonly string[] = GGUF_EXPORTER_TYPES[p.exporter];
    p.types.forEach((t, i) => {
      if (!allowed.includes(t)) ctx.addIssue({ code: 'custom', path: ['types', i], message: `expected one of ${allowed.join(' | ')} with exporter "${p.exporter}", got ${JSON.stringify(t)}` });
    });
  });

const Evaluate = z.strictObject({
  max_rows: z.number().int().min(1).nullable().default(null).describe('rows evaluated (default: all)'),
  max_new_tokens: z.number().int().min(1).max(65_536).default(64).describe('tokens generated per prompt'),
  do_sample: z.boolean().default(false).describe('sample instead of greedy decoding'),
});

/** Each kind's `params`. */
export const STAGE_PARAMS = {
  cpt: TrainSft,
  sft: TrainSft,
  reward: Reward,
  dpo: Dpo,
  ppo: Ppo,
  grpo: Grpo,
  kto: Kto,
  orpo: Orpo,
  merge: Merge,
  gguf: Gguf,
  eval: Evaluate,
} as const satisfies Record<StageKind, z.ZodType>;

/**
 * Hyper fields a kind's built-in job has no use for: setting one is refused up front, never
 * validated and then ignored. merge, gguf and eval do not train and take no hyper at all.
 */
export const HYPER_UNUSED: Readonly<Partial<Record<StageKind, readonly HyperField[] | 'all'>>> = {
  // Our own PPO loop (jobs/refinery_jobs/ppo.py) uses torch's AdamW and autocast directly.
  ppo: ['optim', 'gradient_checkpointing', 'neftune_noise_alpha', 'eval_steps'],
  // GRPOConfig has no prompt length limit: prompts are as the data has them, completions params.max_completion_length.
  grpo: ['max_length'],
  merge: 'all',
  gguf: 'all',
  // Scoring only: batch_size, max_length and seed.
  eval: ['learning_rate', 'num_epochs', 'max_steps', 'gradient_accumulation', 'scheduler', 'warmup_ratio', 'warmup_steps', 'weight_decay', 'max_grad_norm', 'optim', 'adam_beta1', 'adam_beta2', 'adam_epsilon', 'precision', 'gradient_checkpointing', 'neftune_noise_alpha', 'save_steps', 'save_total_limit', 'eval_steps'],
};
