/** Every fault kind's module, by name (faults/types.ts lists the names, docs/reliability.md what each exercises). */
import type { TestJobFaultKind } from '../types.js';
import { badNode } from './bad-node.js';
import { cancel } from './cancel.js';
import { corruptCheckpoint } from './corrupt-checkpoint.js';
import { divergence } from './divergence.js';
import { drain } from './drain.js';
import { jobHang } from './job-hang.js';
import type { FaultKindModule } from './kind.js';
import { minioOutage } from './minio-outage.js';
import { oom } from './oom.js';
import { scratchFull } from './scratch-full.js';
import { temporalOutage } from './temporal-outage.js';
import { temporalRestart } from './temporal-restart.js';
import { workerKill } from './worker-kill.js';

export type { FaultKindModule, Outcome, TargetSetup, Trial, TrialPlan } from './kind.js';

export const FAULTS: Record<TestJobFaultKind, FaultKindModule> = {
  'worker-kill': workerKill,
  'temporal-restart': temporalRestart,
  'temporal-outage': temporalOutage,
  'minio-outage': minioOutage,
  'corrupt-checkpoint': corruptCheckpoint,
  'scratch-full': scratchFull,
  'job-hang': jobHang,
  cancel,
  drain,
  oom,
  divergence,
  'bad-node': badNode,
};
