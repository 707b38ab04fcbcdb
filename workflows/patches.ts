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

/**
 * Attempt budgets (issue #19): the stage workflow runs one activity attempt at a time and decides
 * each retry itself (workflows/attempt-policy.ts): infrastructure failures draw on their own
 * budget, out of memory halves the batch, divergence resumes before it began, a retry avoids the
 * host that failed. Before it: Temporal's retry policy counted every failure alike.
 */
export const ATTEMPT_BUDGETS = 'attempt-budgets';

/**
 * Cache keys that cover what ran (issue #20): each stage's key and the run's fingerprint include
 * the toolchain its task queue's workers would train it with (workflows/toolchains.ts); a worker
 * of another toolchain declines the attempt. Before it: keys covered the job code only.
 */
export const TOOLCHAIN_KEYS = 'toolchain-keys';

/**
 * Nightly retraining that ships (issue #20): an eval stage's `baseline` alias is resolved when the
 * stage starts and scored beside the candidate; a plan's `promote` step points a registry alias
 * at a stage's output once every stage completed. Runs started before it have neither.
 */
export const BASELINES_AND_PROMOTE = 'baselines-and-promote';

/**
 * Signed approvals (issue #20): the approval update waits for the control worker's verifyApproval
 * (activities/approvals.ts) before the decision counts — a signature checked against the workers'
 * approvers file, refused with the reason otherwise — and the trail's `approval` event records the
 * signature. Checked where the update is handled, so runs already waiting at a gate take it too;
 * updates handled before it replay as they were (accepted at once, unsigned).
 */
export const SIGNED_APPROVALS = 'signed-approvals';

/**
 * Notifications (issue #17): the run tells the control worker's `notify` activity what happened —
 * run completed, failed, cancelled or unchanged, a stage failed, an approval gate waits, the
 * promote step's result — and the worker posts it to its webhooks (config/webhooks.ts). Runs
 * started before it schedule no notify activity.
 */
export const NOTIFICATIONS = 'notifications';
