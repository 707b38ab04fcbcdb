/**
 * How every run ends, whatever its state: its search attribute, its last audit events, the chain's
 * head, what it cost (workflows/cost.ts), and the final status written next to the run — all of it
 * even when the run was cancelled.
 */
import { allHandlersFinished, CancellationScope, condition, upsertSearchAttributes } from '@temporalio/workflow';
import { control } from './activities.js';
import { applyCosts } from './cost.js';
import type { AuditLog } from './audit-log.js';
import { SEARCH_ATTRIBUTES } from './search-attributes.js';
import type { PipelineStatus } from './types.js';

/** `lastEvents` appends the run's closing audit events (run-finished last). */
export async function closeRun(status: PipelineStatus, audit: AuditLog, storagePrefix: string, lastEvents: () => void): Promise<void> {
  await CancellationScope.nonCancellable(async () => {
    upsertSearchAttributes({ [SEARCH_ATTRIBUTES.state]: [status.state] });
    applyCosts(status, new Date());
    // In the same batch as the closing events (one activity, as before); runs of one activity per
    // event (before history-v2) replay without it.
    if (audit.batched) audit.append('run-cost', { total: status.cost, stages: Object.fromEntries(status.stages.map((s) => [s.id, s.cost])) });
    lastEvents();
    await audit.flush();
    status.auditHead = audit.head;
    if (audit.error) status.auditError = audit.error;
    await control.finishRun({ runId: status.runId, status, storagePrefix });
  });
  await condition(allHandlersFinished);
}
