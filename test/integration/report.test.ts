/**
 * `refinery report` on a real run with a retry (the contract test job fails once at a step after
 * a committed checkpoint, so attempt 2 resumes) and an approval gate: the page names every stage,
 * shows the failed attempt, draws the loss of both attempts with the resume marked, lists the
 * artifact and dataset hashes, escapes what people typed, and needs nothing outside itself.
 */
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { startRun } from '../../client/commands/run.js';
import { decideApproval, runStatus } from '../../client/commands/manage.js';
import { buildReport, writeReport } from '../../client/commands/report.js';
import { renderReport } from '../../client/report/html.js';
import { assemble } from '../../client/report/model.js';
import { readRun, type JobEventLine } from '../../client/run-records.js';
import { COLORS } from '../../client/report/svg.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { startTestWorkers, testClient, testJobCommand, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { writeTestSpec } from '../helpers/specs.js';

const PREFIX = 'it-report';
const WHO = 'tester <qa@example.com>';
const REASON = '<b>ship it</b> & "go"';

let workers: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;
let store: ObjectStore;
let runId: string;

beforeAll(async () => {
  useTestStackEnv();
  store = testStore();
  workers = await startTestWorkers({ jobCommand: testJobCommand() });
  ({ client, close: closeClient } = await testClient());
  const { file } = await writeTestSpec({
    name: 'report-test',
    storage: { prefix: PREFIX },
    datasets: { chats: { path: 'data/sft.jsonl', format: 'chat' }, prefs: { path: 'data/preference.jsonl', format: 'preference' } },
    stages: [
      {
        id: 'sft',
        kind: 'sft',
        dataset: 'chats',
        hyper: { max_steps: 8, save_steps: 2 },
        job_params: { step_seconds: 0.05, fail_at_step: 5 },
        retry: { maximum_attempts: 3, initial_interval: '1s' },
      },
      { id: 'rm', kind: 'reward', dataset: 'prefs', hyper: { max_steps: 4 }, job_params: { step_seconds: 0.02 }, gate: { metrics: [{ metric: 'final_loss', max: 5 }], approval: { timeout: '5m' } } },
      { id: 'merge', kind: 'merge', from: 'sft', job_params: { step_seconds: 0.01 } },
    ],
  });
  const started = await startRun(client, file, { id: `report-${Date.now()}`, by: WHO });
  runId = started.runId;
  const deadline = Date.now() + 120_000;
  while ((await runStatus(client, runId)).stages.find((s) => s.id === 'rm')!.state !== 'awaiting-approval') {
    if (Date.now() > deadline) throw new Error('rm never reached its approval gate');
    await new Promise((r) => setTimeout(r, 200));
  }
  await decideApproval(client, runId, { stageId: 'rm', approved: true, by: 'lead', reason: REASON });
  await started.handle.result();
});
afterAll(async () => {
  await closeClient?.();
  await workers?.shutdown();
});

