/**
 * Configuration of the local stack (Temporal dev server + MinIO), read from the environment.
 *
 * Every value has a development default, so `tsx infra/stack.ts start` works with no setup:
 *
 * | Variable                  | Default                  | Meaning                                      |
 * | ------------------------- | ------------------------ | -------------------------------------------- |
 * | REFINERY_STATE_DIR        | <repo>/.refinery         | Databases, logs, pid files, toolchain.json   |
 * | TEMPORAL_ADDRESS          | 127.0.0.1:7233           | Temporal frontend gRPC (host:port)           |
 * | TEMPORAL_UI_PORT          | 8233                     | Temporal Web UI port (same host)             |
 * | TEMPORAL_NAMESPACE        | refinery                 | Namespace created at start                   |
 * | REFINERY_S3_ENDPOINT      | http://127.0.0.1:9000    | MinIO S3 API                                 |
 * | REFINERY_S3_CONSOLE_PORT  | 9001                     | MinIO console port (same host)               |
 * | REFINERY_S3_ACCESS_KEY    | minioadmin               | MinIO root user (MINIO_ROOT_USER)            |
 * | REFINERY_S3_SECRET_KEY    | minioadmin               | MinIO root password (MINIO_ROOT_PASSWORD)    |
 * | REFINERY_BUCKET           | refinery                 | Bucket created at start                      |
 * | REFINERY_S3_AUDIT_BUCKET  | <bucket>-audit           | Object-locked bucket created at start (`off`: none) |
 * | REFINERY_AUDIT_RETENTION_DAYS | 1 (local stack)      | Default retention of that bucket, in days    |
 *
 * The stack manager only runs services on this machine, so both hosts must be local addresses.
 */
import { z } from 'zod';
import { auditLockSettings, LOCAL_AUDIT_RETENTION_DAYS, type AuditLockMode } from './audit-lock.js';
import { StackError } from './errors.js';
import { stateDir } from './paths.js';
import { DEFAULT_TEMPORAL_ADDRESS, DEFAULT_TEMPORAL_NAMESPACE } from './temporal.js';

export interface StackConfig {
  /** Absolute path of the state folder. */
  stateDir: string;
  temporal: {
    host: string;
    port: number;
    /** `host:port`, what clients and workers connect to. */
    address: string;
    uiPort: number;
    namespace: string;
  };
  s3: {
    /** Normalized endpoint URL, e.g. `http://127.0.0.1:9000`. */
    endpoint: string;
    host: string;
    port: number;
    consolePort: number;
    accessKey: string;
    secretKey: string;
    bucket: string;
  };
  /** The audit trail's object-locked bucket (config/audit-lock.ts); null: none (REFINERY_S3_AUDIT_BUCKET=off). */
  audit: {
    bucket: string | null;
    /** The bucket's default retention when the stack creates it (each write-once copy carries its own too). */
    retentionDays: number;
    mode: AuditLockMode;
  };
}

const LOCAL_HOSTS = new Set(['127.0.0.1', 'localhost', '::1', '[::1]', '0.0.0.0']);

const port = (name: string) =>
  z.coerce
    .number({ error: `${name} must be a port number` })
    .int(`${name} must be a whole number`)
    .min(1, `${name} must be between 1 and 65535`)
    .max(65535, `${name} must be between 1 and 65535`);

const EnvSchema = z.object({
  REFINERY_STATE_DIR: z.string().min(1).optional(),
  TEMPORAL_ADDRESS: z.string().default(DEFAULT_TEMPORAL_ADDRESS),
  TEMPORAL_UI_PORT: port('TEMPORAL_UI_PORT').default(8233),
  TEMPORAL_NAMESPACE: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{1,253}$/, 'TEMPORAL_NAMESPACE must be 2+ letters, digits, ".", "_" or "-"')
    .default(DEFAULT_TEMPORAL_NAMESPACE),
  REFINERY_S3_ENDPOINT: z.string().default('http://127.0.0.1:9000'),
  REFINERY_S3_CONSOLE_PORT: port('REFINERY_S3_CONSOLE_PORT').default(9001),
  REFINERY_S3_ACCESS_KEY: z.string().min(3, 'REFINERY_S3_ACCESS_KEY must be at least 3 characters').default('minioadmin'),
  REFINERY_S3_SECRET_KEY: z.string().min(8, 'REFINERY_S3_SECRET_KEY must be at least 8 characters').default('minioadmin'),
  REFINERY_BUCKET: z
    .string()
    .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'REFINERY_BUCKET must be a valid S3 bucket name (3-63 lowercase letters, digits, "." or "-")')
    .default('refinery'),
});

