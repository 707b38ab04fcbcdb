/**
 * Workflow logic under Temporal's time-skipping test server, with in-memory activities: DAG order
 * and parallelism, approval gates (approve, reject, time out after a day of skipped time), cache
 * decisions, and cancellation reaching a running stage.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { Context } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { WorkflowFailedError } from '@temporalio/client';
import { parseSpec } from '../../spec/load.js';
import { planPipeline } from '../../spec/plan.js';
import { CONTROL_TASK_QUEUE } from '../../config/temporal.js';
import { pipelineWorkflow } from '../../workflows/pipeline.js';
import { approvalUpdate, statusQuery } from '../../workflows/messages.js';
import type { PipelinePlan } from '../../spec/plan-types.js';
import type { StageCacheDecision, StageJobInput, StageJobResult } from '../../workflows/types.js';
import { readToolchain } from '../../config/toolchain.js';
import { workflowBundle } from '../helpers/env.js';
import { stringify } from 'yaml';
import { temporal } from '@temporalio/proto';
import { SEARCH_ATTRIBUTES } from '../../workflows/search-attributes.js';

let env: TestWorkflowEnvironment;

beforeAll(async () => {
  env = await TestWorkflowEnvironment.createTimeSkipping({
    server: { executable: { type: 'existing-path', path: readToolchain().temporalTestServer } },
  });
  // The workflow tags runs with search attributes; register them as `refinery stack start` does.
  await env.connection.operatorService.addSearchAttributes({
    namespace: env.namespace ?? 'default',
    searchAttributes: Object.fromEntries(Object.values(SEARCH_ATTRIBUTES).map((name) => [name, temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD])),
  });
});
afterAll(async () => {
  await env?.teardown();
});

function plan(stages: Record<string, unknown>[]): PipelinePlan {
  const text = stringify({ name: 'logic', base_model: '/models/base', datasets: { d: { path: '/data/d.jsonl', format: 'chat' } }, stages });
  return planPipeline(parseSpec(text, '/specs/logic.yaml'));
}

interface Calls {
  events: string[];
  audit?: string[];
  /** An audit batch holding an event of this type fails for good (the trail breaks there). */
  failAuditAt?: string;
  cached: Set<string>;
  jobMs: number;
}

function activities(calls: Calls) {
  const ref = (id: string) => ({ prefix: `p/${id}`, uri: `s3://b/p/${id}`, manifestSha256: `sha-${id}` });
  return {
    async prepareRun() {
      return { baseModel: ref('base'), datasets: { d: { ...ref('d'), sha256: 'd' } }, jobsVersion: 'jobs-test' };
    },
    async resolveStageCache(input: { stage: { id: string } }): Promise<StageCacheDecision> {
      const id = input.stage.id;
      return { cacheKey: `key-${id}`, artifactPrefix: `p/artifacts/${id}`, committed: calls.cached.has(id) ? { artifact: ref(id), metrics: { score: 1 } } : undefined };
    },
    async finishRun() {},
    async appendAuditEvent(input: { seq: number; event: { type: string } }) {
      (calls.audit ??= []).push(input.event.type);
      return { seq: input.seq, hash: `h${input.seq}` };
    },
    async appendAuditEvents(input: { firstSeq: number; events: { type: string }[] }) {
      if (calls.failAuditAt && input.events.some((e) => e.type === calls.failAuditAt)) {
        throw ApplicationFailure.nonRetryable('the bucket refused the write', 'AuditWriteRefused');
      }
      (calls.audit ??= []).push(...input.events.map((e) => e.type));
      const seq = input.firstSeq + input.events.length - 1;
      return { seq, hash: `h${seq}` };
    },
    async summarizeStageAttempts() {
      return [];
    },
    /** No approvers file: every decision is accepted, recorded as unsigned (activities/approvals.ts). */
    async verifyApproval() {
      return { signed: false as const };
    },
    async describeToolchain(input: { kinds: string[] }) {
      return { host: 'test', digests: Object.fromEntries(input.kinds.map((k) => [k, `tc-${k}`])), parts: {} };
    },
    async runStageJob(input: StageJobInput): Promise<StageJobResult> {
      const id = input.stage.id;
      calls.events.push(`start:${id}`);
      const ctx = Context.current();
      const deadline = Date.now() + calls.jobMs;
      while (Date.now() < deadline) {
        ctx.heartbeat();
        await Promise.race([ctx.cancelled, new Promise((r) => setTimeout(r, 20))]).catch((err: unknown) => {
          calls.events.push(`cancelled:${id}`);
          throw err;
        });
      }
      calls.events.push(`end:${id}`);
      return { artifact: ref(id), metrics: { score: Number(input.stage.params.score ?? 0.5) }, resumedFromStep: null, skippedCheckpoints: [], alreadyCommitted: false, attempt: 1, host: 'test' };
    },
  };
}

