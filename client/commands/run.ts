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
import { ChangeLines } from '../watch-lines.js';
import { CONTROL_QUEUE_NEED, watchWorkerPresence, type QueueNeed } from '../worker-presence.js';
import { validateSpec } from './validate.js';
import { EXIT } from '../exit-codes.js';

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
  /** Each stage's task queue, for `watchRun`'s worker check. */
  stageQueues: Record<string, string>;
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
  if (!RUN_ID.test(runId)) throw new CliError(`run id "${runId}" is not valid`, 'use lowercase letters, digits, "-" and "_"', EXIT.badInput);
  const stageIds = new Set(plan.stages.map((s) => s.id));
  for (const s of options.forceStages ?? []) if (!stageIds.has(s)) throw new CliError(`no stage "${s}" in ${specFile}`, `its stages: ${[...stageIds].join(', ')}`, EXIT.badInput);
  try {
    const handle = await client.workflow.start(pipelineWorkflow, {
      workflowId: runId,
      taskQueue: CONTROL_TASK_QUEUE,
      args: [{ runId, plan, requestedBy: whoAmI(options.by), resumeFrom: options.resumeFrom, forceStages: options.forceStages }],
    });
    return { runId, handle, stageQueues: Object.fromEntries(plan.stages.map((st) => [st.id, st.taskQueue])) };
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      throw new CliError(`run "${runId}" is already running`, `watch it with "refinery status ${runId}", or pick another --id`, EXIT.badInput);
    }
    throw err;
  }
}

export interface WatchOptions {
  /** Where progress goes (default stdout): redrawn in place on a terminal, a line per change elsewhere. */
  out?: NodeJS.WritableStream;
  /** Where "no worker polls …" notices go (default: `out`, as lines of their own). */
  notice?: (line: string) => void;
  /** Each stage's task queue (the plan's resources.task_queue): checked for workers while it runs. */
  stageQueues?: Record<string, string>;
  intervalMs?: number;
}

/**
 * Polls the run's status (with live progress) until it ends; returns the final status. On a
 * terminal the table is redrawn in place; elsewhere (CI logs, nohup) a line per change is printed
 * and the final table once. Meanwhile it says when no worker polls a queue the run waits on.
 */
export async function watchRun(client: Client, handle: WorkflowHandle<typeof pipelineWorkflow>, options: WatchOptions = {}): Promise<PipelineStatus> {
  const out = options.out ?? process.stdout;
  const tty = (out as NodeJS.WriteStream).isTTY === true;
  const eta = new EtaTracker();
  const changes = new ChangeLines();
  let lastText = '';
  let lastLines = 0;
  let latest: PipelineStatus | undefined;
  const resultPromise = handle.result().then(
    (r: PipelineResult) => r.status,
    (err: unknown) => handle.query(statusQuery).catch(() => finalStatusFromError(err)),
  );
  let final: PipelineStatus | undefined;
  resultPromise.then((s) => (final = s)).catch(() => undefined);
  const notice =
    options.notice ??
    ((line: string) => {
      out.write(line + '\n');
      // The redraw must not erase the notice: the next table goes below it.
      lastLines = 0;
      lastText = '';
    });
  const presence = watchWorkerPresence({
    client,
    write: notice,
    needs: () => [CONTROL_QUEUE_NEED, ...stageQueueNeeds(latest, options.stageQueues ?? {})],
  });
  try {
    for (;;) {
      // Live step/loss come from the stage workflows' heartbeat details (client/live-progress.ts).
      const queried = final ? undefined : await handle.query(statusQuery).catch(() => undefined);
      const status = final ?? (queried ? await withLiveProgress(client, queried) : undefined);
      if (status) {
        latest = status;
        const etas = eta.update(status);
        if (tty) {
          const text = renderStatus(status, etas);
          if (text !== lastText) {
            if (lastLines > 0) out.write(`\x1b[${lastLines}F\x1b[J`);
            out.write(text + '\n');
            lastText = text;
            lastLines = text.split('\n').length;
          }
        } else {
          // The end is the whole table once (its first line is the run's final state).
          if (final) out.write(renderStatus(final) + '\n');
          else for (const line of changes.update(status, etas)) out.write(line + '\n');
        }
      }
      if (final) return final;
      await Promise.race([resultPromise, new Promise((r) => setTimeout(r, options.intervalMs ?? 1000))]);
    }
  } finally {
    presence.stop();
  }
}

/**
 * The GPU queues of the stages still to run: the run asks each for its toolchain before any stage
 * starts, and each stage's jobs run there. A stage at its approval gate or done needs none.
 */
export function stageQueueNeeds(status: PipelineStatus | undefined, stageQueues: Record<string, string>): QueueNeed[] {
  const byQueue = new Map<string, string[]>();
  for (const s of status?.stages ?? []) {
    const queue = stageQueues[s.id];
    if (!queue || (s.state !== 'pending' && s.state !== 'running')) continue;
    byQueue.set(queue, [...(byQueue.get(queue) ?? []), s.id]);
  }
  return [...byQueue].map(([taskQueue, ids]) => ({ taskQueue, kind: 'activity', waiting: `${ids.length > 1 ? 'stages' : 'stage'} ${ids.join(', ')}` }));
}

function finalStatusFromError(err: unknown): PipelineStatus {
  return statusFromFailure(err) ?? { runId: '?', pipeline: '?', state: 'failed', stages: [], error: (err as Error).message };
}
