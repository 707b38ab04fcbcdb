/**
 * `refinery schedule create|list|describe|pause|unpause|trigger|delete`: nightly retraining on
 * Temporal Schedules. A schedule starts the pipeline workflow with the plan computed when the
 * schedule was created and `skipIfUnchanged: true`: each run resolves its s3:// dataset prefixes to
 * the newest object, and ends 'unchanged' (training nothing) when its inputs equal those of the
 * pipeline's last successful run.
 *
 * Scheduled runs get the workflow id "<scheduleId>-<RFC 3339 time>" (Temporal appends the time),
 * which is also their run id: `refinery status <that id>` works as for any run.
 */
import path from 'node:path';
import { ScheduleAlreadyRunning, ScheduleNotFoundError, ScheduleOverlapPolicy, type Client, type ScheduleHandle, type ScheduleSpec } from '@temporalio/client';
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import { parseDuration } from '../../spec/duration.js';
import { CONTROL_TASK_QUEUE } from '../../config/temporal.js';
import { pipelineWorkflow } from '../../workflows/pipeline.js';
import { SEARCH_ATTRIBUTES } from '../../workflows/search-attributes.js';
import type { PipelineInput } from '../../workflows/types.js';
import { CliError } from '../errors.js';
import { whoAmI } from './run.js';
import { validateSpec } from './validate.js';
import { EXIT } from '../exit-codes.js';

/** What `--overlap` accepts: a run still going when the next is due is skipped, queued (one), or cancelled. */
export const OVERLAP_POLICIES = {
  skip: ScheduleOverlapPolicy.SKIP,
  'buffer-one': ScheduleOverlapPolicy.BUFFER_ONE,
  'cancel-other': ScheduleOverlapPolicy.CANCEL_OTHER,
} as const;
export type OverlapName = keyof typeof OVERLAP_POLICIES;

const SCHEDULE_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const DEFAULT_CATCHUP_WINDOW = '1d';
const pipelineKey = defineSearchAttributeKey(SEARCH_ATTRIBUTES.pipeline, SearchAttributeType.KEYWORD);
const stateKey = defineSearchAttributeKey(SEARCH_ATTRIBUTES.state, SearchAttributeType.KEYWORD);

export interface ScheduleCreateOptions {
  /** Schedule id (default: the pipeline name). Runs are "<id>-<time>". */
  id?: string;
  /** Five-field cron ("0 2 * * *") or @daily, @hourly, ...: give this or `every`. */
  cron?: string;
  /** A fixed interval ("2s", "6h"): for tests and ops; give this or `cron`. */
  every?: string;
  /** IANA time zone for the cron (default UTC). */
  timezone?: string;
  /** Default skip. */
  overlap?: string;
  /** A missed run (server down) still starts if it is at most this late (default 1d). */
  catchupWindow?: string;
  /** Pause the schedule when one of its runs fails. */
  pauseOnFailure?: boolean;
  /** Who set the schedule up: recorded as requestedBy of every run it starts. */
  by?: string;
}

/** What Refinery shows of a schedule (`list` rows carry the first fields only). */
export interface ScheduleInfo {
  scheduleId: string;
  pipeline: string | undefined;
  /** "cron 0 2 * * * (Europe/Berlin)" or "every 6h", as given at create time. */
  when: string | undefined;
  paused: boolean;
  note: string | undefined;
  nextRuns: string[];
  recentRuns: { runId: string; scheduledAt: string; startedAt: string; state?: string }[];
}

export interface ScheduleDetails extends ScheduleInfo {
  spec: string | undefined;
  specSha256: string | undefined;
  createdBy: string | undefined;
  overlap: string;
  catchupWindowMs: number;
  pauseOnFailure: boolean;
  createdAt: string;
  actionsTaken: number;
  skippedOverlap: number;
  missedCatchupWindow: number;
  runningRuns: string[];
}

interface ScheduleMemo {
  pipeline: string;
  spec: string;
  specSha256: string;
  when: string;
  createdBy: string;
}

/** Checks create's timing and policy options (no I/O): bad values fail before anything else. */
export function checkCreateOptions(options: ScheduleCreateOptions): { timing: ReturnType<typeof scheduleTiming>; overlap: ScheduleOverlapPolicy; catchupWindow: number } {
  const timing = scheduleTiming(options);
  const overlap = overlapPolicy(options.overlap);
  const catchupWindow = durationOption('--catchup-window', options.catchupWindow ?? DEFAULT_CATCHUP_WINDOW);
  if (catchupWindow < 10_000) throw new CliError(`--catchup-window "${options.catchupWindow}" is shorter than 10s`, 'Temporal does not take a shorter one', EXIT.badInput);
  return { timing, overlap, catchupWindow };
}

