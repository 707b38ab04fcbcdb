/**
 * How workers and clients reach Temporal (defaults match `refinery stack start`), and the task
 * queue of the workflows. Credentials stay in the environment; nothing here is sent to Temporal.
 */

/** Workflows and control activities. */
export const CONTROL_TASK_QUEUE = 'refinery-control';

/** Frontend gRPC address when TEMPORAL_ADDRESS is unset. */
export const DEFAULT_TEMPORAL_ADDRESS = '127.0.0.1:7233';
/** Namespace when TEMPORAL_NAMESPACE is unset. */
export const DEFAULT_TEMPORAL_NAMESPACE = 'refinery';

export interface TemporalSettings {
  address: string;
  namespace: string;
}

export function temporalSettings(env: NodeJS.ProcessEnv = process.env): TemporalSettings {
  return { address: env.TEMPORAL_ADDRESS || DEFAULT_TEMPORAL_ADDRESS, namespace: env.TEMPORAL_NAMESPACE || DEFAULT_TEMPORAL_NAMESPACE };
}
