/**
 * Pure helpers over a run's plan (no Temporal APIs): which model artifacts a stage consumes, and
 * running stages as their dependencies complete.
 */
import type { ModelRef, PipelinePlan, PlannedStage } from '../spec/plan-types.js';
import type { ArtifactRef, ModelInputs, StageOutcome } from './types.js';

/**
 * The model inputs of a stage by contract name. A LoRA stage's output is an adapter over the full
 * model its own input rests on, so `base` follows adapters back to the last full model.
 */
export function stageModelInputs(plan: PipelinePlan, stage: PlannedStage, baseModel: ArtifactRef, outcomes: ReadonlyMap<string, StageOutcome>): ModelInputs {
  const modelOf = (ref: ModelRef): { model: ArtifactRef; base?: ArtifactRef } => {
    if ('base' in ref) return { model: baseModel };
    const upstream = plan.stages.find((s) => s.id === ref.stage)!;
    const artifact = outcomes.get(ref.stage)!.artifact;
    if (!upstream.producesAdapter) return { model: artifact };
    const input = modelOf(upstream.inputs.model);
    return { model: artifact, base: input.base ?? input.model };
  };
  const policy = modelOf(stage.inputs.model);
  const inputs: ModelInputs = { model: policy.model, base: policy.base };
  if (stage.inputs.reward_model) {
    const rm = modelOf(stage.inputs.reward_model);
    Object.assign(inputs, { reward_model: rm.model, reward_model_base: rm.base });
  }
  if (stage.inputs.reference) {
    const ref = modelOf(stage.inputs.reference);
    Object.assign(inputs, { reference: ref.model, reference_base: ref.base });
  }
  return inputs;
}

/**
 * Runs every stage as soon as all the stages it depends on have succeeded (independent ones in
 * parallel). A stage whose dependency failed is not run: `onSkipped` is told. Settles when every
 * stage has; resolves with the first error, if any.
 */
export async function runInDependencyOrder(
  stages: readonly PlannedStage[],
  run: (stage: PlannedStage) => Promise<void>,
  onSkipped: (stage: PlannedStage) => void,
): Promise<unknown> {
  const done = new Map<string, Promise<void>>();
  let firstError: unknown;
  for (const stage of stages) {
    done.set(
      stage.id,
      (async () => {
        try {
          await Promise.all(stage.deps.map((d) => done.get(d)!));
        } catch (err) {
          onSkipped(stage);
          throw err;
        }
        try {
          await run(stage);
        } catch (err) {
          firstError ??= err;
          throw err;
        }
      })(),
    );
  }
  await Promise.allSettled(done.values());
  return firstError;
}

/** The innermost cause's message: what a person needs to read. */
export function describeError(err: unknown): string {
  let e = err as { message?: string; cause?: unknown } | undefined;
  while (e?.cause) e = e.cause as typeof e;
  return e?.message ?? String(err);
}

/** The type of the innermost ApplicationFailure (an activity's own error type), if any. */
export function failureType(err: unknown): string | undefined {
  let type: string | undefined;
  for (let e = err as { type?: string; cause?: unknown } | undefined; e; e = e.cause as typeof e) if (typeof e.type === 'string') type = e.type;
  return type;
}
