/**
 * The CLI as scripts and newcomers meet it, through the real binary on the real test stack: --json
 * output that parses (cancel, approve, reject included) and JSON errors on stderr, the documented
 * exit codes, `completion bash`, and `run --watch` saying within seconds that no worker polls a
 * queue the run waits on (then that one showed up), with a line per change off a terminal.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import type { Client } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../config/paths.js';
import { CONTROL_TASK_QUEUE } from '../../config/temporal.js';
import { startTestWorkers, testClient, testJobCommand, testStackEnv, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';

const BIN = path.join(REPO_ROOT, 'bin', 'refinery');
const PREFIX = 'it-cli-scripting';
const tag = () => randomBytes(3).toString('hex');

const refinery = (args: string[], env: Record<string, string> = {}) => execa(BIN, args, { reject: false, env: { ...testStackEnv(), ...env } });

/** A process's stdout so far, line by line (execa keeps the whole output only at the end). */
function collectLines(child: ResultPromise): { lines: string[] } {
  const out = { lines: [] as string[] };
  let partial = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    const parts = (partial + chunk.toString('utf8')).split('\n');
    partial = parts.pop()!;
    out.lines.push(...parts);
  });
  return out;
}

/** Waits for a line of the output; on timeout the error shows the output so far. */
async function lineOf(out: { lines: string[] }, what: string, match: (line: string) => boolean, timeoutMs: number): Promise<string> {
  return until(what, async () => out.lines.find(match), timeoutMs, 100).catch((err: Error) => {
    throw new Error(`${err.message}; output so far:\n${out.lines.join('\n')}`);
  });
}

let client: Client;
let closeClient: () => Promise<void>;

beforeAll(async () => {
  useTestStackEnv();
  ({ client, close: closeClient } = await testClient());
});
afterAll(async () => {
  await closeClient?.();
});

describe('exit codes and JSON errors', () => {
  it('a bad spec exits 2; with --json the error is one JSON object on stderr and stdout is empty', async () => {
    const text = await refinery(['validate', 'nope.yaml']);
    expect(text.exitCode).toBe(2);
    expect(text.stderr).toMatch(/^error: nope\.yaml: cannot read the spec: ENOENT$/m);
    const json = await refinery(['validate', 'nope.yaml', '--json']);
    expect(json.exitCode).toBe(2);
    expect(json.stdout).toBe('');
    expect(JSON.parse(json.stderr)).toEqual({ error: 'nope.yaml: cannot read the spec: ENOENT', exitCode: 2 });
    const usage = await refinery(['approve', 'x', '--json']);
    expect(usage.exitCode).toBe(2);
    expect(JSON.parse(usage.stderr)).toMatchObject({ error: expect.stringMatching(/required option/), exitCode: 2 });
  });

  it('an unknown run exits 4, in Temporal and in the bucket', async () => {
    const status = await refinery(['status', 'no-such-run', '--json']);
    expect(status.exitCode).toBe(4);
    expect(JSON.parse(status.stderr)).toEqual({ error: 'no run "no-such-run"', hint: 'see "refinery list"', exitCode: 4 });
    for (const args of [['cancel', 'no-such-run'], ['approve', 'no-such-run', '--stage', 's', '--by', 'me', '--reason', 'r'], ['audit', 'no-such-run', '--prefix', PREFIX]]) {
      expect((await refinery(args)).exitCode, args.join(' ')).toBe(4);
    }
  });

  it('Temporal out of reach exits 3', async () => {
    const r = await refinery(['status', 'x', '--json'], { TEMPORAL_ADDRESS: '127.0.0.1:1' });
    expect(r.exitCode).toBe(3);
    expect(JSON.parse(r.stderr)).toMatchObject({ error: 'cannot reach Temporal at 127.0.0.1:1', exitCode: 3 });
  });

  it('audit verify exits 1 on a run with problems, its --json report on stdout', async () => {
    const runId = `broken-${tag()}`;
    const store = testStore();
    await store.ensureBucket();
    await store.putBytes(`${PREFIX}/runs/${runId}/status.json`, Buffer.from('not json'));
    const r = await refinery(['audit', 'verify', runId, '--prefix', PREFIX, '--json']);
    expect(r.exitCode).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ runId, ok: false, exitCode: 1 });
  });
});

describe('refinery completion', () => {
  it('bash: the script parses and completes top-level commands and options', async () => {
    const script = (await refinery(['completion', 'bash'])).stdout;
    expect((await execa('bash', ['-n'], { input: script, reject: false })).exitCode).toBe(0);
    const complete = async (words: string) =>
      (await execa('bash', ['-c', `source <(${BIN} completion bash); COMP_WORDS=(${words}); COMP_CWORD=$((\${#COMP_WORDS[@]} - 1)); _refinery; echo "\${COMPREPLY[*]}"`])).stdout.trim();
    expect(await complete('refinery sta')).toBe('status stack');
    expect(await complete('refinery worker dr')).toBe('drain');
    expect(await complete('refinery run spec.yaml --wa')).toBe('--watch');
  });

  it('an unknown shell exits 2', async () => {
    expect((await refinery(['completion', 'fish'])).exitCode).toBe(2);
  });
});

