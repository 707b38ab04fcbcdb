/** `refinery make-tiny-model`: runs the Python model maker (no model hub needed). */
import path from 'node:path';
import { execa } from 'execa';
import { REPO_ROOT } from '../../config/paths.js';
import { jobsPython } from '../../config/worker.js';
import { CliError } from '../errors.js';
import { EXIT } from '../exit-codes.js';

/** The families jobs/refinery_jobs/families.py builds (`llama`: the demo's model, tokenizer trained on --data). */
export const FAMILIES = ['llama', 'llama3', 'qwen2', 'mistral', 'phi3', 'gemma'] as const;

export async function makeTinyModel(opts: { out: string; data: string[]; seed: string; family?: string }): Promise<string> {
  const family = opts.family ?? 'llama';
  if (!(FAMILIES as readonly string[]).includes(family)) throw new CliError(`unknown family "${family}"; one of ${FAMILIES.join(', ')}`, undefined, EXIT.badInput);
  const out = path.resolve(opts.out);
  // Only the demo's Llama trains its tokenizer on text; the others take their family's real one.
  const data = family === 'llama' ? ['--data', ...opts.data.map((d) => path.resolve(d))] : [];
  const result = await execa(
    jobsPython(),
    ['-m', 'refinery_jobs.make_tiny_model', '--family', family, '--out', out, '--seed', opts.seed, ...data],
    { cwd: path.join(REPO_ROOT, 'jobs'), reject: false, stdio: ['ignore', 'inherit', 'inherit'], env: { HF_HUB_OFFLINE: '1' } },
  );
  if (result.exitCode !== 0) throw new CliError(`make-tiny-model failed (exit ${result.exitCode})`);
  return `tiny ${family} model written to ${out}`;
}
