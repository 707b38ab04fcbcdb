/**
 * Records the replay fixtures: histories of representative runs made by the workflow code in this
 * tree, on a private Temporal dev server + MinIO, with the contract test job standing in for
 * training. test/replay/replay.test.ts replays every fixture against the current workflow code.
 *
 *   npx tsx test/replay/record-histories.ts --bundle   # all scenarios → test/fixtures/histories/<commit>/
 *   npx tsx test/replay/record-histories.ts --only retried   # one scenario
 *
 * Commit first: the folder is named after HEAD, and `--bundle` keeps that code's workflow bundle
 * beside the histories (the deploy test starts runs on it).
 *
 * Re-record only on purpose (docs/operations.md): fixtures made by the code under test replay
 * trivially; the point is to replay histories that *older* code made.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import { bundleWorkflowCode, DefaultLogger, NativeConnection, Runtime } from '@temporalio/worker';
import { decideApproval, runStatus } from '../../client/commands/manage.js';
import { startRun } from '../../client/commands/run.js';
import { validateSpec } from '../../client/commands/validate.js';
import { getFreePort, readToolchain, startMinio, startTemporal } from '../../infra/stack.js';
import { ObjectStore } from '../../storage/object-store.js';
import { REPO_ROOT } from '../../config/paths.js';
import { CONTROL_TASK_QUEUE } from '../../config/temporal.js';
import { jobsPython } from '../../config/worker.js';
import { createWorkers } from '../../worker/create-workers.js';
import { pipelineWorkflow } from '../../workflows/pipeline.js';
import type { StageState } from '../../workflows/types.js';
import { writeTestSpec } from '../helpers/specs.js';

export const FIXTURES_DIR = path.join(REPO_ROOT, 'test', 'fixtures', 'histories');

export interface HistoryFixture {
  scenario: string;
  description: string;
  recordedAt: string;
  /** git commit of the workflow code that made these histories. */
  codeCommit: string;
  workflows: { workflowId: string; history: unknown }[];
}

const { values: flags } = parseArgs({ options: { bundle: { type: 'boolean', default: false }, only: { type: 'string' } } });

Runtime.install({ logger: new DefaultLogger('WARN') });
const commit = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: REPO_ROOT }).toString().trim();
const stateDir = await mkdtemp(path.join(tmpdir(), 'refinery-record-'));
const [port, minioPort, consolePort] = [await getFreePort(), await getFreePort(), await getFreePort()];
const [temporal, minio] = await Promise.all([
  startTemporal({ stateDir, port, namespace: 'refinery-record', headless: true, stopOnExit: true, timeoutMs: 120_000 }),
  startMinio({ stateDir, port: minioPort, consolePort, accessKey: 'record', secretKey: 'record-secret', bucket: 'refinery-record', stopOnExit: true, timeoutMs: 120_000 }),
]);
Object.assign(process.env, {
  TEMPORAL_ADDRESS: temporal.address,
  TEMPORAL_NAMESPACE: temporal.namespace,
  REFINERY_S3_ENDPOINT: minio.endpoint,
  REFINERY_S3_ACCESS_KEY: 'record',
  REFINERY_S3_SECRET_KEY: 'record-secret',
  REFINERY_BUCKET: 'refinery-record',
});

const workflowBundle = await bundleWorkflowCode({ workflowsPath: path.join(REPO_ROOT, 'workflows', 'index.ts'), logger: quiet() });
const nativeConnection = await NativeConnection.connect({ address: temporal.address });
const scratchDir = await mkdtemp(path.join(tmpdir(), 'refinery-record-scratch-'));
const python = jobsPython();
const workers = await createWorkers({
  connection: nativeConnection,
  namespace: temporal.namespace,
  store: new ObjectStore(),
  control: true,
  trainingQueues: ['refinery-gpu'],
  gpus: [],
  scratchDir,
  python,
  jobCommand: () => [python, '-m', 'refinery_jobs.testjob'],
  workflowBundle,
  shutdownGraceTime: '5s',
  killGraceMs: 2000,
});
const running = Promise.all(workers.map((w) => w.run()));
const connection = await Connection.connect({ address: temporal.address });
const client = new Client({ connection, namespace: temporal.namespace });

