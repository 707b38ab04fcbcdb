/**
 * Patch ids of behaviour changes in workflow code (docs/operations.md, "Deploying a workflow
 * change"). A run started before a patch replays — and carries on — along the old path; new runs
 * take the new one. Remove a patch's old path only once no run started before it can still be open
 * (then `deprecatePatch`, then delete), and re-record the replay fixtures when you do.
 */

/**
 * History independent of training time (issue #11): live progress only in heartbeat details (the
 * training activity no longer signals the run); attempts recorded in the bucket by the worker and
 * anchored in the trail once per attempt when the stage ends; audit events appended in batches.
 */
export const HISTORY_V2 = 'history-v2';