describe('run --watch without workers', () => {
  it('says within seconds that no worker polls the control queue, and how to start one; cancel --json', async () => {
    // A namespace of its own: the shared one's control queue still lists other tests' workers.
    const namespace = `cli-no-workers-${tag()}`;
    await client.workflowService.registerNamespace({ namespace, workflowExecutionRetentionPeriod: msToTs('1 day') });
    await until('the new namespace', async () => (await client.workflowService.describeNamespace({ namespace })).namespaceInfo?.name === namespace, 30_000, 500);
    const { file } = await writeTestSpec({ name: 'cli-no-workers', storage: { prefix: PREFIX }, stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 2 } }] });
    const runId = `cli-no-workers-${tag()}`;
    const env = { ...testStackEnv(), TEMPORAL_NAMESPACE: namespace };
    // The namespace may take a few seconds to reach the frontend's cache.
    const child = execa(BIN, ['run', file, '--id', runId, '--watch'], { reject: false, env });
    const out = collectLines(child);
    try {
      await lineOf(out, 'started run', (l) => l.startsWith(`started run ${runId}`), 60_000);
      const started = Date.now();
      const warning = await lineOf(out, 'the warning', (l) => l.startsWith('no worker polls'), 15_000);
      expect(Date.now() - started).toBeLessThan(10_000);
      expect(warning).toBe(`no worker polls task queue "${CONTROL_TASK_QUEUE}" (the run's workflows and control activities wait on it): nothing moves until one does. Start one: bin/refinery worker`);
      const cancel = await execa(BIN, ['cancel', runId, '--json'], { reject: false, env });
      expect(cancel.exitCode).toBe(0);
      expect(JSON.parse(cancel.stdout)).toEqual({ runId, cancellationRequested: true });
    } finally {
      child.kill('SIGTERM');
      await child;
    }
  });
});

describe('run --watch with a control worker but no worker on the stage queue', () => {
  let workers: TestWorkers | undefined;
  let gpuWorkers: TestWorkers | undefined;
  beforeAll(async () => {
    workers = await startTestWorkers({ control: true, trainingQueues: [] });
  });
  afterAll(async () => {
    await gpuWorkers?.shutdown();
    await workers?.shutdown();
  });

  it('names the queue, says when a worker shows up, prints a line per change; approve/reject --json', async () => {
    const queue = `cli-q-${tag()}`;
    const stages = [
      { id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 600 }, job_params: { step_seconds: 0.05 }, resources: { task_queue: queue }, gate: { approval: { timeout: '10m' } } },
      { id: 'merge', kind: 'merge', from: 'sft', job_params: { step_seconds: 0.01 }, resources: { task_queue: queue }, gate: { approval: { timeout: '10m' } } },
    ];
    const { file } = await writeTestSpec({ name: 'cli-stage-queue', storage: { prefix: PREFIX }, stages });
    const runId = `cli-stage-queue-${tag()}`;
    const began = Date.now();
    const child = refinery(['run', file, '--id', runId, '--watch']);
    const out = collectLines(child);
    try {
      await lineOf(out, 'started run', (l) => l.startsWith(`started run ${runId}`), 60_000);
      const started = Date.now();
      const warning = await lineOf(out, 'the stage-queue warning', (l) => l.includes(`task queue "${queue}"`), 15_000);
      expect(Date.now() - started).toBeLessThan(10_000);
      expect(warning).toBe(`no worker polls task queue "${queue}" (stages sft, merge wait on it): nothing moves until one does. Start one: bin/refinery worker --no-control --queue ${queue}`);

      gpuWorkers = await startTestWorkers({ control: false, trainingQueues: [queue], jobCommand: testJobCommand() });
      await lineOf(out, 'the worker to be noticed', (l) => l === `a worker polls task queue "${queue}" now`, 20_000);

      const awaiting = (stage: string) => lineOf(out, `${stage} to await approval`, (l) => l.startsWith(`${stage}: awaiting-approval`), 120_000);
      await awaiting('sft');
      const approve = await refinery(['approve', runId, '--stage', 'sft', '--by', 'tester', '--reason', 'looks good', '--json']);
      expect(approve.exitCode, approve.stderr).toBe(0);
      expect(JSON.parse(approve.stdout)).toMatchObject({ runId, stage: 'sft', approved: true, by: 'tester', signed: false, outcome: expect.any(String) });
      await awaiting('merge');
      const reject = await refinery(['reject', runId, '--stage', 'merge', '--by', 'tester', '--reason', 'not this one', '--json']);
      expect(reject.exitCode, reject.stderr).toBe(0);
      expect(JSON.parse(reject.stdout)).toMatchObject({ runId, stage: 'merge', approved: false });

      const result = await child;
      expect(result.exitCode).toBe(1); // rejected: the run failed
      const seconds = (Date.now() - began) / 1000;
      // The old watch reprinted the table (a line per stage, and the run's) every second something moved.
      const finalTable = out.lines.map((l) => l.startsWith(`run ${runId} `)).lastIndexOf(true);
      expect(out.lines[finalTable]).toMatch(/: failed — stage "merge" rejected by tester: not this one$/);
      expect(out.lines.length, out.lines.join('\n')).toBeLessThan(seconds * stages.length);
      expect(finalTable, out.lines.join('\n')).toBeLessThan((seconds * stages.length) / 2); // the line-per-change part
      expect(out.lines.filter((l) => /^sft: \d+%/.test(l)).length).toBeLessThanOrEqual(20);
      expect(out.lines).toContainEqual(expect.stringMatching(/^sft: completed {2}600\/600/));
      expect(out.lines[finalTable + 2]).toMatch(/^ {2}merge +merge +failed /); // the final table, once
    } finally {
      child.kill('SIGTERM');
    }
  });
});