export async function createSchedule(client: Client, specFile: string, options: ScheduleCreateOptions): Promise<ScheduleDetails> {
  const { timing, overlap, catchupWindow } = checkCreateOptions(options);
  const { plan } = await validateSpec(specFile);
  const scheduleId = options.id ?? plan.name;
  if (!SCHEDULE_ID.test(scheduleId)) throw new CliError(`schedule id "${scheduleId}" is not valid`, 'use lowercase letters, digits, "-" and "_" (at most 63)', EXIT.badInput);
  const requestedBy = whoAmI(options.by);
  const args: [PipelineInput] = [{ plan, requestedBy, skipIfUnchanged: true, scheduleId }];
  const memo: ScheduleMemo = { pipeline: plan.name, spec: path.resolve(specFile), specSha256: plan.specSha256, when: timing.when, createdBy: requestedBy };
  try {
    await client.schedule.create({
      scheduleId,
      spec: timing.spec,
      action: {
        type: 'startWorkflow',
        workflowType: pipelineWorkflow,
        args,
        taskQueue: CONTROL_TASK_QUEUE,
        workflowId: scheduleId,
        typedSearchAttributes: [{ key: pipelineKey, value: plan.name }],
      },
      policies: { overlap, catchupWindow, pauseOnFailure: options.pauseOnFailure ?? false },
      memo: { ...memo },
      typedSearchAttributes: [{ key: pipelineKey, value: plan.name }],
    });
  } catch (err) {
    if (err instanceof ScheduleAlreadyRunning) throw new CliError(`schedule "${scheduleId}" already exists`, `pick another --id, or remove it with "refinery schedule delete ${scheduleId}"`, EXIT.badInput);
    throw new CliError(`Temporal refused the schedule: ${grpcMessage(err)}`);
  }
  return describeSchedule(client, scheduleId);
}

/** Refinery's schedules (those that start pipeline runs), in id order. */
export async function listSchedules(client: Client): Promise<ScheduleInfo[]> {
  const out: ScheduleInfo[] = [];
  for await (const s of client.schedule.list()) {
    if (s.action?.workflowType !== 'pipelineWorkflow') continue;
    const memo = s.memo as Partial<ScheduleMemo> | undefined;
    out.push({
      scheduleId: s.scheduleId,
      pipeline: memo?.pipeline ?? (s.typedSearchAttributes?.get(pipelineKey) as string | undefined),
      when: memo?.when,
      paused: s.state.paused,
      note: s.state.note || undefined,
      nextRuns: s.info.nextActionTimes.map((d) => d.toISOString()),
      recentRuns: s.info.recentActions.map((a) => ({ runId: a.action.workflow.workflowId, scheduledAt: a.scheduledAt.toISOString(), startedAt: a.takenAt.toISOString() })),
    });
  }
  return out.sort((a, b) => (a.scheduleId < b.scheduleId ? -1 : 1));
}

export async function describeSchedule(client: Client, scheduleId: string): Promise<ScheduleDetails> {
  const d = await withSchedule(client, scheduleId, (h) => h.describe());
  const memo = d.memo as Partial<ScheduleMemo> | undefined;
  const recentRuns = await Promise.all(
    d.info.recentActions.map(async (a) => ({
      runId: a.action.workflow.workflowId,
      scheduledAt: a.scheduledAt.toISOString(),
      startedAt: a.takenAt.toISOString(),
      state: await runState(client, a.action.workflow.workflowId),
    })),
  );
  return {
    scheduleId,
    pipeline: memo?.pipeline ?? (d.typedSearchAttributes.get(pipelineKey) as string | undefined),
    when: memo?.when,
    paused: d.state.paused,
    note: d.state.note || undefined,
    nextRuns: d.info.nextActionTimes.map((t) => t.toISOString()),
    recentRuns,
    spec: memo?.spec,
    specSha256: memo?.specSha256,
    createdBy: memo?.createdBy,
    overlap: overlapName(d.policies.overlap),
    catchupWindowMs: d.policies.catchupWindow,
    pauseOnFailure: d.policies.pauseOnFailure,
    createdAt: d.info.createdAt.toISOString(),
    actionsTaken: d.info.numActionsTaken,
    skippedOverlap: d.info.numActionsSkippedOverlap,
    missedCatchupWindow: d.info.numActionsMissedCatchupWindow,
    runningRuns: d.info.runningActions.map((a) => a.workflow.workflowId),
  };
}

