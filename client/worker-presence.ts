/**
 * Whether any worker polls the task queues a watched run needs. With none, a run waits forever and
 * `run --watch` would show nothing: this says so within seconds, naming the queue and the command
 * that starts a worker for it, and says again when one shows up. Polls come from DescribeTaskQueue.
 */
import type { Client } from '@temporalio/client';
// A CommonJS module: Node's ESM loader gives it as one default export.
import proto from '@temporalio/proto';
import { CONTROL_TASK_QUEUE } from '../config/temporal.js';

/** A task queue the run needs someone to poll. */
export interface QueueNeed {
  taskQueue: string;
  /** Workflow tasks (the control queue) or activity tasks (a stage's training queue). */
  kind: 'workflow' | 'activity';
  /** What waits on it, for the message: "the run's workflows", "stage sft". */
  waiting: string;
}

/** The control queue: every run's workflows and control activities. */
export const CONTROL_QUEUE_NEED: QueueNeed = { taskQueue: CONTROL_TASK_QUEUE, kind: 'workflow', waiting: "the run's workflows and control activities" };

/** How to start a worker that serves a queue (the control one, or a stage's GPU queue). */
export function workerCommandFor(need: QueueNeed): string {
  return need.taskQueue === CONTROL_TASK_QUEUE ? 'bin/refinery worker' : `bin/refinery worker --no-control --queue ${need.taskQueue}`;
}

/** Remembers what was said per queue: one warning when no worker polls, one line when one shows up. */
export class PresenceNotices {
  private readonly warned = new Set<string>();

  observe(need: QueueNeed, polled: boolean): string | undefined {
    const key = `${need.kind}:${need.taskQueue}`;
    if (!polled && !this.warned.has(key)) {
      this.warned.add(key);
      return `no worker polls task queue "${need.taskQueue}" (${need.waiting} wait on it): nothing moves until one does. Start one: ${workerCommandFor(need)}`;
    }
    if (polled && this.warned.delete(key)) return `a worker polls task queue "${need.taskQueue}" now`;
    return undefined;
  }
}

/**
 * Pollers seen within this long count as live. A live worker's long poll lasts up to ~70 s before
 * it polls again, and the server keeps a stopped worker's last poll listed for minutes.
 */
const POLLER_FRESH_MS = 90_000;

/** Whether a worker polled the queue lately (undefined: the server could not say). */
export async function queueHasPollers(client: Client, need: QueueNeed, now = Date.now()): Promise<boolean | undefined> {
  const { TaskQueueType, TaskQueueKind } = proto.temporal.api.enums.v1;
  try {
    const res = await client.workflowService.describeTaskQueue({
      namespace: client.options.namespace,
      taskQueue: { name: need.taskQueue, kind: TaskQueueKind.TASK_QUEUE_KIND_NORMAL },
      taskQueueType: need.kind === 'workflow' ? TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW : TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    });
    return (res.pollers ?? []).some((p) => {
      const seconds = p.lastAccessTime?.seconds;
      return seconds == null || now - Number(seconds) * 1000 < POLLER_FRESH_MS;
    });
  } catch {
    return undefined;
  }
}

export interface PresenceWatchOptions {
  client: Client;
  /** The queues needed now (the control queue, and the queues of running stages). */
  needs: () => QueueNeed[];
  /** Where the notices go. */
  write: (line: string) => void;
  /** First look after this long: a worker that is there picks the run up at once. */
  graceMs?: number;
  intervalMs?: number;
  /** For tests: how a queue's pollers are looked up. */
  hasPollers?: (need: QueueNeed) => Promise<boolean | undefined>;
}

/** Checks the needed queues every few seconds until stopped. */
export function watchWorkerPresence(o: PresenceWatchOptions): { stop: () => void } {
  const notices = new PresenceNotices();
  const hasPollers = o.hasPollers ?? ((need: QueueNeed) => queueHasPollers(o.client, need));
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const check = async () => {
    for (const need of o.needs()) {
      const polled = await hasPollers(need);
      if (stopped) return;
      const line = polled === undefined ? undefined : notices.observe(need, polled);
      if (line) o.write(line);
    }
    if (!stopped) timer = setTimeout(() => void check(), o.intervalMs ?? 2000).unref();
  };
  timer = setTimeout(() => void check(), o.graceMs ?? 5000).unref();
  return {
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
