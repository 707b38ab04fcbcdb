/**
 * `refinery run spec.yaml [--id ID] [--watch] [--resume-from RUN] [--force-stage S...]`:
 * validates everything locally first (no GPU time is spent on bad input), then starts the run.
 */
import { userInfo } from 'node:os';
import { WorkflowExecutionAlreadyStartedError, type Client, type WorkflowHandle } from '@temporalio/client';
import { CONTROL_TASK_QUEUE } from '../../config/temporal.js';
import { pipelineWorkflow, type PipelineResult } from '../../workflows/pipeline.js';
import type { PipelineStatus } from '../../workflows/types.js';
import { statusQuery } from '../../workflows/messages.js';
import { statusFromFailure, withLiveProgress } from '../live-progress.js';
import { CliError } from '../errors.js';
import { EtaTracker, renderStatus } from '../render.js';
import { validateSpec } from './validate.js';

export interface RunOptions {
  id?: string;
  watch?: boolean;
  resumeFrom?: string;
  forceStages?: string[];
  by?: string;
  /** Where live progress goes (default stdout). */
  out?: NodeJS.WritableStream;
}

export interface RunStarted {
  runId: string;
  handle: WorkflowHandle<typeof pipelineWorkflow>;
}

const RUN_ID = /^[a-z0-9][a-z0-9_-]{0,100}$/;

export function newRunId(pipeline: string, now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15).toLowerCase();
  return `${pipeline}-${stamp}-${Math.random().toString(36).slice(2, 6)}`;
}

export function whoAmI(by?: string): string {
  return by ?? process.env.REFINERY_USER ?? userInfo().username;
}

export async function startRun(client: Client, specFile: string, options: RunOptions): Promise<RunStarted> {
  const { plan } = await validateSpec(specFile);
  const runId = options.id ?? newRunId(plan.name);
  if (!RUN_ID.test(runId)) throw new CliError(`run id "${runId}" is not valid`, 'use lowercase letters, digits, "-" and "_"');
  const stageIds = new Set(plan.stages.map((s) => s.id));
  for (const s of options.forceStages ?? []) if (!stageIds.has(s)) throw new CliError(`no stage "${s}" in ${specFile}`);
  try {
    const handle = await client.workflow.start(pipelineWorkflow, {
      workflowId: runId,
      taskQueue: CONTROL_TASK_QUEUE,
      args: [{ runId, plan, requestedBy: whoAmI(options.by), resumeFrom: options.resumeFrom, forceStages: options.forceStages }],
    });
    return { runId, handle };
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      throw new CliError(`run "${runId}" is already running`, `watch it with "refinery status ${runId}", or pick another --id`);
    }
    throw err;
  }
}

/** Polls the run's status (with live progress) until it ends, redrawing it; returns the final status. */
export async function watchRun(client: Client, handle: WorkflowHandle<typeof pipelineWorkflow>, out: NodeJS.WritableStream = process.stdout, intervalMs = 1000): Promise<PipelineStatus> {
  const eta = new EtaTracker();
  const tty = (out as NodeJS.WriteStream).isTTY === true;
  let lastText = '';
  let lastLines = 0;
  const resultPromise = handle.result().then(
    (r: PipelineResult) => r.status,
    (err: unknown) => handle.query(statusQuery).catch(() => finalStatusFromError(err)),
  );
  let final: PipelineStatus | undefined;
  resultPromise.then((s) => (final = s)).catch(() => undefined);
  for (;;) {
    // Live step/loss come from the stage workflows' heartbeat details (client/live-progress.ts).
    const queried = final ? undefined : await handle.query(statusQuery).catch(() => undefined);
    const status = final ?? (queried ? await withLiveProgress(client, queried) : undefined);
    if (status) {
      const text = renderStatus(status, eta.update(status));
      if (text !== lastText) {
        if (tty && lastLines > 0) out.write(`\x1b[${lastLines}F\x1b[J`);
        out.write(text + '\n');
        lastText = text;
        lastLines = text.split('\n').length;
      }
    }
    if (final) return final;
    await Promise.race([resultPromise, new Promise((r) => setTimeout(r, intervalMs))]);
  }
}

function finalStatusFromError(err: unknown): PipelineStatus {
  return statusFromFailure(err) ?? { runId: '?', pipeline: '?', state: 'failed', stages: [], error: (err as Error).message };
}
