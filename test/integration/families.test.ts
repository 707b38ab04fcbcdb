/**
 * A real model family through the real stack: a tiny Qwen2 with the real Qwen2 tokenizer and chat
 * template (make_tiny_model --family qwen2) goes SFT → DPO → merge → GGUF (llama.cpp's exporter)
 * through the real worker, Temporal and MinIO, and the worker's llama.cpp check passes on every
 * file. The per-family job chains are jobs/tests/test_families.py; this one is the long form's
 * (`npm run test:families`, or REFINERY_FAMILIES set): CI runs the Python chains only.
 */
import { cp, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { stringify } from 'yaml';
import { startRun } from '../../client/commands/run.js';
import { validateSpec } from '../../client/commands/validate.js';
import { REPO_ROOT } from '../../config/paths.js';
import { jobsPython } from '../../config/worker.js';
import { startTestWorkers, testClient, useTestStackEnv, type TestWorkers } from '../helpers/env.js';

const FAMILY = 'qwen2';
const enabled = Boolean(process.env.REFINERY_FAMILIES);
let workers: TestWorkers | undefined;
let client: Client;
let close: (() => Promise<void>) | undefined;
let dir: string;
const prefix = `families-${Date.now()}`;

describe.skipIf(!enabled)(`a ${FAMILY} pipeline through the real stack`, () => {
  beforeAll(async () => {
    useTestStackEnv();
    dir = await mkdtemp(path.join(tmpdir(), 'refinery-families-'));
    await cp(path.join(REPO_ROOT, 'demo', 'data'), path.join(dir, 'data'), { recursive: true });
    await execa(jobsPython(), ['-m', 'refinery_jobs.make_tiny_model', '--family', FAMILY, '--out', path.join(dir, 'models', FAMILY)], {
      cwd: path.join(REPO_ROOT, 'jobs'),
      env: { HF_HUB_OFFLINE: '1' },
    });
    const spec = {
      name: `families-${FAMILY}`,
      base_model: `models/${FAMILY}`, // its own chat template (ChatML, from the Qwen2 vocab file)
      storage: { prefix },
      datasets: { chats: { path: 'data/sft.jsonl', format: 'chat' }, prefs: { path: 'data/preference.jsonl', format: 'preference' } },
      defaults: { finetuning: { type: 'lora', lora: { r: 8, alpha: 16, dropout: 0 } }, hyper: { batch_size: 4, max_length: 96, save_steps: 2, seed: 42 } },
      stages: [
        { id: 'sft', kind: 'sft', dataset: 'chats', finetuning: { type: 'full' }, hyper: { learning_rate: 0.003, max_steps: 4 } },
        { id: 'dpo', kind: 'dpo', from: 'sft', dataset: 'prefs', hyper: { learning_rate: 0.0005, max_steps: 4 } },
        { id: 'merge', kind: 'merge', from: 'dpo' },
        { id: 'gguf', kind: 'gguf', from: 'merge', params: { exporter: 'llama.cpp', types: ['f16', 'q8_0', 'q4_0'] } },
      ],
    };
    await writeFile(path.join(dir, 'pipeline.yaml'), stringify(spec));
    workers = await startTestWorkers({}); // the real Python jobs
    ({ client, close } = await testClient());
  }, 600_000);

  afterAll(async () => {
    await close?.();
    await workers?.shutdown();
  });

  it('validates, trains, merges and exports; llama.cpp matches HF on every file', async () => {
    await validateSpec(path.join(dir, 'pipeline.yaml'));
    const { handle } = await startRun(client, path.join(dir, 'pipeline.yaml'), { id: `families-${FAMILY}-${Date.now()}` });
    const { status } = await handle.result();
    expect(status.state).toBe('completed');
    expect(status.stages.map((s) => [s.id, s.state])).toEqual([
      ['sft', 'completed'],
      ['dpo', 'completed'],
      ['merge', 'completed'],
      ['gguf', 'completed'],
    ]);
    const gguf = status.stages.find((s) => s.id === 'gguf')!;
    expect(gguf.metrics.gguf_f16_greedy_match).toBe(1);
    for (const type of ['f16', 'q8_0', 'q4_0']) expect(gguf.metrics[`gguf_${type}_tokenizer_match`]).toBe(1);
  });
});
