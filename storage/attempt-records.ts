/**
 * An attempt's own records: what one attempt of a stage did, written to the bucket by the worker
 * while it happens — started, each checkpoint committed or skipped, contract violations, ended —
 * so that none of it needs a Temporal history event (a three-day stage has the same history as a
 * three-minute one) and none of it is lost with a worker killed mid-attempt.
 *
 *   <prefix>/runs/<runId>/attempts/<stage>/attempt-N/000001.json  { seq, prevHash, event, hash }
 *
 * The records of one attempt form a hash chain of their own (storage/audit-chain.ts). When the
 * stage ends, the pipeline workflow reads every attempt's chain (`summarizeAttempts`) and appends
 * one `attempt` event per attempt to the run's audit trail, carrying the chain's length and head:
 * from then on `audit verify` checks the attempt's records against the anchored head.
 *
 * Like the trail's, each record is first written once into the object-locked audit bucket (its
 * write-once copy, the authority `audit verify` checks), then into the main bucket, same bytes.
 */
import { makeRecord, verifyChain, type AuditEvent, type AuditRecord } from './audit-chain.js';
import { layout } from './layout.js';
import { jsonBytes, type ObjectStore } from './object-store.js';
import type { AttemptAdjustments } from '../workflows/attempt-policy.js';
import type { FailureClass, FailureKind } from '../workflows/failures.js';

export type AttemptRecordType =
  | 'attempt-started'
  | 'checkpoint-committed'
  | 'checkpoint-skipped'
  /** Never uploaded: a newer checkpoint arrived while it waited for the upload queue (checkpoint-uploader.ts). */
  | 'checkpoint-superseded'
  | 'checkpoint-discarded'
  | 'contract-violation'
  | 'preflight'
  | 'diverged'
  | 'drain-requested'
  | 'attempt-ended';

/** 'drained': ended by its worker's drain after committing a checkpoint; 'declined': this host did not take it (placement). */
export type AttemptOutcome = 'completed' | 'failed' | 'cancelled' | 'reused' | 'drained' | 'declined';

/** The key of record `seq` of the attempt whose records live under `prefix` (layout.attemptRecords). */
export function attemptRecordKey(prefix: string, seq: number): string {
  return `${prefix}/${String(seq).padStart(6, '0')}.json`;
}

/** Appends records of one attempt, in order, each linked to the one before. Never throws: see `error`. */
export class AttemptRecorder {
  private seq = 0;
  private prevHash: string | null = null;
  private tail: Promise<void> = Promise.resolve();
  /** The first write that failed for good; later records are not written (the chain would have a gap). */
  error: unknown;

  constructor(
    private readonly store: ObjectStore,
    readonly prefix: string,
    /** Retries a storage write that fails transiently (the caller's policy); default: try once. */
    private readonly retry: <T>(what: string, fn: () => Promise<T>) => Promise<T> = (_what, fn) => fn(),
  ) {}

  static forAttempt(store: ObjectStore, where: { storagePrefix: string; runId: string; stageId: string; attempt: number }, retry?: AttemptRecorder['retry']): AttemptRecorder {
    return new AttemptRecorder(store, layout.attemptRecords(where.storagePrefix, where.runId, where.stageId, where.attempt), retry);
  }

  record(type: AttemptRecordType, fields: Omit<AuditEvent, 'type' | 'at'> = {}): Promise<void> {
    const event: AuditEvent = { type, at: new Date().toISOString(), ...fields };
    this.tail = this.tail.then(async () => {
      if (this.error) return;
      const record = makeRecord(this.seq + 1, this.prevHash, event);
      const key = attemptRecordKey(this.prefix, record.seq);
      const bytes = jsonBytes(record);
      try {
        await this.retry(`attempt record ${type}`, async () => {
          // A retry after the main write failed finds the copy there with the same bytes ('same').
          if (this.store.auditBucket) await this.store.putLocked(key, bytes);
          await this.store.putBytes(key, bytes, 'application/json');
        });
        this.seq = record.seq;
        this.prevHash = record.hash;
      } catch (err) {
        this.error = err;
      }
    });
    return this.tail;
  }

  /** Waits for every record so far. */
  flush(): Promise<void> {
    return this.tail;
  }
}

