/**
 * A private stack for one benchmark: its own Temporal dev server and/or MinIO on free ports in a
 * temporary state folder (never the user's default stack), killed when the benchmark exits.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { getFreePort, startMinio, startTemporal, type MinioHandle, type TemporalHandle } from '../../infra/stack.js';

export interface BenchStack {
  stateDir: string;
  temporal?: TemporalHandle;
  minio?: MinioHandle;
  /** Variables that point Refinery code (this process and child workers) at this stack. */
  env: Record<string, string>;
  stop(): Promise<void>;
}

export async function startBenchStack(options: { temporal?: boolean; minio?: boolean; bucket?: string; dynamicConfig?: Record<string, unknown> } = {}): Promise<BenchStack> {
  const stateDir = await mkdtemp(path.join(tmpdir(), 'refinery-bench-stack-'));
  const bucket = options.bucket ?? 'refinery-bench';
  const accessKey = 'refinery-bench-access';
  const secretKey = `refinery-bench-secret-${process.pid}`;
  const [temporal, minio] = await Promise.all([
    options.temporal === false
      ? undefined
      : startTemporal({ stateDir, port: await getFreePort(), namespace: 'refinery-bench', headless: true, stopOnExit: true, timeoutMs: 120_000, dynamicConfig: options.dynamicConfig }),
    options.minio === false
      ? undefined
      : startMinio({ stateDir, port: await getFreePort(), consolePort: await getFreePort(), accessKey, secretKey, bucket, stopOnExit: true, timeoutMs: 120_000 }),
  ]);
  const env: Record<string, string> = {};
  if (temporal) Object.assign(env, { TEMPORAL_ADDRESS: temporal.address, TEMPORAL_NAMESPACE: temporal.namespace });
  if (minio) Object.assign(env, { REFINERY_S3_ENDPOINT: minio.endpoint, REFINERY_S3_ACCESS_KEY: accessKey, REFINERY_S3_SECRET_KEY: secretKey, REFINERY_BUCKET: bucket });
  // Refinery's own modules read their settings from this process's environment.
  Object.assign(process.env, env);
  return {
    stateDir,
    temporal,
    minio,
    env,
    stop: async () => {
      await Promise.all([temporal?.stop({ graceMs: 5000 }), minio?.stop({ graceMs: 5000 })]);
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}
