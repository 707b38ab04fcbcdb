/**
 * `audit` and `audit verify`: a run's audit trail read from object storage alone (invariant 8).
 *
 *   showAudit, renderAudit    the manifest and every event (client/audit/show.ts)
 *   verifyRun, renderVerify   chain, attempt records, artifacts, run.json, secrets (client/audit/verify.ts)
 *
 * The run's records are read by client/run-records.ts; its names are re-exported here for the
 * modules that have always imported them from this one (faults/, integration tests).
 */
export { describeEvent, renderAudit, showAudit, type AuditShow } from '../audit/show.js';
export { renderVerify, verifyRun, type VerifyOptions, type VerifyResult } from '../audit/verify.js';
export { formatNumber, keyMetrics } from '../format.js';
export { checkRunRef, DEFAULT_PREFIX, readRun, storeCall, type FinalStatus, type RunManifest, type RunRecords, type RunRef } from '../run-records.js';