describe('refinery report', () => {
  it('writes one self-contained HTML page about the run', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'refinery-report-'));
    const out = path.join(dir, 'report.html');
    const result = await writeReport({ runId, prefix: PREFIX, store, out });
    expect(result).toMatchObject({ runId, file: out, stages: 3, exitCode: 0 });
    expect(result.charts).toBe(3); // loss of sft, rm and merge (the test job reports a loss for every kind)
    const html = await readFile(out, 'utf8');

    // Self-contained: no scripts, no external references of any kind.
    expect(html.startsWith('<!DOCTYPE html>')).toBe(true);
    expect(html).not.toMatch(/<script|\bsrc=|\bhref=|https?:\/\/|@import|url\((?!#)/i);

    // Header: run id, pipeline, state, who (escaped), spec sha256.
    const manifest = (await readRun({ runId, prefix: PREFIX, store })).manifest!;
    expect(html).toContain(`<h1>Run ${runId} <span class="badge st-completed">completed</span></h1>`);
    expect(html).toContain('pipeline <b>report-test</b>');
    expect(html).toContain('tester &lt;qa@example.com&gt;');
    expect(html).toContain(manifest.specSha256);

    // Timeline: one row per stage, the failed attempt in red, the resumed attempt labelled.
    for (const id of ['sft', 'rm', 'merge']) expect(html).toContain(`class="row-label">${id}</text>`);
    expect(html).toMatch(new RegExp(`fill="${COLORS.failed}"><title>sft attempt 1 \\(failed\\)`));
    expect(html).toMatch(/<title>sft attempt 2 \(ok, resumed from step 4\)/);
    expect(html).toContain('class="row-note" fill="#d0382f">'); // the sft row's note: 2 attempts, 1 failed
    expect(html).toMatch(/2 attempts, 1 failed/);
    expect(html).toMatch(/fill="#e6c14a"><title>rm: waited for approval/);

    // Failures and retries: which attempt, the reason from the job, what happened next.
    expect(html).toContain('<h2>Failures and retries</h2>');
    expect(html).toMatch(/<td>sft<\/td><td class="num">1<\/td><td class="bad">failed<\/td>/);
    expect(html).toContain('testjob: injected failure at step 5');
    expect(html).toContain('retried: attempt 2 resumed from step 4 (ok)');

    // Loss curve of sft: an SVG with one polyline per attempt and the resume marked.
    const sftChart = html.slice(html.indexOf('aria-label="sft — loss"'), html.indexOf('</svg>', html.indexOf('aria-label="sft — loss"')));
    expect(sftChart.length).toBeGreaterThan(0);
    expect(sftChart.match(/<polyline /g)).toHaveLength(2);
    expect(sftChart).toContain('attempt 2 resumes @ step 4');
    expect(sftChart).toContain('<title>attempt 1 (failed)</title>');
    expect(sftChart).toContain('<title>checkpoint at step 4</title>');
    expect(html).toMatch(/<svg class="chart"[^>]*aria-label="rm — loss"/);

    // Metrics, gates and approvals (escaped), artifacts and datasets with their hashes.
    expect(html).toMatch(/<span title="final_loss">final_loss<\/span><span>1\.1111<\/span>/);
    expect(html).toMatch(/<td>rm<\/td><td>metric gate<\/td><td class="ok">passed<\/td><td>passed: final_loss = /);
    expect(html).toContain(`<td>rm</td><td>approval</td><td class="ok">approved</td><td>approved by lead: &lt;b&gt;ship it&lt;/b&gt; &amp; &quot;go&quot;</td>`);
    expect(html).not.toContain(REASON);
    const status = (await runStatus(client, runId)).stages;
    for (const s of status) expect(html).toContain(`<span class="hash">${s.artifact!.manifestSha256}</span>`);
    for (const [name, d] of Object.entries(manifest.datasets!)) expect(html).toMatch(new RegExp(`<td>${name}</td><td>[^<]*</td><td><span class="hash">${d.sha256}</span>`));
    expect(html).toContain(`refinery audit verify ${runId} --prefix ${PREFIX}`);
  });

  it('draws reward metrics per step, escapes job-supplied names, and copes with a run with no trail', async () => {
    const run = await readRun({ runId, prefix: PREFIX, store });
    const t = (s: number) => new Date(Date.parse(run.manifest!.startedAt) + s * 1000).toISOString();
    const ppo: JobEventLine[] = [
      { at: t(1), attempt: 1, event: 'started', total_steps: 3 },
      ...[1, 2, 3].map((step) => ({ at: t(1 + step), attempt: 1, event: 'progress', step, total_steps: 3, loss: 1 / step, metrics: { reward_mean: step * 0.5, '<kl>': 0.1 } })),
      { at: t(5), attempt: 1, event: 'metrics', step: 3, metrics: { eval_reward_mean: 1.7 } },
      { at: t(6), attempt: 1, event: 'done' },
    ];
    const { html } = renderReport(assemble(run, new Map([['ppo', new Map([[1, ppo]])]])), new Date());
    const reward = html.slice(html.indexOf('aria-label="ppo — reward"'));
    expect(reward.slice(0, reward.indexOf('</svg>')).match(/<polyline /g)).toHaveLength(2); // reward_mean, eval_reward_mean
    expect(reward).toContain('<title>reward_mean</title>');
    expect(html).not.toContain('<kl>');

    // The same page for a run that has only run.json and status.json (before audit trails existed).
    const bare = renderReport(assemble({ ...run, records: [], status: { ...run.status!, auditHead: undefined } }, new Map()), new Date()).html;
    expect(bare).toContain('no audit trail stored');
    expect(bare).toContain('class="row-label">sft</text>');
    expect(bare).toContain('2 attempts'); // status.json counts them
    expect(bare).toContain('No progress events stored');
  });

  it('refuses an unknown run with one line, and a report can be built without writing', async () => {
    await expect(buildReport({ runId: 'nope', prefix: PREFIX, store })).rejects.toThrow(/^no run "nope" under s3:\/\//);
    await expect(writeReport({ runId, prefix: PREFIX, store, out: '/nonexistent-dir/x.html' })).rejects.toThrow(/cannot write \/nonexistent-dir\/x\.html: ENOENT/);
  });
});
