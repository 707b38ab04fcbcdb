/** Writes a pipeline spec, a fake base model and datasets into a temp folder for a test (infra/harness/specs.ts). */
export { writeTestSpec } from '../../infra/harness/specs.js';
