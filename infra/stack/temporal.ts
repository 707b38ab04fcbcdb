/**
 * The Temporal dev server (`temporal server start-dev`, SQLite-backed): start it detached, probe
 * it, and make sure Refinery's search attributes are registered on its namespace.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { StackError } from '../../config/errors.js';
import { REFINERY_SEARCH_ATTRIBUTES, type SearchAttributeType } from '../../config/search-attributes.js';
import { readToolchain } from '../../config/toolchain.js';
import {
  DEFAULT_TIMEOUT_MS,
  assertExecutable,
  assertPortsFree,
  errorText,
  formatHostPort,
  launch,
  type Probe,
  type ServiceHandle,
} from './processes.js';

export interface TemporalHandle extends ServiceHandle {
  readonly service: 'temporal';
  /** host:port for `Connection.connect({ address })`. */
  readonly address: string;
  readonly namespace: string;
  /** Web UI, or null when headless. */
  readonly uiUrl: string | null;
}

type OperatorService = Connection['operatorService'];
type IndexedValueType = NonNullable<Parameters<OperatorService['addSearchAttributes']>[0]['searchAttributes']>[string];

const INDEXED_VALUE_TYPES: Record<SearchAttributeType, number> = {
  Text: 1,
  Keyword: 2,
  Int: 3,
  Double: 4,
  Bool: 5,
  Datetime: 6,
  KeywordList: 7,
};

/** Connects to the frontend at `address`, runs `use` under a deadline, and closes the connection. */
async function withTemporal<T>(
  address: string,
  timeoutMs: number,
  use: (connection: Connection) => Promise<T>,
): Promise<T> {
  const connection = await Connection.connect({ address, connectTimeout: timeoutMs });
  try {
    return await connection.withDeadline(Date.now() + timeoutMs, () => use(connection));
  } finally {
    await connection.close().catch(() => undefined);
  }
}

/** Probes Temporal: frontend answers and the namespace exists. Never throws. */
export async function probeTemporal(address: string, namespace: string, timeoutMs = 3_000): Promise<Probe> {
  try {
    await withTemporal(address, timeoutMs, (c) => c.workflowService.describeNamespace({ namespace }));
    return { ok: true };
  } catch (err) {
    if ((err as { code?: unknown }).code === 5) return { ok: false, reason: `namespace "${namespace}" not found` };
    return { ok: false, reason: errorText(err) };
  }
}

/**
 * Makes sure each search attribute exists on `namespace` with the given type, adding missing ones.
 * Needed because `start-dev --search-attribute` only registers on a fresh database: after a
 * restart on an existing db file, attributes added to the list since would be missing.
 * @returns the names that were added.
 */
export async function ensureSearchAttributes(
  address: string,
  namespace: string,
  wanted: Record<string, SearchAttributeType> = REFINERY_SEARCH_ATTRIBUTES,
  timeoutMs = 10_000,
): Promise<string[]> {
  return withTemporal(address, timeoutMs, async (connection) => {
    const list = async () =>
      (await connection.operatorService.listSearchAttributes({ namespace })).customAttributes ?? {};
    const existing = await list();
    const missing: Record<string, IndexedValueType> = {};
    for (const [name, type] of Object.entries(wanted)) {
      const have = existing[name];
      if (have === undefined) missing[name] = INDEXED_VALUE_TYPES[type] as IndexedValueType;
      else if (have !== INDEXED_VALUE_TYPES[type]) {
        const haveName = Object.entries(INDEXED_VALUE_TYPES).find(([, v]) => v === have)?.[0] ?? String(have);
        throw new StackError(
          `search attribute ${name} is registered on namespace ${namespace} as ${haveName}, not ${type}; ` +
            `use a fresh state folder (REFINERY_STATE_DIR) or delete its temporal/temporal.db`,
        );
      }
    }
    const added = Object.keys(missing);
    if (added.length === 0) return added;
    await connection.operatorService.addSearchAttributes({ namespace, searchAttributes: missing });
    const after = await list();
    const still = added.filter((name) => after[name] === undefined);
    if (still.length > 0) throw new StackError(`could not register search attributes ${still.join(', ')} on ${namespace}`);
    return added;
  });
}