export interface AttemptSummary {
  attempt: number;
  host: string | null;
  /** 'lost': no `attempt-ended` record (the worker was killed, the node lost, or a write failed). */
  outcome: AttemptOutcome | 'lost';
  reason: string | null;
  resumedFromStep: number | null;
  /**
   * It got as far as its job: its inputs and the checkpoint to resume from were in place (an
   * `attempt-started` record; a declined attempt and one that reused a committed output have one
   * too). False for one that failed before: a download into a full disk, storage away at its start.
   */
  began: boolean;
  /** Steps of the checkpoints this attempt committed, in order. */
  checkpoints: number[];
  skippedCheckpoints: { step: number; reason: string }[];
  /** Checkpoints never uploaded: a newer one superseded each while it waited (checkpoint-uploader.ts). */
  supersededCheckpoints: number[];
  contractViolations: number;
  /** When its first record was written, and its `attempt-ended` record (or, for a lost one, its last). */
  startedAt: string | null;
  endedAt: string | null;
  /** The chain as read: its length and its last record's hash (what the run's trail anchors). */
  records: number;
  head: string | null;
  /** Problems with the chain itself (gaps, modified records). */
  problems: string[];
  /** Failed, drained, declined and lost attempts: whose failure it was (workflows/failures.ts). */
  failureClass?: FailureClass;
  failureKind?: FailureKind;
  /** What the attempt ran with instead of the stage's settings (out of memory, divergence). */
  adjustments?: AttemptAdjustments;
}

/** Reads one attempt's records, in order. */
export async function readAttemptRecords(store: ObjectStore, prefix: string): Promise<AuditRecord[]> {
  const keys = (await store.list(`${prefix}/`, true)).map((o) => o.key).filter((k) => /\/\d{6}\.json$/.test(k)).sort();
  const records: AuditRecord[] = [];
  for (const key of keys) {
    const r = await store.getJson<AuditRecord>(key);
    if (r) records.push(r);
  }
  return records;
}

export function summarizeAttempt(attempt: number, records: AuditRecord[]): AttemptSummary {
  const summary: AttemptSummary = {
    attempt,
    host: null,
    outcome: 'lost',
    reason: null,
    resumedFromStep: null,
    began: false,
    checkpoints: [],
    skippedCheckpoints: [],
    supersededCheckpoints: [],
    contractViolations: 0,
    startedAt: records[0]?.event.at ?? null,
    endedAt: records.at(-1)?.event.at ?? null,
    records: records.length,
    head: records.at(-1)?.hash ?? null,
    problems: verifyChain(records),
  };
  // No end record: the worker process died or its node was lost (or its last write failed).
  if (!records.some((r) => r.event.type === 'attempt-ended')) Object.assign(summary, { failureClass: 'infrastructure', failureKind: 'worker-lost' });
  for (const { event } of records) {
    switch (event.type as AttemptRecordType) {
      case 'attempt-started':
        summary.began = true;
        summary.host = (event.host as string | undefined) ?? null;
        summary.resumedFromStep = (event.resumedFromStep as number | null | undefined) ?? null;
        if (event.adjustments && typeof event.adjustments === 'object' && Object.keys(event.adjustments).length > 0) summary.adjustments = event.adjustments as AttemptAdjustments;
        break;
      case 'checkpoint-committed':
        summary.checkpoints.push(event.step as number);
        break;
      case 'checkpoint-skipped':
        summary.skippedCheckpoints.push({ step: event.step as number, reason: String(event.reason ?? '') });
        break;
      case 'checkpoint-superseded':
        summary.supersededCheckpoints.push(event.step as number);
        break;
      case 'contract-violation':
        summary.contractViolations++;
        break;
      case 'attempt-ended':
        // An attempt that failed before its start record names its host here.
        summary.host ??= (event.host as string | undefined) ?? null;
        summary.outcome = event.outcome as AttemptOutcome;
        summary.reason = (event.reason as string | null | undefined) ?? null;
        if (event.failure && typeof event.failure === 'object') {
          const f = event.failure as { class?: FailureClass; kind?: FailureKind };
          if (f.class) summary.failureClass = f.class;
          if (f.kind) summary.failureKind = f.kind;
        }
        break;
    }
  }
  return summary;
}

/** Every attempt of a stage in a run, by attempt number. */
export async function summarizeAttempts(store: ObjectStore, where: { storagePrefix: string; runId: string; stageId: string }): Promise<AttemptSummary[]> {
  const base = layout.attemptsOfStage(where.storagePrefix, where.runId, where.stageId);
  const attempts = new Set<number>();
  for (const { key } of await store.list(`${base}/`, true)) {
    const m = /\/attempt-(\d+)\/\d{6}\.json$/.exec(key);
    if (m) attempts.add(Number(m[1]));
  }
  const out: AttemptSummary[] = [];
  for (const attempt of [...attempts].sort((a, b) => a - b)) {
    out.push(summarizeAttempt(attempt, await readAttemptRecords(store, `${base}/attempt-${attempt}`)));
  }
  return out;
}