export async function pauseSchedule(client: Client, scheduleId: string, reason?: string): Promise<ScheduleDetails> {
  await withSchedule(client, scheduleId, (h) => h.pause(reason || `paused with refinery by ${whoAmI()}`));
  return describeSchedule(client, scheduleId);
}

export async function unpauseSchedule(client: Client, scheduleId: string, reason?: string): Promise<ScheduleDetails> {
  await withSchedule(client, scheduleId, (h) => h.unpause(reason || `unpaused with refinery by ${whoAmI()}`));
  return describeSchedule(client, scheduleId);
}

export interface TriggerResult {
  scheduleId: string;
  /** started: a run began; skipped: a run is still going and the overlap policy skipped this one;
   *  pending: nothing seen yet (e.g. queued behind the running one with buffer-one). */
  outcome: 'started' | 'skipped' | 'pending';
  runId?: string;
  runningRuns: string[];
}

/**
 * Starts a run now, then waits up to `waitMs` to say what happened. The schedule's own overlap
 * policy applies unless `overlap` overrides it (the SDK's `trigger()` alone would use ALLOW_ALL,
 * starting a second run next to a running one).
 */
export async function triggerSchedule(client: Client, scheduleId: string, options: { overlap?: string; waitMs?: number } = {}): Promise<TriggerResult> {
  const override = options.overlap === undefined ? undefined : overlapPolicy(options.overlap);
  const before = await withSchedule(client, scheduleId, (h) => h.describe());
  await withSchedule(client, scheduleId, (h) => h.trigger(override ?? before.policies.overlap));
  const deadline = Date.now() + (options.waitMs ?? 10_000);
  const known = new Set(before.info.recentActions.map((a) => a.action.workflow.workflowId));
  for (;;) {
    const now = await withSchedule(client, scheduleId, (h) => h.describe());
    const runningRuns = now.info.runningActions.map((a) => a.workflow.workflowId);
    const started = now.info.recentActions.find((a) => !known.has(a.action.workflow.workflowId));
    if (started) return { scheduleId, outcome: 'started', runId: started.action.workflow.workflowId, runningRuns };
    if (now.info.numActionsSkippedOverlap > before.info.numActionsSkippedOverlap) return { scheduleId, outcome: 'skipped', runningRuns };
    if (Date.now() >= deadline) return { scheduleId, outcome: 'pending', runningRuns };
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Deletes the schedule; runs it already started keep running (cancel them with `refinery cancel`). */
export async function deleteSchedule(client: Client, scheduleId: string): Promise<{ scheduleId: string; deleted: true; runningRuns: string[] }> {
  const d = await withSchedule(client, scheduleId, (h) => h.describe());
  await withSchedule(client, scheduleId, (h) => h.delete());
  return { scheduleId, deleted: true, runningRuns: d.info.runningActions.map((a) => a.workflow.workflowId) };
}

// ---- options --------------------------------------------------------------------------------

/** The schedule spec from --cron/--timezone or --every, checked here so a typo fails in one line. */
export function scheduleTiming(options: Pick<ScheduleCreateOptions, 'cron' | 'every' | 'timezone'>): { spec: ScheduleSpec; when: string } {
  if ((options.cron === undefined) === (options.every === undefined)) {
    throw new CliError('give either --cron or --every', 'e.g. --cron "0 2 * * *" for 02:00 every night, or --every 6h', EXIT.badInput);
  }
  if (options.timezone !== undefined) validateTimezone(options.timezone);
  if (options.every !== undefined) {
    const every = durationOption('--every', options.every);
    if (every < 1000) throw new CliError(`--every "${options.every}" is shorter than a second`, 'Temporal schedules fire at most once a second', EXIT.badInput);
    return { spec: { intervals: [{ every }] }, when: `every ${options.every}` };
  }
  const cron = options.cron!.trim().replace(/\s+/g, ' ');
  validateCron(cron);
  const timezone = options.timezone ?? 'UTC';
  return { spec: { cronExpressions: [cron], timezone }, when: `cron ${cron} (${timezone})` };
}

export function overlapPolicy(name = 'skip'): ScheduleOverlapPolicy {
  if (!Object.hasOwn(OVERLAP_POLICIES, name)) {
    throw new CliError(`--overlap "${name}" is not one of ${Object.keys(OVERLAP_POLICIES).join(', ')}`, 'skip (default): when a run is still going at the next time, that next run is skipped', EXIT.badInput);
  }
  return OVERLAP_POLICIES[name as OverlapName];
}

function overlapName(policy: ScheduleOverlapPolicy): string {
  return Object.entries(OVERLAP_POLICIES).find(([, p]) => p === policy)?.[0] ?? String(policy ?? 'skip').toLowerCase().replace(/_/g, '-');
}

export function validateTimezone(tz: string): void {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
  } catch {
    throw new CliError(`--timezone "${tz}" is not a known time zone`, 'use an IANA name such as UTC, Europe/Berlin or America/New_York', EXIT.badInput);
  }
}

const CRON_MACROS = new Set(['@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly']);
const CRON_FIELDS: { name: string; min: number; max: number; names?: string[] }[] = [
  { name: 'minute', min: 0, max: 59 },
  { name: 'hour', min: 0, max: 23 },
  { name: 'day of month', min: 1, max: 31 },
  { name: 'month', min: 1, max: 12, names: ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'] },
  { name: 'day of week', min: 0, max: 6, names: ['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'] },
];

/**
 * Five-field cron (minute hour day-of-month month day-of-week) with `*`, values, ranges `a-b`, steps
 * `/n` and lists, month and weekday names; or a macro such as @daily. Throws one line naming the field.
 */
export function validateCron(cron: string): void {
  const bad = (why: string) => new CliError(`--cron "${cron}": ${why}`, 'five fields: minute hour day-of-month month day-of-week, e.g. "0 2 * * *" (02:00 every night)', EXIT.badInput);
  if (cron.startsWith('@')) {
    if (!CRON_MACROS.has(cron.toLowerCase())) throw bad(`unknown macro (use one of ${[...CRON_MACROS].join(', ')})`);
    return;
  }
  const fields = cron.split(' ');
  if (fields.length !== 5) throw bad(`expected 5 fields, found ${fields.length}`);
  fields.forEach((field, i) => {
    const f = CRON_FIELDS[i]!;
    const value = (v: string): number => {
      const byName = f.names?.indexOf(v.toUpperCase()) ?? -1;
      const n = byName >= 0 ? byName + (f.name === 'month' ? 1 : 0) : /^\d+$/.test(v) ? Number(v) : NaN;
      if (!(n >= f.min && n <= f.max)) throw bad(`${f.name} "${v}" is not in ${f.min}-${f.max}`);
      return n;
    };
    for (const item of field.split(',')) {
      const m = /^([^/]+)(?:\/(\d+))?$/.exec(item);
      if (!m) throw bad(`${f.name} "${item}" is not a value, range or step`);
      if (m[2] !== undefined && Number(m[2]) < 1) throw bad(`${f.name} step "${m[2]}" must be at least 1`);
      if (m[1] === '*') continue;
      const [lo, hi, ...rest] = m[1]!.split('-');
      if (rest.length > 0) throw bad(`${f.name} "${item}" is not a value, range or step`);
      if (hi !== undefined && value(lo!) > value(hi)) throw bad(`${f.name} range "${m[1]}" runs backwards`);
      if (hi === undefined) value(lo!);
    }
  });
}

function durationOption(flag: string, value: string): number {
  try {
    return parseDuration(value);
  } catch {
    throw new CliError(`${flag} "${value}" is not a duration`, 'e.g. "30s", "10m", "6h", "1d"', EXIT.badInput);
  }
}

// ---- helpers --------------------------------------------------------------------------------

async function withSchedule<T>(client: Client, scheduleId: string, fn: (h: ScheduleHandle) => Promise<T>): Promise<T> {
  try {
    return await fn(client.schedule.getHandle(scheduleId));
  } catch (err) {
    if (err instanceof ScheduleNotFoundError) throw new CliError(`no schedule "${scheduleId}"`, 'see "refinery schedule list"', EXIT.notFound);
    throw err;
  }
}

/** A run's Refinery state (search attribute), else its workflow status; undefined when gone. */
async function runState(client: Client, workflowId: string): Promise<string | undefined> {
  try {
    const d = await client.workflow.getHandle(workflowId).describe();
    const state = d.typedSearchAttributes.get(stateKey);
    // Terminated or timed-out runs never recorded a final state of their own.
    if (['TERMINATED', 'TIMED_OUT', 'CONTINUED_AS_NEW'].includes(d.status.name)) return d.status.name.toLowerCase();
    return state ?? d.status.name.toLowerCase();
  } catch {
    return undefined;
  }
}

function grpcMessage(err: unknown): string {
  let e = err as { message?: string; details?: string; cause?: unknown } | undefined;
  let msg = e?.message ?? String(err);
  while (e) {
    if (typeof e.details === 'string' && e.details) msg = e.details;
    e = e.cause as typeof e;
  }
  return msg;
}
