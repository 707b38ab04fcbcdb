/** `refinery validate spec.yaml`: schema, references, cycles and every dataset line, without running. */
import { stat } from 'node:fs/promises';
import { isModelName } from '../../spec/model-name.js';
import { checkChatTemplate } from '../../spec/chat-template.js';
import { validateDatasetFile } from '../../spec/datasets.js';
import { formatPath, InputError, type InputProblem } from '../../spec/errors.js';
import { loadSpecFile } from '../../spec/load.js';
import { planPipeline, type PipelinePlan } from '../../spec/plan.js';
import type { PlannedStage } from '../../spec/plan-types.js';

export interface ValidateResult {
  plan: PipelinePlan;
  datasets: { name: string; path: string; rows: number | null }[];
}

export async function validateSpec(file: string, options: { bucket?: string } = {}): Promise<ValidateResult> {
  const loaded = await loadSpecFile(file);
  const plan = planPipeline({ ...loaded, file });
  const problems: InputProblem[] = [];
  // Where a dataset's path is written in the spec (named, or inline in a stage as "<index>-dataset").
  const declaredAt = (name: string): (string | number)[] => {
    if (loaded.spec.datasets?.[name]) return ['datasets', name, 'path'];
    const inline = /^(\d+)-(dataset|eval-dataset)$/.exec(name);
    return inline ? ['stages', Number(inline[1]), inline[2] === 'dataset' ? 'dataset' : 'eval_dataset', 'path'] : ['datasets'];
  };
  const datasets: ValidateResult['datasets'] = [];
  const seen = new Set<string>();
  for (const stage of plan.stages) {
    // An eval set comes from eval_dataset or from val_size, not both (as LLaMA-Factory refuses it).
    if (stage.dataset?.valSize !== undefined && stage.evalDataset !== undefined) {
      const at = ['stages', loaded.spec.stages.findIndex((s) => s.id === stage.id), 'eval_dataset'];
      problems.push({ file, line: loaded.lineOf(at), field: formatPath(at), message: `stage "${stage.id}": its dataset "${stage.dataset.name}" sets val_size; give either eval_dataset or val_size` });
    }
    // Each dataset once, and a general dataset mixed into one (spec `mix`) too.
    for (const ds of [stage.dataset, stage.evalDataset, stage.dataset?.mix?.dataset, stage.evalDataset?.mix?.dataset]) {
      if (!ds || seen.has(ds.name)) continue;
      seen.add(ds.name);
      if (ds.path.startsWith('s3://')) {
        datasets.push({ name: ds.name, path: ds.path, rows: null }); // checked when the run starts
        continue;
      }
      if (!(await stat(ds.path).then((s) => s.isFile()).catch(() => false))) {
        // A dataset_info entry names its file in dataset_info.json: point at the entry's name.
        const declared = declaredAt(ds.name);
        const at = declared.length > 1 ? [...declared.slice(0, -1), ds.source?.kind === 'llama-factory' && ds.source.datasetInfo !== undefined ? 'name' : 'path'] : declared;
        problems.push({ file, line: loaded.lineOf(at), field: formatPath(at), message: `dataset "${ds.name}": ${ds.path} does not exist` });
        continue;
      }
      // Read as the run will read it: JSONL, a JSON array or .txt, in its source format, to canonical rows.
      const report = await validateDatasetFile(ds.path, ds, ds.path);
      problems.push(...report.problems);
      datasets.push({ name: ds.name, path: ds.path, rows: report.rows });
    }
  }
  if (!plan.baseModel.startsWith('s3://') && !isModelName(plan.baseModel) && !(await stat(plan.baseModel).then((s) => s.isDirectory()).catch(() => false))) {
    problems.push({ file, line: loaded.lineOf(['base_model']), field: 'base_model', message: `${plan.baseModel} is not a directory (the demo builds one with "npx refinery make-tiny-model")` });
  }
  problems.push(...(await chatTemplateProblems(plan, loaded, file)));
  // One deployment serves one bucket (its workers' REFINERY_BUCKET): a spec may name it, to be
  // sure where its artifacts go, but not another one.
  const bucket = options.bucket ?? process.env.REFINERY_BUCKET ?? 'refinery';
  if (plan.storage.bucket !== undefined && plan.storage.bucket !== bucket) {
    problems.push({ file, line: loaded.lineOf(['storage', 'bucket']), field: 'storage.bucket', message: `"${plan.storage.bucket}" is not this deployment's bucket "${bucket}" (REFINERY_BUCKET); one deployment writes to one bucket` });
  }
  if (problems.length > 0) throw new InputError(problems);
  return { plan, datasets };
}

/**
 * Every stage that renders conversations (a dataset in any format but text) must have a chat
 * template: its own `template` (or the pipeline's), one an earlier stage on its model's path set
 * (that stage saves the template with its output), or the base model's own. Named templates must
 * exist. s3:// and named base models are checked when the run starts.
 */
async function chatTemplateProblems(plan: PipelinePlan, loaded: Awaited<ReturnType<typeof loadSpecFile>>, file: string): Promise<InputProblem[]> {
  const byId = new Map(plan.stages.map((s) => [s.id, s]));
  const specIndex = (id: string) => (loaded.spec.stages ?? []).findIndex((s: { id?: string }) => s.id === id);
  const inherited = (stage: PlannedStage): string | undefined => {
    const from = 'stage' in stage.inputs.model ? byId.get(stage.inputs.model.stage) : undefined;
    return stage.template ?? (from ? inherited(from) : undefined);
  };
  const local = plan.baseModel.startsWith('s3://') || isModelName(plan.baseModel) ? undefined : plan.baseModel;
  const problems: InputProblem[] = [];
  for (const stage of plan.stages) {
    const i = specIndex(stage.id);
    const own = i >= 0 && (loaded.spec.stages?.[i] as { template?: string } | undefined)?.template !== undefined;
    const at: (string | number)[] = stage.template === undefined ? ['stages', i] : own ? ['stages', i, 'template'] : ['template'];
    const message = await checkChatTemplate({
      modelDir: local,
      template: inherited(stage),
      needsChat: stage.dataset !== undefined && stage.dataset.format !== 'text',
    });
    // An unknown name is reported where it is written (once for the pipeline's own `template`).
    if (message === null || (stage.template === undefined && inherited(stage) !== undefined)) continue;
    if (at[0] === 'template' && problems.some((p) => p.field === 'template')) continue;
    const field = stage.template === undefined ? `stages[${i}].template` : formatPath(at);
    problems.push({ file, line: loaded.lineOf(at), field, message: `stage "${stage.id}": ${message}` });
  }
  return problems;
}
