/**
 * Object storage settings come from the environment only, so credentials never travel through
 * workflow inputs, history or the audit trail (invariant 6). Defaults are MinIO's local dev ones.
 * The audit trail's write-once copies go to a second, object-locked bucket (config/audit-lock.ts).
 */
import { auditLockSettings, type AuditLockSettings } from '../config/audit-lock.js';

export type { AuditLockSettings } from '../config/audit-lock.js';

export interface StorageConfig {
  endPoint: string;
  port: number;
  useSSL: boolean;
  accessKey: string;
  secretKey: string;
  bucket: string;
  region: string;
  /**
   * The write-once copies of the audit trail (REFINERY_S3_AUDIT_BUCKET, …). Absent: the defaults,
   * `<bucket>-audit` in compliance mode.
   */
  auditLock?: AuditLockSettings;
}

export const DEV_DEFAULTS = {
  endpoint: 'http://127.0.0.1:9000',
  accessKey: 'minioadmin',
  secretKey: 'minioadmin',
  bucket: 'refinery',
} as const;

export function storageConfigFromEnv(env: NodeJS.ProcessEnv = process.env): StorageConfig {
  const raw = env.REFINERY_S3_ENDPOINT ?? DEV_DEFAULTS.endpoint;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`REFINERY_S3_ENDPOINT="${raw}" is not a URL: expected e.g. http://127.0.0.1:9000`);
  }
  const useSSL = url.protocol === 'https:';
  const bucket = env.REFINERY_BUCKET ?? DEV_DEFAULTS.bucket;
  return {
    endPoint: url.hostname,
    port: url.port ? Number(url.port) : useSSL ? 443 : 80,
    useSSL,
    accessKey: env.REFINERY_S3_ACCESS_KEY ?? DEV_DEFAULTS.accessKey,
    secretKey: env.REFINERY_S3_SECRET_KEY ?? DEV_DEFAULTS.secretKey,
    bucket,
    region: env.REFINERY_S3_REGION ?? 'us-east-1',
    auditLock: auditLockSettings(env, bucket),
  };
}
