/**
 * Writes a pipeline spec, a fake base model and datasets into a temp folder (tests and the fault suite);
 * for the real jobs, the demo data and a tiny model built from it (writeTinyModelFixture).
 */
import { cp, mkdir, mkdtemp, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { REPO_ROOT } from '../../config/paths.js';

/** `into`: rewrite the spec of an earlier call's folder (same base model and data). */
export async function writeTestSpec(spec: Record<string, unknown>, into?: string): Promise<{ dir: string; file: string }> {
  if (into) {
    const file = path.join(into, 'pipeline.yaml');
    await writeFile(file, stringify({ base_model: './base', datasets: { chats: { path: 'data/sft.jsonl', format: 'chat' } }, ...spec }));
    return { dir: into, file };
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'refinery-spec-'));
  await mkdir(path.join(dir, 'base'), { recursive: true });
  await writeFile(path.join(dir, 'base', 'config.json'), JSON.stringify({ model_type: 'test', seed: Math.random() }));
  await mkdir(path.join(dir, 'data'));
  for (const f of ['sft.jsonl', 'preference.jsonl', 'prompts.jsonl']) await cp(path.join(REPO_ROOT, 'demo', 'data', f), path.join(dir, 'data', f));
  const file = path.join(dir, 'pipeline.yaml');
  await writeFile(file, stringify({ base_model: './base', datasets: { chats: { path: 'data/sft.jsonl', format: 'chat' } }, ...spec }));
  return { dir, file };
}

/** A folder with the demo data and a tiny Llama built from it (jobs/refinery_jobs/make_tiny_model.py), for the real jobs. */
export interface TinyModelFixture {
  dir: string;
  /** The model, relative to `dir` (a spec written into `dir` names it as its base_model). */
  baseModel: string;
  /** Dataset files relative to `dir`, by demo file name without extension (sft, preference, prompts, …). */
  data: Record<string, string>;
}

/**
 * Copies demo/data into `dir` (default: a new temp folder) and builds the tiny model there with the
 * jobs' Python (`--seed`, default 0: the same model every time). About 6 s of CPU.
 */
export async function writeTinyModelFixture(options: { python: string; dir?: string; seed?: number }): Promise<TinyModelFixture> {
  const dir = options.dir ?? (await mkdtemp(path.join(tmpdir(), 'refinery-tiny-')));
  await mkdir(path.join(dir, 'data'), { recursive: true });
  await cp(path.join(REPO_ROOT, 'demo', 'data'), path.join(dir, 'data'), { recursive: true });
  const names = (await readdir(path.join(dir, 'data'))).filter((f) => f.endsWith('.jsonl')).sort();
  const data = Object.fromEntries(names.map((f) => [f.replace(/\.jsonl$/, ''), path.join('data', f)]));
  const baseModel = path.join('models', 'tiny-llama');
  await execa(
    options.python,
    ['-m', 'refinery_jobs.make_tiny_model', '--out', path.join(dir, baseModel), '--seed', String(options.seed ?? 0), '--data', ...names.map((f) => path.join(dir, 'data', f))],
    { cwd: path.join(REPO_ROOT, 'jobs'), env: { HF_HUB_OFFLINE: '1' } },
  );
  return { dir, baseModel, data };
}
