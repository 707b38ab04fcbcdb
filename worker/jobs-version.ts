/**
 * The version of the job code, part of every cache key: a change to a job or its pinned
 * requirements invalidates the outputs it produced.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { JOB_CONTRACT_VERSION } from '../activities/job-contract.js';
import { REPO_ROOT } from '../config/paths.js';

export async function jobsVersion(jobsDir = path.join(REPO_ROOT, 'jobs')): Promise<string> {
  const hash = createHash('sha256').update(`contract:${JOB_CONTRACT_VERSION}\n`);
  const files = [path.join(jobsDir, 'requirements.txt')];
  const pkg = path.join(jobsDir, 'refinery_jobs');
  for (const name of (await readdir(pkg)).sort()) if (name.endsWith('.py')) files.push(path.join(pkg, name));
  for (const f of files) hash.update(`${path.relative(jobsDir, f)}\0`).update(await readFile(f)).update('\0');
  return `jobs-${hash.digest('hex').slice(0, 16)}`;
}

/** git SHA of the checkout (with "-dirty" when it has local changes), or "unknown". */
export async function codeVersion(): Promise<string> {
  const sha = await execa('git', ['rev-parse', 'HEAD'], { cwd: REPO_ROOT, reject: false });
  if (sha.exitCode !== 0) return 'unknown';
  const dirty = await execa('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: REPO_ROOT, reject: false });
  return `${sha.stdout.trim()}${dirty.stdout.trim() ? '-dirty' : ''}`;
}
