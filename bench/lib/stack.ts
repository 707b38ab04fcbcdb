/**
 * A private stack for one benchmark (infra/harness/stack.ts): its own Temporal dev server and/or
 * MinIO on free ports in a temporary state folder (never the user's default stack), killed when the
 * benchmark exits.
 */
import { PrivateStack } from '../../infra/harness/stack.js';
import type { MinioHandle, TemporalHandle } from '../../infra/stack.js';

export interface BenchStack {
  stateDir: string;
  temporal?: TemporalHandle;
  minio?: MinioHandle;
  /** Variables that point Refinery code (this process and child workers) at this stack. */
  env: Record<string, string>;
  stop(): Promise<void>;
}

export async function startBenchStack(options: { temporal?: boolean; minio?: boolean; bucket?: string; dynamicConfig?: Record<string, unknown> } = {}): Promise<BenchStack> {
  const stack = await PrivateStack.start({
    stateDirPrefix: 'refinery-bench-stack-',
    namespace: 'refinery-bench',
    bucket: options.bucket ?? 'refinery-bench',
    accessKey: 'refinery-bench-access',
    secretKey: `refinery-bench-secret-${process.pid}`,
    temporal: options.temporal,
    minio: options.minio,
    dynamicConfig: options.dynamicConfig,
  });
  const env = stack.env();
  // Refinery's own modules read their settings from this process's environment.
  Object.assign(process.env, env);
  return {
    stateDir: stack.info.stateDir,
    temporal: stack.hasTemporal ? stack.temporal : undefined,
    minio: stack.hasMinio ? stack.minio : undefined,
    env,
    stop: () => stack.stop(),
  };
}