const step = { step_seconds: 0.05 };
/** The demo's shape: sft → reward (metric gate) → ppo → merge (approval gate); the gguf stage is left out (its
 * llama.cpp check needs a real model, and its workflow path is every other stage's). */
const demoStages = [
  { id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 8, save_steps: 2 }, job_params: step },
  { id: 'reward', kind: 'reward', from: 'sft', dataset: { path: 'data/preference.jsonl', format: 'preference' }, hyper: { max_steps: 4 }, job_params: step, gate: { metrics: [{ metric: 'final_loss', max: 100 }] } },
  { id: 'ppo', kind: 'ppo', policy: 'sft', reward_model: 'reward', dataset: { path: 'data/prompts.jsonl', format: 'prompts' }, hyper: { max_steps: 4, save_steps: 2 }, job_params: step },
  { id: 'merge', kind: 'merge', from: 'ppo', gate: { approval: { timeout: '1h' } } },
];

async function waitForStage(runId: string, stageId: string, states: StageState[], timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await runStatus(client, runId).catch(() => undefined);
    const st = s?.stages.find((x) => x.id === stageId);
    if (st && states.includes(st.state) && (st.state !== 'running' || st.step > 0)) return;
    if (Date.now() > deadline) throw new Error(`${runId}: stage ${stageId} never reached ${states.join('|')} (now ${st?.state})`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

async function settle(handle: { result: () => Promise<unknown> }): Promise<void> {
  await handle.result().catch(() => undefined);
}

const demo = await writeTestSpec({ name: 'replay-demo', storage: { prefix: 'replay' }, stages: demoStages });
const scenarios: { name: string; description: string; run: () => Promise<string> }[] = [
  {
    name: 'demo-approved',
    description: "the demo's shape (4 stages, metric gate, approval gate) run to completion after an approval",
    run: async () => {
      const { runId, handle } = await startRun(client, demo.file, { id: 'replay-demo-approved', by: 'recorder' });
      await waitForStage(runId, 'merge', ['awaiting-approval']);
      await decideApproval(client, runId, { stageId: 'merge', approved: true, by: 'recorder', reason: 'fixture' });
      await settle(handle);
      return runId;
    },
  },
  {
    name: 'reused',
    description: 'the same spec again: every stage reused from the cache, then approved',
    run: async () => {
      const { runId, handle } = await startRun(client, demo.file, { id: 'replay-reused', by: 'recorder' });
      await waitForStage(runId, 'merge', ['awaiting-approval']);
      await decideApproval(client, runId, { stageId: 'merge', approved: true, by: 'recorder', reason: 'fixture' });
      await settle(handle);
      return runId;
    },
  },
  {
    name: 'unchanged',
    description: 'a scheduled-style run (skipIfUnchanged) whose inputs equal the last success: ends "unchanged"',
    run: async () => {
      const { plan } = await validateSpec(demo.file);
      const handle = await client.workflow.start(pipelineWorkflow, {
        workflowId: 'replay-unchanged',
        taskQueue: CONTROL_TASK_QUEUE,
        args: [{ plan, requestedBy: 'schedule', skipIfUnchanged: true, scheduleId: 'replay-nightly' }],
      });
      await settle(handle);
      return 'replay-unchanged';
    },
  },
  {
    name: 'retried',
    description: 'a stage whose first attempt fails at step 3 and whose retry resumes from the step-2 checkpoint',
    run: async () => {
      const { file } = await writeTestSpec({
        name: 'replay-retried',
        storage: { prefix: 'replay' },
        stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 6, save_steps: 2 }, retry: { maximum_attempts: 3, initial_interval: '1s' }, job_params: { ...step, fail_at_step: 3 } }],
      });
      const { runId, handle } = await startRun(client, file, { id: 'replay-retried', by: 'recorder' });
      await settle(handle);
      return runId;
    },
  },
  {
    name: 'rejected',
    description: 'a stage behind an approval gate, rejected',
    run: async () => {
      const { file } = await writeTestSpec({
        name: 'replay-rejected',
        storage: { prefix: 'replay' },
        stages: [
          { id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 3 }, job_params: step, gate: { approval: { timeout: '1h' } } },
          { id: 'merge', kind: 'merge', from: 'sft' },
        ],
      });
      const { runId, handle } = await startRun(client, file, { id: 'replay-rejected', by: 'recorder' });
      await waitForStage(runId, 'sft', ['awaiting-approval']);
      await decideApproval(client, runId, { stageId: 'sft', approved: false, by: 'recorder', reason: 'fixture' });
      await settle(handle);
      return runId;
    },
  },
  {
    name: 'cancelled',
    description: 'a run cancelled while its first stage trains',
    run: async () => {
      const { file } = await writeTestSpec({
        name: 'replay-cancelled',
        storage: { prefix: 'replay' },
        stages: [
          { id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 200, save_steps: 5 }, job_params: { step_seconds: 0.1 } },
          { id: 'merge', kind: 'merge', from: 'sft' },
        ],
      });
      const { runId, handle } = await startRun(client, file, { id: 'replay-cancelled', by: 'recorder' });
      await waitForStage(runId, 'sft', ['running']);
      await new Promise((r) => setTimeout(r, 2500));
      await handle.cancel();
      await settle(handle);
      return runId;
    },
  },
  {
    name: 'data-error',
    description: 'a stage whose job reports a data error: failed once, never retried, the run fails',
    run: async () => {
      const { file } = await writeTestSpec({
        name: 'replay-data-error',
        storage: { prefix: 'replay' },
        stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', retry: { maximum_attempts: 3, initial_interval: '1s' }, job_params: { exit_code: 3 } }],
      });
      const { runId, handle } = await startRun(client, file, { id: 'replay-data-error', by: 'recorder' });
      await settle(handle);
      return runId;
    },
  },
];

