/** Everything the worker bundles as workflow code. */
export { pipelineWorkflow } from './pipeline.js';
export { stageWorkflow } from './stage.js';
