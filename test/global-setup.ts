/**
 * One real Temporal dev server and one real MinIO for the whole integration run, on free ports in
 * a temporary state dir; test files reach them through `inject('stack')`.
 */
import type { TestProject } from 'vitest/node';
import { PrivateStack, type StackInfo } from '../infra/harness/stack.js';

export type TestStack = StackInfo;

declare module 'vitest' {
  export interface ProvidedContext {
    stack: TestStack;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const stack = await PrivateStack.start({
    stateDirPrefix: 'refinery-test-stack-',
    namespace: 'refinery-test',
    bucket: 'refinery-test',
    accessKey: 'refinery-test-access',
    secretKey: `refinery-test-secret-${process.pid}`,
  });
  project.provide('stack', { ...stack.info });
  return () => stack.stop();
}
