/**
 * The job config (jobs/CONTRACT.md section 2) as a schema: the file the training activity writes
 * for each attempt and every job reads. `npm run gen:spec` turns it into
 * jobs/refinery_jobs/job_config.schema.json, which the Python jobs validate their config against
 * and take their defaults from (jobs/refinery_jobs/config.py): one definition of every field, its
 * bounds and its default, on both sides of the contract.
 */
import { z } from 'zod';
import { DatasetFormat } from './dataset-spec.js';
import { Finetuning, StageKind } from './schema.js';
import { Hyper, HYPER_DEFAULTS, HYPER_UNUSED, STAGE_PARAMS } from './stage-params.js';

/** Jobs run by hand or by tests may turn checkpoints off: save_steps null. */
const NULLABLE_IN_JOBS = new Set(['save_steps', 'save_total_limit']);

/** `hyper` with every default filled in: a job may get a plan made before a field existed. */
const JobHyper = z.strictObject(
  Object.fromEntries(
    Object.entries(Hyper.shape).map(([name, field]) => {
      const fallback = HYPER_DEFAULTS[name as keyof typeof HYPER_DEFAULTS];
      const unwrapped = field.unwrap() as z.ZodType;
      const inner = NULLABLE_IN_JOBS.has(name) ? unwrapped.nullable() : unwrapped;
      const described = (field.meta() as { description?: string } | undefined)?.description ?? '';
      return [name, (fallback === null ? inner.nullable().default(null) : inner.default(fallback)).describe(described)];
    }),
  ),
);

const AbsolutePath = z.string().regex(/^\//, 'an absolute path');

export const JobConfigSchema = z.strictObject({
  contract: z.literal(1),
  kind: StageKind,
  run_id: z.string().min(1),
  stage_id: z.string().min(1),
  output_dir: AbsolutePath,
  checkpoint_dir: AbsolutePath.nullable(),
  resume_from: AbsolutePath.nullable().default(null),
  inputs: z.record(z.string(), AbsolutePath).default({}),
  datasets: z
    .strictObject({
      train: AbsolutePath.nullable().default(null),
      eval: AbsolutePath.nullable().default(null),
      val_size: z.number().positive().nullable().default(null).describe('split this share (< 1) or this many rows (≥ 1) of train off as the eval set'),
    })
    .default({ train: null, eval: null, val_size: null }),
  dataset_format: DatasetFormat.nullable().default(null),
  finetuning: Finetuning.prefault({}),
  hyper: JobHyper.prefault({}),
  params: z.record(z.string(), z.unknown()).default({}).describe("the kind's params: see $defs/params_<kind>"),
  job_params: z.record(z.string(), z.unknown()).default({}),
  chat_template: z.string().min(1).nullable().default(null),
});
export type JobConfigInput = z.input<typeof JobConfigSchema>;

type JsonSchema = Record<string, unknown> & { $defs?: Record<string, unknown>; allOf?: unknown[] };

/**
 * The JSON Schema: the config's fields, each kind's params under $defs/params_<kind>, and an
 * if/then per kind so that any JSON Schema validator checks params by kind.
 */
export function jobConfigJsonSchema(): JsonSchema {
  const base = z.toJSONSchema(JobConfigSchema, { io: 'input', unrepresentable: 'any' }) as JsonSchema;
  const defs: Record<string, unknown> = {};
  const allOf: unknown[] = [];
  for (const [kind, schema] of Object.entries(STAGE_PARAMS)) {
    const { $schema: _ignored, ...params } = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as JsonSchema;
    defs[`params_${kind}`] = params;
    allOf.push({ if: { properties: { kind: { const: kind } }, required: ['kind'] }, then: { properties: { params: { $ref: `#/$defs/params_${kind}` } } } });
  }
  return {
    $id: 'https://refinery.dev/job-config.schema.json',
    title: 'Refinery job config (jobs/CONTRACT.md section 2)',
    ...base,
    $defs: defs,
    allOf,
    // Not validation: which hyper fields each kind's built-in job has no use for (the planner drops them).
    'x-hyper-unused': HYPER_UNUSED,
  };
}
