/**
 * One real Temporal dev server and one real MinIO for the whole integration run, on free ports in
 * a temporary state dir; test files reach them through `inject('stack')`.
 */
import type { TestProject } from 'vitest/node';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { PrivateStack, type StackInfo } from '../infra/harness/stack.js';
import { SHARED_BUNDLE_ENV, workflowBundle } from '../infra/harness/workers.js';

export type TestStack = StackInfo;

declare module 'vitest' {
  export interface ProvidedContext {
    stack: TestStack;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const [stack, bundle] = await Promise.all([
    PrivateStack.start({
      stateDirPrefix: 'refinery-test-stack-',
      namespace: 'refinery-test',
      bucket: 'refinery-test',
      accessKey: 'refinery-test-access',
      secretKey: `refinery-test-secret-${process.pid}`,
    }),
    workflowBundle({ warnings: true }),
  ]);
  // The workflow code is bundled once for every test file's workers (infra/harness/workers.ts).
  const bundleFile = path.join(stack.info.stateDir, 'workflow-bundle.js');
  await writeFile(bundleFile, bundle.code);
  process.env[SHARED_BUNDLE_ENV] = bundleFile;
  project.provide('stack', { ...stack.info });
  return () => stack.stop();
}
