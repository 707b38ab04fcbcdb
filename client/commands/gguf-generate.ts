/**
 * `refinery gguf-generate --run ID --stage gguf --prompt TEXT`: downloads a run's committed GGUF
 * export (verified) and generates from it with llama.cpp through the model's own chat template.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { llamaThreadsFor } from '../../activities/gguf-check.js';
import { committedFileKey, downloadCommitted, readCommitted } from '../../storage/commit.js';
import { layout } from '../../storage/layout.js';
import { ObjectStore } from '../../storage/object-store.js';
import type { PipelineStatus } from '../../workflows/types.js';
import { CliError } from '../errors.js';
import { EXIT } from '../exit-codes.js';

export async function ggufGenerate(opts: { run: string; stage: string; prompt: string; type: string; prefix: string; maxTokens: number }): Promise<{ file: string; uri: string; text: string }> {
  const store = new ObjectStore();
  const status = await store.getJson<PipelineStatus>(`${layout.run(opts.prefix, opts.run)}/status.json`);
  if (!status) throw new CliError(`no finished run "${opts.run}" under ${store.uri(opts.prefix)}`, 'pass --prefix if the spec sets storage.prefix', EXIT.notFound);
  const stage = status.stages.find((s) => s.id === opts.stage);
  if (!stage?.artifact) throw new CliError(`run "${opts.run}" has no output for stage "${opts.stage}"`, `see: refinery status ${opts.run}`, EXIT.notFound);
  const artifact = await readCommitted(store, stage.artifact.prefix);
  if (!artifact) throw new CliError(`${stage.artifact.uri} is not committed`);
  const name = `model-${opts.type}.gguf`;
  if (!artifact.manifest.files.some((f) => f.path === name)) throw new CliError(`${stage.artifact.uri} has no ${name}`, `available: ${artifact.manifest.files.map((f) => f.path).join(', ')}`, EXIT.notFound);
  const dir = await mkdtemp(path.join(tmpdir(), 'refinery-gguf-'));
  await downloadCommitted(store, { ...artifact, manifest: { ...artifact.manifest, files: artifact.manifest.files.filter((f) => f.path === name) } }, dir);

  const { getLlama, LlamaChatSession } = await import('node-llama-cpp');
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' as never });
  const model = await llama.loadModel({ modelPath: path.join(dir, name) });
  const context = await model.createContext({ contextSize: 512, threads: await llamaThreadsFor(path.join(dir, name)) });
  const session = new LlamaChatSession({ contextSequence: context.getSequence() });
  const text = await session.prompt(opts.prompt, { temperature: 0, maxTokens: opts.maxTokens });
  await context.dispose();
  await model.dispose();
  return { file: name, uri: store.uri(committedFileKey(artifact, name)), text };
}