let failed = false;
try {
  const out = path.join(FIXTURES_DIR, commit);
  await mkdir(out, { recursive: true });
  for (const scenario of scenarios) {
    if (flags.only && flags.only !== scenario.name) continue;
    const started = Date.now();
    const runId = await scenario.run();
    const ids = [runId];
    for await (const wf of client.workflow.list({ query: `WorkflowId STARTS_WITH '${runId}--'` })) ids.push(wf.workflowId);
    const fixture: HistoryFixture = { scenario: scenario.name, description: scenario.description, recordedAt: new Date().toISOString(), codeCommit: commit, workflows: [] };
    for (const workflowId of ids.sort()) {
      // The CLI prints the proto3 JSON that historyFromJSON (and the replayer) read back.
      const json = execFileSync(readToolchain().temporal, ['workflow', 'show', '--address', temporal.address, '--namespace', temporal.namespace, '--workflow-id', workflowId, '--output', 'json'], { maxBuffer: 256 << 20 });
      fixture.workflows.push({ workflowId, history: JSON.parse(json.toString('utf8')) });
    }
    const events = fixture.workflows.map((w) => `${w.workflowId}: ${(w.history as { events: unknown[] }).events.length}`).join(', ');
    await writeFile(path.join(out, `${scenario.name}.json`), JSON.stringify(fixture) + '\n');
    console.log(`[record] ${scenario.name} (${((Date.now() - started) / 1000).toFixed(1)} s): ${events}`);
  }
  if (flags.bundle) {
    const file = path.join(out, 'workflow-bundle.js');
    await writeFile(file, workflowBundle.code);
    console.log(`[record] workflow bundle of ${commit} → ${path.relative(REPO_ROOT, file)}`);
  }
} catch (err) {
  failed = true;
  console.error('[record] failed:', err);
} finally {
  await workers.fleet?.leave();
  for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
  await running.catch(() => undefined);
  await nativeConnection.close();
  await connection.close();
  await Promise.all([temporal.stop({ graceMs: 3000 }), minio.stop({ graceMs: 3000 })]);
  await rm(stateDir, { recursive: true, force: true });
  await rm(scratchDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);

function quiet() {
  const nop = () => undefined;
  return { log: nop, trace: nop, debug: nop, info: nop, warn: (m: string) => console.warn(m), error: (m: string) => console.error(m) };
}