export interface StartTemporalOptions {
  /** State folder: db in temporal/temporal.db, log in logs/, pid in run/. */
  stateDir: string;
  /** Bind address. Default 127.0.0.1. */
  host?: string;
  /** Frontend gRPC port. */
  port: number;
  /** Web UI port; required unless `headless`. */
  uiPort?: number;
  /** Namespace to create (the "default" namespace always exists too). */
  namespace: string;
  /** No Web UI. */
  headless?: boolean;
  /** Registered on `namespace`; default REFINERY_SEARCH_ATTRIBUTES. */
  searchAttributes?: Record<string, SearchAttributeType>;
  /** `--dynamic-config-value KEY=<json>` pairs. */
  dynamicConfig?: Record<string, unknown>;
  /** Path of the `temporal` CLI; default from readToolchain(). */
  binary?: string;
  /** Health-check timeout; default 60 s. */
  timeoutMs?: number;
  /** SIGKILL the server when this Node process exits (for test setups). Default false. */
  stopOnExit?: boolean;
}

/**
 * Starts `temporal server start-dev` detached, waits until the namespace answers, and registers
 * the search attributes. Does not check for an already-running instance: startStack() does.
 * @throws StackError on a taken port, a missing binary, an early exit or a health timeout.
 */
export async function startTemporal(options: StartTemporalOptions): Promise<TemporalHandle> {
  const host = options.host ?? '127.0.0.1';
  const headless = options.headless ?? false;
  const searchAttributes = options.searchAttributes ?? REFINERY_SEARCH_ATTRIBUTES;
  const stateDir = path.resolve(options.stateDir);
  const address = formatHostPort(host, options.port);
  if (!headless && options.uiPort === undefined) throw new StackError('startTemporal: uiPort is required unless headless');

  const binary = options.binary ?? readToolchain().temporal;
  await assertExecutable(binary, 'Temporal CLI');
  await assertPortsFree([
    { host, port: options.port, what: 'Temporal gRPC', fix: `set TEMPORAL_ADDRESS=${host}:<free port>` },
    ...(headless ? [] : [{ host, port: options.uiPort!, what: 'Temporal UI', fix: 'set TEMPORAL_UI_PORT=<free port>' }]),
  ]);

  const dbFile = path.join(stateDir, 'temporal', 'temporal.db');
  await mkdir(path.dirname(dbFile), { recursive: true });
  const args = ['server', 'start-dev', '--db-filename', dbFile, '--ip', host, '--port', String(options.port)];
  if (headless) args.push('--headless');
  else args.push('--ui-port', String(options.uiPort));
  args.push('--namespace', options.namespace);
  for (const [name, type] of Object.entries(searchAttributes)) args.push('--search-attribute', `${name}=${type}`);
  for (const [key, value] of Object.entries(options.dynamicConfig ?? {})) {
    args.push('--dynamic-config-value', `${key}=${JSON.stringify(value)}`);
  }
  args.push('--log-format', 'json', '--log-level', 'warn');

  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const started = await launch({
    service: 'temporal',
    label: 'Temporal',
    binary,
    args,
    stateDir,
    timeoutMs,
    stopOnExit: options.stopOnExit ?? false,
    probe: (ms) => probeTemporal(address, options.namespace, ms),
  });
  try {
    await ensureSearchAttributes(address, options.namespace, searchAttributes, Math.max(timeoutMs / 2, 10_000));
  } catch (err) {
    await started.stop();
    throw err instanceof StackError ? err : new StackError(`Temporal search attributes: ${errorText(err)}; see ${started.paths.logFile}`);
  }
  return {
    service: 'temporal',
    pid: started.pid,
    logFile: started.paths.logFile,
    pidFile: started.paths.pidFile,
    address,
    namespace: options.namespace,
    uiUrl: headless ? null : `http://${formatHostPort(host, options.uiPort!)}`,
    stop: started.stop,
  };
}