/** Parses `host:port` (IPv6 as `[::1]:7233`). */
export function parseHostPort(value: string, variable: string): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(value.trim());
  const portNumber = match ? Number(match[2]) : NaN;
  if (!match || !(portNumber >= 1 && portNumber <= 65535)) {
    throw new StackError(`${variable}=${value} is not host:port; use e.g. ${variable}=127.0.0.1:7233`);
  }
  return { host: match[1]!.replace(/^\[(.*)\]$/, '$1'), port: portNumber };
}

function assertLocal(host: string, variable: string, value: string): void {
  if (!LOCAL_HOSTS.has(host) && !host.startsWith('127.')) {
    throw new StackError(
      `${variable}=${value} is not a local address; the stack manager only runs services on this machine (use 127.0.0.1, or unset ${variable})`,
    );
  }
}

/** Reads the stack configuration from `env` (default: `process.env`), applying the defaults above. */
export function loadStackConfig(env: NodeJS.ProcessEnv = process.env): StackConfig {
  // Empty strings count as unset, as in most shells' `VAR= cmd`.
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = EnvSchema.safeParse(present);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const variable = String(issue.path[0] ?? '');
    throw new StackError(`${issue.message} (got ${variable}=${JSON.stringify(present[variable] ?? '')})`);
  }
  const e = parsed.data;

  const temporal = parseHostPort(e.TEMPORAL_ADDRESS, 'TEMPORAL_ADDRESS');
  assertLocal(temporal.host, 'TEMPORAL_ADDRESS', e.TEMPORAL_ADDRESS);

  let url: URL;
  try {
    url = new URL(e.REFINERY_S3_ENDPOINT);
  } catch {
    throw new StackError(`REFINERY_S3_ENDPOINT=${e.REFINERY_S3_ENDPOINT} is not a URL; use e.g. http://127.0.0.1:9000`);
  }
  if (url.protocol !== 'http:') {
    throw new StackError(`REFINERY_S3_ENDPOINT=${e.REFINERY_S3_ENDPOINT}: the local MinIO serves plain http; use http://127.0.0.1:<port>`);
  }
  const s3Host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  assertLocal(s3Host, 'REFINERY_S3_ENDPOINT', e.REFINERY_S3_ENDPOINT);
  const s3Port = url.port ? Number(url.port) : 80;
  let audit: ReturnType<typeof auditLockSettings>;
  try {
    audit = auditLockSettings(present, e.REFINERY_BUCKET);
  } catch (err) {
    throw new StackError((err as Error).message);
  }

  return {
    stateDir: stateDir({ REFINERY_STATE_DIR: e.REFINERY_STATE_DIR }),
    temporal: {
      host: temporal.host,
      port: temporal.port,
      address: e.TEMPORAL_ADDRESS.trim(),
      uiPort: e.TEMPORAL_UI_PORT,
      namespace: e.TEMPORAL_NAMESPACE,
    },
    s3: {
      endpoint: `http://${url.host}`,
      host: s3Host,
      port: s3Port,
      consolePort: e.REFINERY_S3_CONSOLE_PORT,
      accessKey: e.REFINERY_S3_ACCESS_KEY,
      secretKey: e.REFINERY_S3_SECRET_KEY,
      bucket: e.REFINERY_BUCKET,
    },
    audit: { bucket: audit.bucket, retentionDays: audit.retentionDays ?? LOCAL_AUDIT_RETENTION_DAYS, mode: audit.mode },
  };
}
