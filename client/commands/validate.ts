/** `refinery validate spec.yaml`: schema, references, cycles and every dataset line, without running. */
import { stat } from 'node:fs/promises';
import { validateJsonlFile } from '../../spec/datasets.js';
import { formatPath, InputError, type InputProblem } from '../../spec/errors.js';
import { loadSpecFile } from '../../spec/load.js';
import { planPipeline, type PipelinePlan } from '../../spec/plan.js';

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
    for (const ds of [stage.dataset, stage.evalDataset]) {
      if (!ds || seen.has(ds.name)) continue;
      seen.add(ds.name);
      if (ds.path.startsWith('s3://')) {
        datasets.push({ name: ds.name, path: ds.path, rows: null }); // checked when the run starts
        continue;
      }
      if (!(await stat(ds.path).then((s) => s.isFile()).catch(() => false))) {
        const at = declaredAt(ds.name);
        problems.push({ file, line: loaded.lineOf(at), field: formatPath(at), message: `dataset "${ds.name}": ${ds.path} does not exist` });
        continue;
      }
      const report = await validateJsonlFile(ds.path, ds.format, ds.path);
      problems.push(...report.problems);
      datasets.push({ name: ds.name, path: ds.path, rows: report.rows });
    }
  }
  if (!plan.baseModel.startsWith('s3://') && !(await stat(plan.baseModel).then((s) => s.isDirectory()).catch(() => false))) {
    problems.push({ file, line: loaded.lineOf(['base_model']), field: 'base_model', message: `${plan.baseModel} is not a directory (the demo builds one with "npx refinery make-tiny-model")` });
  }
  // One deployment serves one bucket (its workers' REFINERY_BUCKET): a spec may name it, to be
  // sure where its artifacts go, but not another one.
  const bucket = options.bucket ?? process.env.REFINERY_BUCKET ?? 'refinery';
  if (plan.storage.bucket !== undefined && plan.storage.bucket !== bucket) {
    problems.push({ file, line: loaded.lineOf(['storage', 'bucket']), field: 'storage.bucket', message: `"${plan.storage.bucket}" is not this deployment's bucket "${bucket}" (REFINERY_BUCKET); one deployment writes to one bucket` });
  }
  if (problems.length > 0) throw new InputError(problems);
  return { plan, datasets };
}
