/** `status`, `cancel`, `approve`/`reject` and `list`: small commands over a run's workflow. */
import type { Client } from '@temporalio/client';
import { listQuarantined } from '../../storage/fleet.js';
import { ObjectStore } from '../../storage/object-store.js';
import { approvalUpdate } from '../../workflows/messages.js';
import type { ApprovalDecision, Cost, PipelineStatus } from '../../workflows/types.js';
import { SEARCH_ATTRIBUTES } from '../../workflows/search-attributes.js';
import { CliError } from '../errors.js';
import { currentRunStatus, finishedRunStatus } from '../live-progress.js';
import { EXIT } from '../exit-codes.js';
import { formatSeconds } from '../render.js';

/** The bucket, when this shell has storage settings (a finished run's status may be read from it). */
function storeIfConfigured(): ObjectStore | undefined {
  try {
    return new ObjectStore();
  } catch {
    return undefined;
  }
}

/**
 * A run's status: live for an open run (the workflow's status plus each running stage's heartbeat
 * details), and for a closed one from its result or the bucket, with no worker running.
 */
export async function runStatus(client: Client, runId: string, store: ObjectStore | undefined = storeIfConfigured()): Promise<PipelineStatus> {
  try {
    const status = await currentRunStatus(client, runId, store);
    // Quarantined hosts take no GPU work: a run that waits may wait for them (storage/fleet.ts).
    const quarantined = store ? await listQuarantined(store).catch(() => []) : [];
    return quarantined.length > 0 ? { ...status, quarantinedHosts: quarantined.map((q) => ({ host: q.host, since: q.since, reason: q.reason })) } : status;
  } catch (err) {
    if ((err as Error).name === 'WorkflowNotFoundError') throw new CliError(`no run "${runId}"`, 'see "refinery list"', EXIT.notFound);
    throw err;
  }
}

export async function cancelRun(client: Client, runId: string): Promise<void> {
  await client.workflow.getHandle(runId).cancel();
}

/** Sends a decision (signed or not: client/commands/signing.ts); a refusal is a CliError with the workflow's reason. */
export async function decideApproval(client: Client, runId: string, decision: ApprovalDecision): Promise<string> {
  try {
    return await client.workflow.getHandle(runId).executeUpdate(approvalUpdate, { args: [decision] });
  } catch (err) {
    const msg = (err as { cause?: { message?: string } }).cause?.message ?? (err as Error).message;
    const notFound = (err as Error).name === 'WorkflowNotFoundError';
    throw new CliError(`cannot ${decision.approved ? 'approve' : 'reject'}: ${msg}`, notFound ? 'see "refinery list"' : undefined, notFound ? EXIT.notFound : EXIT.problems);
  }
}

export interface RunSummary {
  runId: string;
  pipeline: string | undefined;
  state: string | undefined;
  startTime: string;
  closeTime?: string;
  /** A finished run's cost (workflows/cost.ts), from its result or status.json; absent for runs before it. */
  cost?: Cost;
}

/** Lists pipeline runs through the visibility store (same filters as the Temporal UI). */
export async function listRuns(client: Client, filter: { state?: string; pipeline?: string; since?: string; limit?: number }): Promise<RunSummary[]> {
  const clauses = [`WorkflowType = 'pipelineWorkflow'`];
  if (filter.state) clauses.push(`${SEARCH_ATTRIBUTES.state} = '${quote(filter.state)}'`);
  if (filter.pipeline) clauses.push(`${SEARCH_ATTRIBUTES.pipeline} = '${quote(filter.pipeline)}'`);
  if (filter.since) {
    const since = new Date(filter.since);
    if (Number.isNaN(since.getTime())) throw new CliError(`--since "${filter.since}" is not a date`, 'use e.g. 2026-11-01 or 2026-11-01T12:00:00Z', EXIT.badInput);
    clauses.push(`StartTime >= '${since.toISOString()}'`);
  }
  const out: RunSummary[] = [];
  for await (const wf of client.workflow.list({ query: clauses.join(' AND ') })) {
    const attrs = wf.searchAttributes as Record<string, unknown[] | undefined>;
    out.push({
      runId: wf.workflowId,
      pipeline: attrs[SEARCH_ATTRIBUTES.pipeline]?.[0] as string | undefined,
      state: (attrs[SEARCH_ATTRIBUTES.state]?.[0] as string | undefined) ?? wf.status.name.toLowerCase(),
      startTime: wf.startTime.toISOString(),
      closeTime: wf.closeTime?.toISOString(),
    });
    if (out.length >= (filter.limit ?? 50)) break;
  }
  // What each finished run cost: one close-event read per run (no worker needed).
  const store = storeIfConfigured();
  for (const r of out) {
    if (!r.closeTime) continue;
    const cost = (await finishedRunStatus(client, r.runId, store).catch(() => undefined))?.cost;
    if (cost) r.cost = cost;
  }
  return out;
}

/** `list`'s text: a line per run, with its wall time, attempts and GPU-hours once it finished. */
export function renderRunList(runs: RunSummary[]): string {
  if (runs.length === 0) return 'no runs';
  const cost = (c?: Cost) => (c ? `${c.wallSeconds === null ? '?' : formatSeconds(c.wallSeconds)} wall, ${c.attempts} attempt${c.attempts === 1 ? '' : 's'}, ${(c.gpuSeconds / 3600).toFixed(2)} GPU-h` : '');
  return runs.map((r) => `${r.runId.padEnd(40)} ${String(r.pipeline).padEnd(20)} ${String(r.state).padEnd(10)} ${r.startTime}  ${cost(r.cost)}`.trimEnd()).join('\n');
}

function quote(v: string): string {
  if (!/^[A-Za-z0-9_.-]+$/.test(v)) throw new CliError(`invalid filter value "${v}"`, 'letters, digits, ".", "_" and "-"', EXIT.badInput);
  return v;
}
