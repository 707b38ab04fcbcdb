/**
 * The MinIO server (`minio server`): start it detached, probe /minio/health/live, and create the
 * bucket and the audit bucket (object-locked, with a default retention: config/audit-lock.ts).
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { Client as MinioClient } from 'minio';
import { StackError } from '../../config/errors.js';
import { readToolchain } from '../../config/toolchain.js';
import {
  DEFAULT_TIMEOUT_MS,
  POLL_MS,
  assertExecutable,
  assertPortsFree,
  errorText,
  formatHostPort,
  launch,
  sleep,
  type Probe,
  type ServiceHandle,
} from './processes.js';

export interface MinioHandle extends ServiceHandle {
  readonly service: 'minio';
  /** S3 endpoint URL, e.g. http://127.0.0.1:9000. */
  readonly endpoint: string;
  readonly host: string;
  readonly port: number;
  readonly consoleUrl: string;
  readonly accessKey: string;
  readonly secretKey: string;
  readonly bucket: string | null;
  /** The object-locked bucket of the audit trail's write-once copies, when one was created. */
  readonly auditBucket: string | null;
}

/** GET /minio/health/live. Never throws. */
export async function probeMinio(endpoint: string, timeoutMs = 3_000): Promise<Probe> {
  try {
    const response = await fetch(new URL('/minio/health/live', endpoint), { signal: AbortSignal.timeout(timeoutMs) });
    await response.body?.cancel();
    return response.ok ? { ok: true } : { ok: false, reason: `HTTP ${response.status} from ${endpoint}/minio/health/live` };
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code;
    return { ok: false, reason: cause ?? errorText(err) };
  }
}

export interface S3Credentials {
  host: string;
  port: number;
  accessKey: string;
  secretKey: string;
}

/** A minio client for a local http endpoint. */
export function minioClient({ host, port, accessKey, secretKey }: S3Credentials): MinioClient {
  return new MinioClient({ endPoint: host, port, useSSL: false, accessKey, secretKey, pathStyle: true });
}

/**
 * Creates `bucket` if missing. Retries briefly: right after /health/live answers, MinIO may
 * still refuse requests while it initializes.
 * @returns true if it was created.
 */
export async function ensureBucket(credentials: S3Credentials, bucket: string, timeoutMs = 15_000): Promise<boolean> {
  const client = minioClient(credentials);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await client.bucketExists(bucket)) return false;
      await client.makeBucket(bucket);
      return true;
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'BucketAlreadyOwnedByYou') return false;
      if (code === 'InvalidAccessKeyId' || code === 'SignatureDoesNotMatch') {
        throw new StackError(
          `MinIO at ${formatHostPort(credentials.host, credentials.port)} rejected REFINERY_S3_ACCESS_KEY/REFINERY_S3_SECRET_KEY ` +
            `(${code}); use the credentials it was first started with`,
        );
      }
      if (Date.now() > deadline) throw new StackError(`could not create bucket ${bucket} on MinIO: ${errorText(err)}`);
      await sleep(POLL_MS);
    }
  }
}

/** The audit bucket to create: object locking on, and a default retention rule. */
export interface LockedBucketOptions {
  name: string;
  /** Default retention of every object put without its own (Refinery's writers always set their own). */
  retentionDays: number;
  mode?: 'COMPLIANCE' | 'GOVERNANCE';
}

/**
 * Creates `bucket` with object locking (and so versioning) if missing, with a default retention
 * rule; an existing one must have object locking (S3 cannot turn it on later), its rule is left as
 * it is. Retries while MinIO initializes, like ensureBucket.
 * @returns true if it was created.
 */
export async function ensureLockedBucket(credentials: S3Credentials, options: LockedBucketOptions, timeoutMs = 15_000): Promise<boolean> {
  const client = minioClient(credentials);
  const deadline = Date.now() + timeoutMs;
  const { name } = options;
  for (;;) {
    try {
      let created = false;
      if (!(await client.bucketExists(name))) {
        try {
          await client.makeBucket(name, 'us-east-1', { ObjectLocking: true });
          created = true;
        } catch (err) {
          if ((err as { code?: string }).code !== 'BucketAlreadyOwnedByYou') throw err;
        }
      }
      let enabled = false;
      try {
        const info = (await (client.getObjectLockConfig(name) as unknown as Promise<{ objectLockEnabled?: string } | undefined>)) ?? {};
        enabled = info.objectLockEnabled === 'Enabled';
      } catch (err) {
        if ((err as { code?: string }).code !== 'ObjectLockConfigurationNotFoundError') throw err;
      }
      if (!enabled) {
        throw new StackError(
          `bucket ${name} exists without object locking, so it cannot hold the audit trail's write-once copies ` +
            `(S3 cannot turn locking on later): remove it, or set REFINERY_S3_AUDIT_BUCKET to another name`,
        );
      }
      if (created) await client.setObjectLockConfig(name, { mode: options.mode ?? 'COMPLIANCE', unit: 'Days', validity: options.retentionDays });
      return created;
    } catch (err) {
      if (err instanceof StackError) throw err;
      const code = (err as { code?: string }).code;
      if (code === 'InvalidAccessKeyId' || code === 'SignatureDoesNotMatch') {
        throw new StackError(
          `MinIO at ${formatHostPort(credentials.host, credentials.port)} rejected REFINERY_S3_ACCESS_KEY/REFINERY_S3_SECRET_KEY ` +
            `(${code}); use the credentials it was first started with`,
        );
      }
      if (Date.now() > deadline) throw new StackError(`could not create the object-locked bucket ${name} on MinIO: ${errorText(err)}`);
      await sleep(POLL_MS);
    }
  }
}

