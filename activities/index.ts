/** The activities a worker registers: control ones on the CPU queue, training on GPU queues. */
export { createControlActivities } from './control.js';
export { createTrainingActivities } from './run-stage-job.js';
export { createAuditActivities } from './audit.js';
export { createApprovalActivities } from './approvals.js';
export { createRegistryActivities } from './registry.js';
export { createNotificationActivities } from './notify.js';
