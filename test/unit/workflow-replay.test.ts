/**
 * Deploys must not break runs in flight (invariant 10): every recorded history in
 * test/fixtures/histories (made by older workflow code: see test/replay/record-histories.ts) is
 * replayed against today's workflow code, and a deliberately non-deterministic edit is caught.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { bundleWorkflowCode, DefaultLogger, Runtime, Worker, type WorkflowBundle } from '@temporalio/worker';
import { beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../config/paths.js';
import type { HistoryFixture } from '../replay/record-histories.js';

const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'histories');
try {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
} catch {
  // installed already
}
const quiet = { log: () => undefined, trace: () => undefined, debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

/** One recording set per folder, named after the commit whose workflow code made it. */
async function fixtures(): Promise<HistoryFixture[]> {
  const out: HistoryFixture[] = [];
  for (const set of (await readdir(FIXTURES, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name).sort()) {
    for (const f of (await readdir(path.join(FIXTURES, set))).filter((f) => f.endsWith('.json')).sort()) {
      out.push(JSON.parse(await readFile(path.join(FIXTURES, set, f), 'utf8')) as HistoryFixture);
    }
  }
  return out;
}

async function replayAll(bundle: WorkflowBundle, all: HistoryFixture[]): Promise<{ workflowId: string; error?: Error }[]> {
  const histories = all.flatMap((f) => f.workflows.map((w) => ({ workflowId: w.workflowId, history: w.history })));
  const results: { workflowId: string; error?: Error }[] = [];
  for await (const r of Worker.runReplayHistories({ workflowBundle: bundle, replayName: 'fixtures' }, histories)) {
    results.push({ workflowId: r.workflowId, error: r.error });
  }
  return results;
}

let recorded: HistoryFixture[];
beforeAll(async () => {
  recorded = await fixtures();
});

describe('recorded histories replay against the current workflow code', () => {
  it('has the representative runs in every recording set, the pre-patch code among them', () => {
    const sets = new Map<string, string[]>();
    for (const f of recorded) sets.set(f.codeCommit, [...(sets.get(f.codeCommit) ?? []), f.scenario]);
    expect(sets.has('2d6c2d30db45')).toBe(true);
    for (const scenarios of sets.values()) expect(scenarios.sort()).toEqual(['cancelled', 'data-error', 'demo-approved', 'rejected', 'retried', 'reused', 'unchanged']);
    // A pipeline history and its stages' child histories for each.
    for (const f of recorded.filter((x) => x.scenario === 'demo-approved')) expect(f.workflows.length).toBe(5);
  });

  it('replays every pipeline and stage history without a determinism error', async () => {
    const bundle = await bundleWorkflowCode({ workflowsPath: path.join(REPO_ROOT, 'workflows', 'index.ts'), logger: quiet });
    const results = await replayAll(bundle, recorded);
    expect(results.length).toBe(recorded.reduce((n, f) => n + f.workflows.length, 0));
    expect(results.filter((r) => r.error).map((r) => `${r.workflowId}: ${r.error!.message}`)).toEqual([]);
  }, 120_000);

  it('catches a non-deterministic change', async () => {
    const bundle = await bundleWorkflowCode({ workflowsPath: path.join(REPO_ROOT, 'test', 'replay', 'nondeterministic-workflows.ts'), logger: quiet });
    const demos = recorded.filter((f) => f.scenario === 'demo-approved');
    const results = await replayAll(bundle, demos);
    const pipelines = results.filter((r) => r.workflowId === 'replay-demo-approved');
    expect(pipelines).toHaveLength(demos.length);
    for (const p of pipelines) expect(p.error?.name).toBe('DeterminismViolationError');
    // The stage workflows did not change: they still replay.
    expect(results.filter((r) => r.workflowId.includes('--')).every((r) => !r.error)).toBe(true);
  }, 120_000);
});
