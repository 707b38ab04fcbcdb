/**
 * A private stack for the test suite, the fault suite and the benchmarks: a Temporal dev server and
 * a MinIO on free ports in a temp state dir (never the user's stack of `refinery stack start`), the
 * environment that points a process at it, and an ObjectStore and a client for it.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import type { DataConverter } from '@temporalio/common';
import {
  getFreePort,
  isPortFree,
  isProcessAlive,
  startMinio,
  startTemporal,
  type MinioHandle,
  type TemporalHandle,
  type Toolchain,
} from '../stack.js';
import { auditLockSettings, defaultAuditBucket, LOCAL_AUDIT_RETENTION_DAYS } from '../../config/audit-lock.js';
import { ObjectStore } from '../../storage/object-store.js';
import { sleep, waitFor } from './wait.js';

/** Where a private stack is and how to reach it (what test files get from `inject('stack')`). */
export interface StackInfo {
  stateDir: string;
  temporalAddress: string;
  namespace: string;
  s3Endpoint: string;
  accessKey: string;
  secretKey: string;
  bucket: string;
  /** The object-locked bucket of the audit trail's write-once copies; null: none. Absent: `<bucket>-audit`. */
  auditBucket?: string | null;
  /** The retention each write-once copy gets, in days (LOCAL_AUDIT_RETENTION_DAYS unless set). */
  auditRetentionDays?: number;
}

/** The S3 variables of stackEnv (what PrivateStack.env() passes on when the stack runs MinIO). */
const S3_VARIABLES = ['REFINERY_S3_ENDPOINT', 'REFINERY_S3_ACCESS_KEY', 'REFINERY_S3_SECRET_KEY', 'REFINERY_BUCKET', 'REFINERY_S3_AUDIT_BUCKET', 'REFINERY_AUDIT_RETENTION_DAYS'];

/** What a worker, the client code and ObjectStore read. */
export function stackEnv(s: StackInfo): Record<string, string> {
  return {
    TEMPORAL_ADDRESS: s.temporalAddress,
    TEMPORAL_NAMESPACE: s.namespace,
    REFINERY_S3_ENDPOINT: s.s3Endpoint,
    REFINERY_S3_ACCESS_KEY: s.accessKey,
    REFINERY_S3_SECRET_KEY: s.secretKey,
    REFINERY_BUCKET: s.bucket,
    REFINERY_S3_AUDIT_BUCKET: s.auditBucket === null ? 'off' : (s.auditBucket ?? defaultAuditBucket(s.bucket)),
    REFINERY_AUDIT_RETENTION_DAYS: String(s.auditRetentionDays ?? LOCAL_AUDIT_RETENTION_DAYS),
  };
}

/** An ObjectStore on the stack's buckets, configured explicitly (not from the environment). */
export function stackStore(s: StackInfo): ObjectStore {
  const url = new URL(s.s3Endpoint);
  const env = stackEnv(s);
  return new ObjectStore({
    endPoint: url.hostname,
    port: Number(url.port),
    useSSL: false,
    accessKey: s.accessKey,
    secretKey: s.secretKey,
    bucket: s.bucket,
    region: 'us-east-1',
    auditLock: auditLockSettings(env, s.bucket),
  });
}

/** `dataConverter`: payload encryption (codec/data-converter.ts); default plain JSON. */
export async function stackClient(s: Pick<StackInfo, 'temporalAddress' | 'namespace'>, dataConverter?: DataConverter): Promise<{ client: Client; close: () => Promise<void> }> {
  const connection = await Connection.connect({ address: s.temporalAddress });
  return { client: new Client({ connection, namespace: s.namespace, dataConverter }), close: () => connection.close() };
}

export interface PrivateStackOptions {
  /** Prefix of the temp state dir's name. */
  stateDirPrefix: string;
  namespace: string;
  bucket: string;
  /** The object-locked audit bucket to create (default `<bucket>-audit`); false: none (write-once copies off). */
  auditBucket?: string | false;
  /** Default retention of the audit bucket and of each write-once copy (default LOCAL_AUDIT_RETENTION_DAYS, 1 day). */
  auditRetentionDays?: number;
  accessKey: string;
  secretKey: string;
  /** `free`: any free port (the OS's choice); `stable`: below the ephemeral range (see stablePort). */
  ports?: 'free' | 'stable';
  /** Binary paths; default: what startTemporal/startMinio find themselves. */
  toolchain?: Toolchain;
  /** Start Temporal (default true). */
  temporal?: boolean;
  /** Start MinIO (default true). */
  minio?: boolean;
  dynamicConfig?: Record<string, unknown>;
  /** Grace of stop() (default 5000 ms). */
  stopGraceMs?: number;
}

export class PrivateStack {
  private constructor(
    readonly info: StackInfo,
    private readonly options: PrivateStackOptions,
    private readonly ports: { temporal: number; minio: number; console: number },
    private temporalHandle: TemporalHandle | undefined,
    private minioHandle: MinioHandle | undefined,
  ) {}