export interface StartMinioOptions {
  /** State folder: log in logs/, pid in run/, data in minio/data unless `dataDir`. */
  stateDir: string;
  /** Default `<stateDir>/minio/data`. */
  dataDir?: string;
  /** Bind address. Default 127.0.0.1. */
  host?: string;
  /** S3 API port. */
  port: number;
  /** Console port. */
  consolePort: number;
  /** Root user/password, given to MinIO through its environment. Default minioadmin/minioadmin. */
  accessKey?: string;
  secretKey?: string;
  /** Bucket to create if missing. */
  bucket?: string;
  /** Object-locked bucket to create if missing (the audit trail's write-once copies). */
  auditBucket?: LockedBucketOptions;
  /** Path of the `minio` binary; default from readToolchain(). */
  binary?: string;
  /** Health-check timeout; default 60 s. */
  timeoutMs?: number;
  /** SIGKILL the server when this Node process exits (for test setups). Default false. */
  stopOnExit?: boolean;
}

/**
 * Starts `minio server` detached, waits for /minio/health/live, and creates the bucket.
 * @throws StackError on a taken port, a missing binary, an early exit or a health timeout.
 */
export async function startMinio(options: StartMinioOptions): Promise<MinioHandle> {
  const host = options.host ?? '127.0.0.1';
  const stateDir = path.resolve(options.stateDir);
  const dataDir = path.resolve(options.dataDir ?? path.join(stateDir, 'minio', 'data'));
  const accessKey = options.accessKey ?? 'minioadmin';
  const secretKey = options.secretKey ?? 'minioadmin';
  const endpoint = `http://${formatHostPort(host, options.port)}`;

  const binary = options.binary ?? readToolchain().minio;
  await assertExecutable(binary, 'MinIO');
  await assertPortsFree([
    { host, port: options.port, what: 'MinIO S3 API', fix: `set REFINERY_S3_ENDPOINT=http://${host}:<free port>` },
    { host, port: options.consolePort, what: 'MinIO console', fix: 'set REFINERY_S3_CONSOLE_PORT=<free port>' },
  ]);
  await mkdir(dataDir, { recursive: true });

  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const started = await launch({
    service: 'minio',
    label: 'MinIO',
    binary,
    args: [
      'server',
      dataDir,
      '--address',
      formatHostPort(host, options.port),
      '--console-address',
      formatHostPort(host, options.consolePort),
    ],
    // Credentials through the environment only, never argv (visible in ps).
    env: { MINIO_ROOT_USER: accessKey, MINIO_ROOT_PASSWORD: secretKey, MINIO_UPDATE: 'off' },
    stateDir,
    timeoutMs,
    stopOnExit: options.stopOnExit ?? false,
    probe: (ms) => probeMinio(endpoint, ms),
  });
  if (options.bucket || options.auditBucket) {
    try {
      const credentials = { host, port: options.port, accessKey, secretKey };
      if (options.bucket) await ensureBucket(credentials, options.bucket, Math.max(timeoutMs / 2, 15_000));
      if (options.auditBucket) await ensureLockedBucket(credentials, options.auditBucket, Math.max(timeoutMs / 2, 15_000));
    } catch (err) {
      await started.stop();
      throw err instanceof StackError ? err : new StackError(`MinIO bucket: ${errorText(err)}; see ${started.paths.logFile}`);
    }
  }
  return {
    service: 'minio',
    pid: started.pid,
    logFile: started.paths.logFile,
    pidFile: started.paths.pidFile,
    endpoint,
    host,
    port: options.port,
    consoleUrl: `http://${formatHostPort(host, options.consolePort)}`,
    accessKey,
    secretKey,
    bucket: options.bucket ?? null,
    auditBucket: options.auditBucket?.name ?? null,
    stop: started.stop,
  };
}
