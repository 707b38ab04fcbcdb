/**
 * The real thing, end to end on CPU: the demo pipelines (SFT → reward → PPO → merge → GGUF, and
 * the DPO variant) train for real on a tiny model built here, through the real worker, Temporal
 * and MinIO; the GGUF export is loaded and checked in llama.cpp before it is committed.
 */
import { cp, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { parse, stringify } from 'yaml';
import { startRun } from '../../client/commands/run.js';
import { readCommitted, verifyCommitted } from '../../storage/commit.js';
import { REPO_ROOT } from '../../config/paths.js';
import { jobsPython } from '../../config/worker.js';
import { startTestWorkers, testClient, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';

let workers: TestWorkers;
let client: Client;
let close: () => Promise<void>;
let demoDir: string;
const prefix = `e2e-${Date.now()}`;

beforeAll(async () => {
  useTestStackEnv();
  demoDir = await mkdtemp(path.join(tmpdir(), 'refinery-demo-'));
  await cp(path.join(REPO_ROOT, 'demo', 'data'), path.join(demoDir, 'data'), { recursive: true });
  await execa(jobsPython(), ['-m', 'refinery_jobs.make_tiny_model', '--out', path.join(demoDir, 'models', 'tiny-llama'), '--data', ...['sft', 'preference', 'prompts'].map((f) => path.join(demoDir, 'data', `${f}.jsonl`))], {
    cwd: path.join(REPO_ROOT, 'jobs'),
    env: { HF_HUB_OFFLINE: '1' },
  });
  for (const spec of ['pipeline.yaml', 'pipeline-dpo.yaml']) {
    const doc = parse(await readFile(path.join(REPO_ROOT, 'demo', spec), 'utf8')) as { storage: { prefix: string } };
    doc.storage.prefix = prefix;
    await writeFile(path.join(demoDir, spec), stringify(doc));
  }
  workers = await startTestWorkers({}); // the real Python jobs
  ({ client, close } = await testClient());
}, 600_000);

afterAll(async () => {
  await close?.();
  await workers?.shutdown();
});

describe('demo pipelines, trained for real', () => {
  it('SFT → reward → PPO → merge → GGUF completes; every artifact verifies; llama.cpp matches HF greedy on f16', async () => {
    const { handle } = await startRun(client, path.join(demoDir, 'pipeline.yaml'), { id: `e2e-rlhf-${Date.now()}` });
    const { status, artifacts } = await handle.result();
    expect(status.state).toBe('completed');
    expect(status.stages.map((s) => [s.id, s.state])).toEqual([
      ['sft', 'completed'],
      ['reward', 'completed'],
      ['ppo', 'completed'],
      ['merge', 'completed'],
      ['gguf', 'completed'],
    ]);
    const byId = Object.fromEntries(status.stages.map((s) => [s.id, s]));
    expect(byId.reward!.metrics.accuracy).toBeGreaterThanOrEqual(0.8); // also enforced by the spec's gate
    expect(byId.gguf!.metrics.gguf_f16_greedy_match).toBe(1);
    expect(byId.gguf!.metrics.gguf_f16_tokenizer_match).toBe(1);

    const store = testStore();
    for (const a of Object.values(artifacts)) expect(await verifyCommitted(store, a.prefix)).toEqual([]);
    const gguf = await readCommitted(store, artifacts.gguf!.prefix);
    expect(gguf!.manifest.files.map((f) => f.path)).toEqual(expect.arrayContaining(['model-f16.gguf', 'model-q8_0.gguf', 'model-q4_0.gguf', 'gguf_check.json']));
    const merged = await readCommitted(store, artifacts.merge!.prefix);
    expect(merged!.manifest.files.map((f) => f.path)).toEqual(expect.arrayContaining(['config.json', 'model.safetensors', 'tokenizer.json']));
  });

  it('the DPO variant reuses the committed SFT stage, trains DPO for real and exports with llama.cpp\'s own tools', async () => {
    const { handle } = await startRun(client, path.join(demoDir, 'pipeline-dpo.yaml'), { id: `e2e-dpo-${Date.now()}` });
    const { status } = await handle.result();
    expect(status.stages.map((s) => [s.id, s.state])).toEqual([
      ['sft', 'reused'],
      ['dpo', 'completed'],
      ['merge', 'completed'],
      ['gguf', 'completed'],
    ]);
    const gguf = status.stages.find((s) => s.id === 'gguf')!;
    expect(gguf.metrics.gguf_f16_greedy_match).toBe(1);
    // q4_0 comes from llama-quantize, and llama.cpp loaded it for the check.
    expect(gguf.metrics).toHaveProperty('gguf_q4_0_greedy_match');
  });
});
