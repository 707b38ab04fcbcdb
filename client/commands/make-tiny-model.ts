/** `refinery make-tiny-model`: runs the Python model maker (no model hub needed). */
import path from 'node:path';
import { execa } from 'execa';
import { REPO_ROOT } from '../../config/paths.js';
import { jobsPython } from '../../config/worker.js';
import { CliError } from '../errors.js';

export async function makeTinyModel(opts: { out: string; data: string[]; seed: string }): Promise<string> {
  const out = path.resolve(opts.out);
  const result = await execa(
    jobsPython(),
    ['-m', 'refinery_jobs.make_tiny_model', '--out', out, '--seed', opts.seed, '--data', ...opts.data.map((d) => path.resolve(d))],
    { cwd: path.join(REPO_ROOT, 'jobs'), reject: false, stdio: ['ignore', 'inherit', 'inherit'], env: { HF_HUB_OFFLINE: '1' } },
  );
  if (result.exitCode !== 0) throw new CliError(`make-tiny-model failed (exit ${result.exitCode})`);
  return `tiny model written to ${out}`;
}
