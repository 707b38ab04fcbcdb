/**
 * One real Temporal dev server and one real MinIO for the whole integration run, on free ports in
 * a temporary state dir; test files reach them through `inject('stack')`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TestProject } from 'vitest/node';
import { getFreePort, startMinio, startTemporal } from '../infra/stack.js';

export interface TestStack {
  temporalAddress: string;
  namespace: string;
  s3Endpoint: string;
  accessKey: string;
  secretKey: string;
  bucket: string;
  stateDir: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    stack: TestStack;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const stateDir = await mkdtemp(path.join(tmpdir(), 'refinery-test-stack-'));
  const [port, minioPort, consolePort] = [await getFreePort(), await getFreePort(), await getFreePort()];
  const accessKey = 'refinery-test-access';
  const secretKey = `refinery-test-secret-${process.pid}`;
  const [temporal, minio] = await Promise.all([
    startTemporal({ stateDir, port, namespace: 'refinery-test', headless: true, stopOnExit: true, timeoutMs: 120_000 }),
    startMinio({ stateDir, port: minioPort, consolePort, accessKey, secretKey, bucket: 'refinery-test', stopOnExit: true, timeoutMs: 120_000 }),
  ]);
  project.provide('stack', {
    temporalAddress: temporal.address,
    namespace: temporal.namespace,
    s3Endpoint: minio.endpoint,
    accessKey,
    secretKey,
    bucket: 'refinery-test',
    stateDir,
  });
  return async () => {
    await Promise.all([temporal.stop({ graceMs: 5000 }), minio.stop({ graceMs: 5000 })]);
    await rm(stateDir, { recursive: true, force: true });
  };
}
