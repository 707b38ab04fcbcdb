/**
 * What a worker's toolchain digest covers (worker/toolchain.ts), with the real jobs Python: each
 * part changed alone changes the digest of the kinds it shapes — the Python environment (a
 * distribution more on PYTHONPATH), the trainer (a script's content), llama.cpp's tools (gguf only),
 * the job code, the worker's output version — and the same toolchain in another place does not.
 * The keys and runs on the real stack: test/integration/toolchain-keys.test.ts.
 */
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../config/paths.js';
import { jobsPython } from '../../config/worker.js';
import { describeWorkerToolchain, toolchainDifferences, toolchainDigest, type DescribeOptions } from '../../worker/toolchain.js';

let work: string;
const python = jobsPython();

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'refinery-toolchain-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function file(rel: string, content: string): Promise<string> {
  const p = path.join(work, rel);
  await mkdir(path.dirname(p), { recursive: true });
  await writeFile(p, content);
  return p;
}

const base = (over: Partial<DescribeOptions> = {}): DescribeOptions => ({
  jobCommand: (kind) => [python, '-m', `refinery_jobs.${kind}`],
  kinds: ['sft', 'dpo', 'gguf'],
  python,
  llamaCppEnv: {},
  env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
  ...over,
});

describe('worker toolchain', () => {
  it('describes the jobs Python: its version and installed distributions', async () => {
    const t = await describeWorkerToolchain(base());
    expect(t.parts.pythonEnv?.python).toMatch(/^3\.\d+/);
    expect(t.parts.pythonEnv!.distributions).toBeGreaterThan(10); // torch, transformers, trl, …
    expect(t.digest('sft')).toMatch(/^tc-[0-9a-f]{20}$/);
    // Described twice, the same.
    expect((await describeWorkerToolchain(base())).digest('sft')).toBe(t.digest('sft'));
  });

  it('a distribution more in the Python environment (PYTHONPATH) is another toolchain for every kind', async () => {
    const before = await describeWorkerToolchain(base());
    const site = path.join(work, 'site');
    await file('site/fakepkg-1.0.dist-info/METADATA', 'Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n');
    const after = await describeWorkerToolchain(base({ env: { ...base().env, PYTHONPATH: site } }));
    expect(after.parts.pythonEnv!.distributions).toBe(before.parts.pythonEnv!.distributions + 1);
    for (const kind of ['sft', 'dpo', 'gguf'] as const) expect(after.digest(kind)).not.toBe(before.digest(kind));
    expect(toolchainDifferences(before.parts, after.parts, 'sft')).toEqual(['python environment']);
    // A version bump of that distribution too.
    await file('site/fakepkg-1.0.dist-info/METADATA', 'Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.1\n');
    const bumped = await describeWorkerToolchain(base({ env: { ...base().env, PYTHONPATH: site } }));
    expect(bumped.digest('sft')).not.toBe(after.digest('sft'));
  });

  it("another trainer, or a new version of its script, is another toolchain; the same script elsewhere is not", async () => {
    const v1 = await file('a/trainer.py', 'import runpy\nrunpy.run_module("refinery_jobs.testjob", run_name="__main__")  # v1\n');
    const command = (script: string): DescribeOptions['jobCommand'] => () => [python, script];
    const a = await describeWorkerToolchain(base({ jobCommand: command(v1) }));
    expect(a.digest('sft')).not.toBe((await describeWorkerToolchain(base())).digest('sft'));
    const elsewhere = await file('b/trainer.py', 'import runpy\nrunpy.run_module("refinery_jobs.testjob", run_name="__main__")  # v1\n');
    expect((await describeWorkerToolchain(base({ jobCommand: command(elsewhere) }))).digest('sft')).toBe(a.digest('sft'));
    await file('a/trainer.py', 'import runpy\nrunpy.run_module("refinery_jobs.testjob", run_name="__main__")  # v2\n');
    const b = await describeWorkerToolchain(base({ jobCommand: command(v1) }));
    expect(b.digest('sft')).not.toBe(a.digest('sft'));
    expect(toolchainDifferences(a.parts, b.parts, 'sft')).toEqual(['trainer']);
  });

  it("llama.cpp's tools are part of a gguf stage's toolchain only", async () => {
    const quantize = await file('llama/llama-quantize', 'binary v1');
    const a = await describeWorkerToolchain(base({ llamaCppEnv: { REFINERY_LLAMA_QUANTIZE: quantize } }));
    await writeFile(quantize, 'binary v2');
    const b = await describeWorkerToolchain(base({ llamaCppEnv: { REFINERY_LLAMA_QUANTIZE: quantize } }));
    expect(b.digest('gguf')).not.toBe(a.digest('gguf'));
    expect(b.digest('sft')).toBe(a.digest('sft'));
    expect(toolchainDifferences(a.parts, b.parts, 'gguf')).toEqual(['llama.cpp tools']);
  });

  it('the job code and the worker output version are part of it', async () => {
    const jobs = path.join(work, 'jobs');
    await cp(path.join(REPO_ROOT, 'jobs', 'refinery_jobs'), path.join(jobs, 'refinery_jobs'), { recursive: true, filter: (src) => !src.includes('__pycache__') });
    await cp(path.join(REPO_ROOT, 'jobs', 'requirements.txt'), path.join(jobs, 'requirements.txt'));
    const a = await describeWorkerToolchain(base({ jobsDir: jobs }));
    expect(a.digest('sft')).toBe((await describeWorkerToolchain(base())).digest('sft'));
    await writeFile(path.join(jobs, 'refinery_jobs', 'sft.py'), '# changed\n', { flag: 'a' });
    const b = await describeWorkerToolchain(base({ jobsDir: jobs }));
    expect(b.digest('sft')).not.toBe(a.digest('sft'));
    expect(toolchainDifferences(a.parts, b.parts, 'sft')).toEqual(['job code']);
    expect(toolchainDigest({ ...a.parts, workerOutput: a.parts.workerOutput + 1 }, 'sft')).not.toBe(a.digest('sft'));
  });
});