  static async start(options: PrivateStackOptions): Promise<PrivateStack> {
    const stateDir = await mkdtemp(path.join(tmpdir(), options.stateDirPrefix));
    const port = options.ports === 'stable' ? stablePort : getFreePort;
    const ports = { temporal: await port(), minio: await port(), console: await port() };
    const stack = new PrivateStack(
      {
        stateDir,
        temporalAddress: '',
        namespace: options.namespace,
        s3Endpoint: '',
        accessKey: options.accessKey,
        secretKey: options.secretKey,
        bucket: options.bucket,
        auditBucket: options.auditBucket === false ? null : (options.auditBucket ?? defaultAuditBucket(options.bucket)),
        auditRetentionDays: options.auditRetentionDays ?? LOCAL_AUDIT_RETENTION_DAYS,
      },
      options,
      ports,
      undefined,
      undefined,
    );
    const [temporal, minio] = await Promise.all([
      options.temporal === false ? undefined : stack.launchTemporal(),
      options.minio === false ? undefined : stack.launchMinio(),
    ]);
    stack.temporalHandle = temporal;
    stack.minioHandle = minio;
    if (temporal) Object.assign(stack.info, { temporalAddress: temporal.address, namespace: temporal.namespace });
    if (minio) Object.assign(stack.info, { s3Endpoint: minio.endpoint });
    return stack;
  }

  get temporal(): TemporalHandle {
    if (!this.temporalHandle) throw new Error('this stack runs no Temporal');
    return this.temporalHandle;
  }

  get minio(): MinioHandle {
    if (!this.minioHandle) throw new Error('this stack runs no MinIO');
    return this.minioHandle;
  }

  get hasTemporal(): boolean {
    return this.temporalHandle !== undefined;
  }

  get hasMinio(): boolean {
    return this.minioHandle !== undefined;
  }

  /** What a worker, the client code and ObjectStore read (only the services this stack runs). */
  env(): Record<string, string> {
    const all = stackEnv(this.info);
    const env: Record<string, string> = {};
    if (this.temporalHandle) Object.assign(env, { TEMPORAL_ADDRESS: all.TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE: all.TEMPORAL_NAMESPACE });
    if (this.minioHandle) {
      for (const k of S3_VARIABLES) env[k] = all[k]!;
    }
    return env;
  }

  store(): ObjectStore {
    return stackStore(this.info);
  }

  client(dataConverter?: DataConverter): Promise<{ client: Client; close: () => Promise<void> }> {
    return stackClient(this.info, dataConverter);
  }

  minioDataDir(): string {
    return path.join(this.info.stateDir, 'minio', 'data');
  }

  /** kill -9 the Temporal dev server (its whole process group). */
  async killTemporal(): Promise<void> {
    await killGroupAndWait(this.temporal.pid);
    await this.temporal.stop({ graceMs: 0 }); // removes the pid file and the exit hook; the process is gone
  }

  /** Starts the dev server again on the same database file and port. */
  async restartTemporal(): Promise<void> {
    this.temporalHandle = await whilePortBusy(() => this.launchTemporal());
  }

  /** kill -9 MinIO (no graceful shutdown: in-flight uploads are cut). */
  async killMinio(): Promise<void> {
    await killGroupAndWait(this.minio.pid);
    await this.minio.stop({ graceMs: 0 });
  }

  async restartMinio(): Promise<void> {
    this.minioHandle = await whilePortBusy(() => this.launchMinio());
  }

  async stop(keep = false): Promise<void> {
    const graceMs = this.options.stopGraceMs ?? 5000;
    await Promise.all([this.temporalHandle?.stop({ graceMs }), this.minioHandle?.stop({ graceMs })]);
    if (!keep) await rm(this.info.stateDir, { recursive: true, force: true });
  }

  private launchTemporal(): Promise<TemporalHandle> {
    return startTemporal({
      stateDir: this.info.stateDir,
      port: this.ports.temporal,
      namespace: this.options.namespace,
      headless: true,
      stopOnExit: true,
      binary: this.options.toolchain?.temporal,
      timeoutMs: 120_000,
      dynamicConfig: this.options.dynamicConfig,
    });
  }

  private launchMinio(): Promise<MinioHandle> {
    return startMinio({
      stateDir: this.info.stateDir,
      port: this.ports.minio,
      consolePort: this.ports.console,
      accessKey: this.options.accessKey,
      secretKey: this.options.secretKey,
      bucket: this.options.bucket,
      ...(this.info.auditBucket ? { auditBucket: { name: this.info.auditBucket, retentionDays: this.info.auditRetentionDays ?? LOCAL_AUDIT_RETENTION_DAYS } } : {}),
      stopOnExit: true,
      binary: this.options.toolchain?.minio,
      timeoutMs: 120_000,
    });
  }
}

/**
 * A free port below the kernel's ephemeral range. The services are restarted on their ports while
 * clients keep reconnecting; with a port in the ephemeral range, such a client can be handed the
 * very port as its own source port (a TCP self-connect) and hold it, so the restart finds it taken.
 */
export async function stablePort(): Promise<number> {
  let ephemeralLow = 32768;
  try {
    ephemeralLow = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || ephemeralLow;
  } catch {
    // not Linux: assume the IANA range starts higher still
  }
  const lo = 10_000;
  const hi = ephemeralLow - 1;
  for (let i = 0; hi - lo > 1000 && i < 200; i++) {
    const port = lo + Math.floor(Math.random() * (hi - lo));
    if (await isPortFree('127.0.0.1', port)) return port;
  }
  return getFreePort();
}

/** Retries a service start while its port is still taken (sockets of the killed process, a client's self-connect). */
async function whilePortBusy<T>(start: () => Promise<T>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await start();
    } catch (err) {
      if (!/already in use/.test((err as Error).message) || Date.now() > deadline) throw err;
      await sleep(500);
    }
  }
}

async function killGroupAndWait(pid: number): Promise<void> {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  await waitFor(() => !isProcessAlive(pid), 10_000, 20);
}