async function withWorkers<T>(calls: Calls, fn: () => Promise<T>): Promise<T> {
  const acts = activities(calls);
  const control = await Worker.create({
    connection: env.nativeConnection,
    taskQueue: CONTROL_TASK_QUEUE,
    workflowBundle: await workflowBundle(),
    activities: {
      prepareRun: acts.prepareRun,
      resolveStageCache: acts.resolveStageCache,
      finishRun: acts.finishRun,
      appendAuditEvent: acts.appendAuditEvent,
      appendAuditEvents: acts.appendAuditEvents,
      summarizeStageAttempts: acts.summarizeStageAttempts,
      verifyApproval: acts.verifyApproval,
    },
  });
  const gpu = await Worker.create({ connection: env.nativeConnection, taskQueue: 'refinery-gpu', activities: { runStageJob: acts.runStageJob, describeToolchain: acts.describeToolchain } });
  return gpu.runUntil(control.runUntil(fn()));
}

const start = (p: PipelinePlan, id: string) =>
  env.client.workflow.start(pipelineWorkflow, { workflowId: id, taskQueue: CONTROL_TASK_QUEUE, args: [{ runId: id, plan: p, requestedBy: 'test' }] });

describe('pipeline workflow logic (time-skipping server)', () => {
  it('runs independent stages in parallel and dependants after their inputs', async () => {
    const calls: Calls = { events: [], cached: new Set(), jobMs: 300 };
    const p = plan([
      { id: 'a', kind: 'sft', dataset: 'd' },
      { id: 'b', kind: 'reward', dataset: { path: '/data/p.jsonl', format: 'preference' } },
      { id: 'c', kind: 'ppo', policy: 'a', reward_model: 'b', dataset: { path: '/data/q.jsonl', format: 'prompts' } },
    ]);
    const result = await withWorkers(calls, async () => (await start(p, 'dag-order')).result());
    expect(result.status.state).toBe('completed');
    const i = (e: string) => calls.events.indexOf(e);
    expect(i('start:b')).toBeLessThan(i('end:a')); // a and b overlap
    expect(i('start:c')).toBeGreaterThan(i('end:a'));
    expect(i('start:c')).toBeGreaterThan(i('end:b'));
  });

  it('reuses a stage whose output is committed under its cache key, running nothing for it', async () => {
    const calls: Calls = { events: [], cached: new Set(['a']), jobMs: 10 };
    const p = plan([{ id: 'a', kind: 'sft', dataset: 'd' }, { id: 'm', kind: 'merge', from: 'a' }]);
    const result = await withWorkers(calls, async () => (await start(p, 'cache-reuse')).result());
    expect(result.status.stages.map((s) => s.state)).toEqual(['reused', 'completed']);
    expect(calls.events).toEqual(['start:m', 'end:m']);
  });

  it('waits at an approval gate and continues when approved, recording who and why', async () => {
    const calls: Calls = { events: [], cached: new Set(), jobMs: 10 };
    const p = plan([{ id: 'a', kind: 'sft', dataset: 'd', gate: { approval: { timeout: '2h' } } }, { id: 'm', kind: 'merge', from: 'a' }]);
    const result = await withWorkers(calls, async () => {
      const h = await start(p, 'approve-ok');
      for (;;) {
        const s = await h.query(statusQuery);
        if (s.stages[0]!.state === 'awaiting-approval') break;
        await new Promise((r) => setTimeout(r, 50));
      }
      await expect(h.executeUpdate(approvalUpdate, { args: [{ stageId: 'm', approved: true, by: 'x', reason: 'y' }] })).rejects.toThrow();
      await h.executeUpdate(approvalUpdate, { args: [{ stageId: 'a', approved: true, by: 'alice', reason: 'eval looks good' }] });
      return h.result();
    });
    expect(result.status.state).toBe('completed');
    expect(result.status.stages[0]!.gate).toBe('approved by alice: eval looks good');
    expect(calls.audit).toEqual(expect.arrayContaining(['run-started', 'run-prepared', 'stage-started', 'stage-completed', 'approval', 'run-finished']));
    expect(calls.audit![0]).toBe('run-started');
    expect(calls.audit!.at(-1)).toBe('run-finished');
    expect(calls.events).toContain('end:m');
  });

  it('fails the run when nobody approves within the timeout (a day of skipped time)', async () => {
    const calls: Calls = { events: [], cached: new Set(), jobMs: 10 };
    const p = plan([{ id: 'a', kind: 'sft', dataset: 'd', gate: { approval: { timeout: '24h' } } }, { id: 'm', kind: 'merge', from: 'a' }]);
    const err = await withWorkers(calls, async () => (await start(p, 'approve-timeout')).result().catch((e: unknown) => e));
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(String((err as WorkflowFailedError).cause?.message)).toMatch(/no approval within 86400000 ms/);
    expect(calls.events).not.toContain('start:m');
  });

  it('a rejection stops the run with who and why', async () => {
    const calls: Calls = { events: [], cached: new Set(), jobMs: 10 };
    const p = plan([{ id: 'a', kind: 'sft', dataset: 'd', gate: { approval: { timeout: '1h' } } }, { id: 'm', kind: 'merge', from: 'a' }]);
    const err = await withWorkers(calls, async () => {
      const h = await start(p, 'approve-reject');
      await waitForState(h, 'awaiting-approval');
      await h.executeUpdate(approvalUpdate, { args: [{ stageId: 'a', approved: false, by: 'bob', reason: 'reward hacking' }] });
      return h.result().catch((e: unknown) => e);
    });
    expect(String((err as WorkflowFailedError).cause?.message)).toMatch(/rejected by bob: reward hacking/);
  });

  it('cancellation reaches the running stage and the run ends cancelled', async () => {
    const calls: Calls = { events: [], cached: new Set(), jobMs: 60_000 };
    const p = plan([{ id: 'a', kind: 'sft', dataset: 'd', timeouts: { heartbeat: '2s' } }, { id: 'm', kind: 'merge', from: 'a' }]);
    const { err, status } = await withWorkers(calls, async () => {
      const h = await start(p, 'cancel-run');
      await waitForState(h, 'running');
      while (!calls.events.includes('start:a')) await new Promise((r) => setTimeout(r, 20));
      await h.cancel();
      const e = await h.result().catch((x: unknown) => x);
      return { err: e, status: await h.query(statusQuery) };
    });
    expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);
    expect(calls.events).toContain('cancelled:a');
    expect(status.state).toBe('cancelled');
    expect(status.stages.map((s) => s.state)).toEqual(['cancelled', 'skipped']);
  });
});

describe('audit trail failures are not swallowed', () => {
  it('an audit append that fails for good shows in status; the run still finishes', async () => {
    const calls: Calls = { events: [], cached: new Set(), jobMs: 10, failAuditAt: 'stage-completed' };
    const p = plan([{ id: 'a', kind: 'sft', dataset: 'd' }, { id: 'm', kind: 'merge', from: 'a' }]);
    const result = await withWorkers(calls, async () => (await start(p, 'audit-broken')).result());
    expect(result.status.state).toBe('completed');
    expect(result.status.auditError).toMatch(/audit trail incomplete after event \d+: the bucket refused the write/);
    // Nothing is written past the gap: the chain would not verify anyway.
    expect(calls.audit).not.toContain('run-finished');
  });
});

async function waitForState(h: { query: (q: typeof statusQuery) => Promise<{ stages: { state: string }[] }> }, state: string): Promise<void> {
  for (;;) {
    const s = await h.query(statusQuery).catch(() => undefined);
    if (s?.stages[0]?.state === state) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}
