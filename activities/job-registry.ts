/**
 * The worker's record of the jobs it has launched: one small file per job in
 * `<scratchDir>/jobs/`, written right after the job's supervisor starts and removed once no process
 * of the job's session is left.
 *
 * Why: the supervisor (activities/job-process.ts) kills the job's process group when the worker
 * dies, but only if it lives to do so. When the supervisor dies with the worker (the OOM killer
 * taking both, a `kill -9` of the worker's group racing, a bug), the job is reparented to init and
 * trains on, holding its GPU, with nobody left who knows about it. The records survive on disk, so
 * the next worker process on this scratch dir can find such leftovers by session id and kill them
 * before it takes work (worker/stale-jobs.ts). Each record carries what it takes to never kill a
 * stranger: the boot id, the supervisor's start time (pid reuse), and a random token that every
 * process of the job has in its environment (the supervisor may be gone).
 *
 * The training activity hands `runJobProcess` its registry (one per scratch dir) and what the job
 * is (`JobLaunchScope`); `runJobProcess` writes the record when the job starts and removes it when
 * its session is empty.
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { bootId, processesInSession, readProcStat } from './proc.js';

/** Every process of a recorded job has `REFINERY_JOB_TOKEN=<the record's token>` in its environment. */
export const JOB_TOKEN_ENV = 'REFINERY_JOB_TOKEN';

const JobLabelsSchema = z.object({
  runId: z.string(),
  stageId: z.string(),
  attempt: z.number().int(),
  workflowId: z.string().optional(),
});

/** Which attempt of which stage a job is (for the logs of whoever reaps it). */
export type JobLabels = z.infer<typeof JobLabelsSchema>;

const WorkerIdentitySchema = z.object({
  host: z.string(),
  pid: z.number().int(),
  /** The worker process's start time (/proc/<pid>/stat); null off Linux. */
  startTime: z.number().int().nullable(),
});

export type WorkerIdentity = z.infer<typeof WorkerIdentitySchema>;

const JobRecordSchema = z.object({
  version: z.literal(1),
  /** The job's session id, which is also its process group id: the supervisor leads both. */
  sessionId: z.number().int().positive(),
  supervisorPid: z.number().int().positive(),
  /** The supervisor's start time in clock ticks since boot (field 22 of /proc/<pid>/stat). */
  supervisorStartTime: z.number().int().nonnegative(),
  /** /proc/sys/kernel/random/boot_id when the job started: pids and start times mean nothing across boots. */
  bootId: z.string(),
  /** The value of REFINERY_JOB_TOKEN in the job's environment. */
  token: z.string().min(16),
  worker: WorkerIdentitySchema,
  job: JobLabelsSchema,
  argv: z.array(z.string()),
  startedAt: z.string(),
});

export type JobRecord = z.infer<typeof JobRecordSchema>;

/** A record read back from disk: valid, or the reason it is not (it is then just deleted). */
export type StoredJobRecord = { file: string; record: JobRecord } | { file: string; invalid: string };

/** How long `release` waits for the job's session to empty before it leaves the record for the next worker. */
const RELEASE_WAIT_MS = 5_000;

export function jobRecordsDir(scratchDir: string): string {
  return path.join(scratchDir, 'jobs');
}

function thisWorker(): WorkerIdentity {
  return { host: hostname(), pid: process.pid, startTime: readProcStat(process.pid)?.startTime ?? null };
}

/** A job that has been recorded; `release` once it has ended. */
export interface RecordedJob {
  readonly file: string;
  readonly record: JobRecord;
  /**
   * Waits (bounded) until no live process of the job's session remains, then removes the record.
   * Resolves to whether it did; a record left behind is dealt with at the next worker start.
   */
  release(): Promise<boolean>;
}

export class JobRegistry {
  readonly dir: string;
  private readonly worker = thisWorker();

  constructor(readonly scratchDir: string) {
    this.dir = jobRecordsDir(scratchDir);
  }

  /** A fresh token for a job about to be launched (it goes into the job's environment). */
  static newToken(): string {
    return randomUUID();
  }

  /**
   * Records a job whose supervisor has just started. Synchronous, so that nothing runs between the
   * spawn and the record. Throws when the record cannot be written (a full disk) or the supervisor
   * is already gone: the caller decides whether the job may run unrecorded.
   */
  record(launch: { supervisorPid: number; token: string; argv: readonly string[]; labels: JobLabels }): RecordedJob {
    const stat = readProcStat(launch.supervisorPid);
    const boot = bootId();
    if (!stat) throw new Error(`no /proc entry for the job's supervisor (pid ${launch.supervisorPid})`);
    if (!boot) throw new Error('no boot id (/proc/sys/kernel/random/boot_id)');
    const record: JobRecord = {
      version: 1,
      sessionId: launch.supervisorPid,
      supervisorPid: launch.supervisorPid,
      supervisorStartTime: stat.startTime,
      bootId: boot,
      token: launch.token,
      worker: this.worker,
      job: launch.labels,
      argv: [...launch.argv],
      startedAt: new Date().toISOString(),
    };
    // Unique per process instance: a reused pid never overwrites an older job's record.
    const file = path.join(this.dir, `${record.sessionId}-${record.supervisorStartTime}.json`);
    mkdirSync(this.dir, { recursive: true });
    const tmp = `${file}.tmp`;
    try {
      writeFileSync(tmp, JSON.stringify(record, null, 2) + '\n');
      renameSync(tmp, file);
    } catch (err) {
      rmSync(tmp, { force: true });
      throw err;
    }
    return {
      file,
      record,
      release: async () => {
        const deadline = Date.now() + RELEASE_WAIT_MS;
        while ((await processesInSession(record.sessionId)).length > 0) {
          if (Date.now() >= deadline) return false;
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        await removeJobRecord(file);
        return true;
      },
    };
  }
}

/** Every record in `<scratchDir>/jobs/` (none when the folder does not exist). */
export async function readJobRecords(scratchDir: string): Promise<StoredJobRecord[]> {
  const dir = jobRecordsDir(scratchDir);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const out: StoredJobRecord[] = [];
  for (const name of names.filter((n) => n.endsWith('.json')).sort()) {
    const file = path.join(dir, name);
    try {
      const parsed = JobRecordSchema.safeParse(JSON.parse(await readFile(file, 'utf8')));
      out.push(parsed.success ? { file, record: parsed.data } : { file, invalid: parsed.error.issues[0]?.message ?? 'bad shape' });
    } catch (err) {
      out.push({ file, invalid: String(err) });
    }
  }
  return out;
}

export async function removeJobRecord(file: string): Promise<void> {
  await rm(file, { force: true });
}

/** Where (and as what) a job is recorded. */
export interface JobLaunchScope {
  registry: JobRegistry;
  labels: JobLabels;
}
