/** Writes a pipeline spec, a fake base model and datasets into a temp folder (tests and the fault suite). */
import { cp, mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
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
