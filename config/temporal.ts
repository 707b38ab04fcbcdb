/**
 * How workers and clients reach Temporal (defaults match `refinery stack start`), and the task
 * queue of the workflows. Credentials stay in the environment; nothing here is sent to Temporal.
 */

import type { TLSConfig } from '@temporalio/client';
import { loadClientConnectConfig } from '@temporalio/envconfig';

/** Workflows and control activities. */
export const CONTROL_TASK_QUEUE = 'refinery-control';

/** Frontend gRPC address when TEMPORAL_ADDRESS is unset. */
export const DEFAULT_TEMPORAL_ADDRESS = '127.0.0.1:7233';
/** Namespace when TEMPORAL_NAMESPACE is unset. */
export const DEFAULT_TEMPORAL_NAMESPACE = 'refinery';

export interface TemporalSettings {
  address: string;
  namespace: string;
  /** TLS (mTLS with a client certificate, or TLS alone); absent: plaintext, as the local stack. */
  tls?: TLSConfig;
  /** An API key (Temporal Cloud); TLS is on with one unless TEMPORAL_TLS=false says otherwise. */
  apiKey?: string;
  /** Where they came from, for messages: "environment" or the TOML file's profile. */
  source: string;
}

/**
 * Temporal's own client configuration (@temporalio/envconfig): TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
 * TEMPORAL_API_KEY, TEMPORAL_TLS, TEMPORAL_TLS_CLIENT_CERT_PATH / _KEY_PATH, TEMPORAL_TLS_SERVER_CA_CERT_PATH,
 * TEMPORAL_TLS_SERVER_NAME, … or a profile (TEMPORAL_PROFILE) of the TOML file TEMPORAL_CONFIG_FILE
 * names (default ~/.config/temporalio/temporal.toml) — the same settings as the `temporal` CLI and
 * every SDK. Never from a spec: a spec travels in workflow inputs.
 */
export function temporalSettings(env: NodeJS.ProcessEnv = process.env): TemporalSettings {
  const vars = Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => typeof e[1] === 'string' && e[1] !== ''));
  const loaded = loadClientConnectConfig({ overrideEnvVars: vars, ...(vars.TEMPORAL_PROFILE ? { profile: vars.TEMPORAL_PROFILE } : {}) });
  const o = loaded.connectionOptions;
  const tls = typeof o.tls === 'object' ? o.tls : o.tls === true ? {} : undefined;
  const apiKey = typeof o.apiKey === 'string' && o.apiKey ? o.apiKey : undefined;
  return {
    address: vars.TEMPORAL_ADDRESS || o.address || DEFAULT_TEMPORAL_ADDRESS,
    namespace: vars.TEMPORAL_NAMESPACE || loaded.namespace || DEFAULT_TEMPORAL_NAMESPACE,
    ...(tls ? { tls } : {}),
    ...(apiKey ? { apiKey } : {}),
    source: vars.TEMPORAL_CONFIG_FILE ? `${vars.TEMPORAL_CONFIG_FILE} (profile ${vars.TEMPORAL_PROFILE || 'default'}) and the environment` : 'the environment',
  };
}

/** What Connection.connect / NativeConnection.connect take of the settings. */
export function connectionOptions(s: TemporalSettings): { address: string; tls?: TLSConfig; apiKey?: string } {
  return { address: s.address, ...(s.tls ? { tls: s.tls } : {}), ...(s.apiKey ? { apiKey: s.apiKey } : {}) };
}

/** How the connection is secured, for log lines (never the key or certificates themselves). */
export function describeSecurity(s: TemporalSettings): string {
  const parts = [s.tls ? (s.tls.clientCertPair ? 'mTLS' : 'TLS') : 'plaintext', ...(s.apiKey ? ['API key'] : [])];
  return parts.join(' + ');
}
