/**
 * The GGUF check (activities/gguf-check.ts) runs llama.cpp in a process of its own
 * (activities/gguf-check-child.ts): on a real export (the tiny Llama, gguf-py's f16 + q8_0 from
 * the real gguf job) it passes as it did in the worker, and a native crash of that process (a real
 * SIGSEGV / SIGABRT delivered while llama.cpp is loaded in it) rejects that check only, naming the
 * file and the signal, while this process lives on and checks again. Also: its timeout, and a
 * cancelled activity's check stops its process.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkGgufDirectory, GgufCheckError, GgufCheckProcessError, type GgufFileCheck } from '../../activities/gguf-check.js';
import type { JobConfig } from '../../activities/job-contract.js';
import { pythonJobArgv, runPlainJob } from '../../bench/lib/jobs.js';
import { jobsPython } from '../../config/worker.js';
import { writeTinyModelFixture } from '../../infra/harness/specs.js';
import { Finetuning } from '../../spec/schema.js';
import { Hyper } from '../../spec/stage-params.js';

let work: string;
let exportDir: string;

/** Whether `pid` has llama.cpp's native code mapped (node-llama-cpp's addon and its libllama / libggml). */
function hasLlamaMapped(pid: number | 'self'): boolean {
  return /llama-addon\.node|libllama|libggml/.test(readFileSync(`/proc/${pid}/maps`, 'utf8'));
}

/** Resolves once `pid` no longer exists (a zombie counts as gone). */
async function gone(pid: number, withinMs = 5000): Promise<boolean> {
  const end = Date.now() + withinMs;
  for (;;) {
    try {
      const state = /^State:\s+(\S)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
      if (state === 'Z') return true;
    } catch {
      return true;
    }
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  const python = jobsPython();
  work = await mkdtemp(path.join(tmpdir(), 'refinery-gguf-check-process-'));
  const fixture = await writeTinyModelFixture({ python, dir: path.join(work, 'fixture') });
  const jobDir = path.join(work, 'gguf');
  exportDir = path.join(jobDir, 'output');
  const config: JobConfig = {
    contract: 1,
    kind: 'gguf',
    run_id: 'gguf-check-process',
    stage_id: 'gguf',
    output_dir: exportDir,
    checkpoint_dir: path.join(jobDir, 'checkpoints'),
    resume_from: null,
    inputs: { model: path.join(fixture.dir, fixture.baseModel) },
    datasets: { train: null, eval: null },
    dataset_format: null,
    finetuning: Finetuning.parse({}),
    hyper: Hyper.parse({}),
    // The default exporter (gguf-py: no llama.cpp tools needed), two files, a short reference.
    params: { exporter: 'gguf-py', types: ['f16', 'q8_0'], check_prompts: ['What is the capital of France?', 'Please tell me about the sea.'], check_new_tokens: 8 },
    job_params: {},
    chat_template: null,
  };
  await runPlainJob(pythonJobArgv('gguf', python), config, jobDir);
}, 180_000);

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('the GGUF check in a process of its own', () => {
  let first: GgufFileCheck[];

  it('passes a good export in its child process, with the metrics the in-worker check gave', async () => {
    const pids: number[] = [];
    const files: string[] = [];
    first = await checkGgufDirectory(exportDir, { onSpawn: (pid) => pids.push(pid), onFile: (file) => files.push(file) });
    expect(pids).toHaveLength(1);
    expect(pids[0]).not.toBe(process.pid);
    expect(files).toEqual(['model-f16.gguf', 'model-q8_0.gguf']);
    expect(first.map((c) => c.type)).toEqual(['f16', 'q8_0']);
    for (const c of first) {
      expect(c.loaded).toBe(true);
      expect(c.tokenizerMatch).toBe(1);
      expect(c.sample.length).toBeGreaterThan(0);
    }
    // f16 must reproduce HF's greedy tokens exactly (or the check throws); q8_0 keeps HF's choices.
    expect(first[0]!.greedyMatch).toBe(1);
    expect(first[0]!.tokenAgreement).toBe(1);
    expect(first[1]!.top5Agreement).toBeGreaterThanOrEqual(0.98);
    // llama.cpp never ran here: its native code is not mapped into this process.
    expect(hasLlamaMapped('self')).toBe(false);
  });

  it.each(['SIGSEGV', 'SIGABRT'] as const)('contains a native crash (%s) of the check process: that check fails, this process checks again', async (sig) => {
    let crashed: number | undefined;
    let llamaInIt = false;
    const check = checkGgufDirectory(exportDir, {
      onFile: (file, pid) => {
        // The check's own process (never this one), llama.cpp loaded in it, starting on its first file.
        if (crashed !== undefined || file !== 'model-f16.gguf' || pid === process.pid) return;
        llamaInIt = hasLlamaMapped(pid);
        crashed = pid;
        process.kill(pid, sig);
      },
    });
    const err = await check.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(crashed).toBeDefined();
    expect(llamaInIt).toBe(true);
    expect(err).toBeInstanceOf(GgufCheckProcessError);
    expect(err).not.toBeInstanceOf(GgufCheckError);
    const e = err as GgufCheckProcessError;
    expect(e.message).toContain(`the GGUF check's process died checking ${path.join(exportDir, 'model-f16.gguf')}: killed by ${sig}`);
    expect(e.signal).toBe(sig);
    expect(e.file).toBe('model-f16.gguf');
    expect(await gone(crashed!)).toBe(true);
    // This process lives on, llama-free, and the next check passes with the same numbers.
    expect(hasLlamaMapped('self')).toBe(false);
    expect(await checkGgufDirectory(exportDir)).toEqual(first);
  });

  it('kills a check that runs past its timeout', async () => {
    let child: number | undefined;
    const err = (await checkGgufDirectory(exportDir, { timeoutMs: 300, onSpawn: (pid) => (child = pid) }).catch((e: unknown) => e)) as GgufCheckProcessError;
    expect(err).toBeInstanceOf(GgufCheckProcessError);
    expect(err.message).toMatch(/^the GGUF check's process timed out after 0.3 s checking .* and was killed/);
    expect(await gone(child!)).toBe(true);
  });

  it("stops its process when the calling activity is cancelled (the activity's own signal by default)", async () => {
    const env = new MockActivityEnvironment();
    let child: number | undefined;
    const running = env.run(() =>
      checkGgufDirectory(exportDir, {
        onFile: (_file, pid) => {
          if (child !== undefined) return;
          child = pid;
          env.cancel('CANCELLED');
        },
      }),
    );
    const err = await running.catch((e: unknown) => e);
    expect(child).toBeDefined();
    expect(err).toBeInstanceOf(CancelledFailure);
    expect(await gone(child!)).toBe(true);
  });
});
