/**
 * Local stack manager: a Temporal dev server (SQLite-backed) and a MinIO server, run as detached
 * background processes under the state folder, with the same functions reused by the test setup.
 *
 *   tsx infra/stack.ts start  [--json] [--timeout <seconds>]   # idempotent
 *   tsx infra/stack.ts stop   [--json] [--grace <seconds>]     # data stays
 *   tsx infra/stack.ts status [--json]                          # exit 0 all up, 3 otherwise
 *
 * Configuration comes from the environment (infra/stack-config.ts lists it with the defaults).
 * Layout under the state folder (REFINERY_STATE_DIR, default <repo>/.refinery):
 *
 *   toolchain.json          binary paths, written by `bash infra/bootstrap.sh`
 *   temporal/temporal.db    Temporal's SQLite store (history survives stop/start)
 *   minio/data/             MinIO's objects
 *   logs/{temporal,minio}.log
 *   run/{temporal,minio}.pid
 *
 * Expected failures (taken port, missing binary, a service that does not come up) throw a
 * `StackError` whose message is one line naming the fix; the CLI prints that line and exits 1.
 */
import { closeSync, constants as fsConstants, existsSync, openSync, readFileSync, realpathSync, writeSync } from 'node:fs';
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Connection } from '@temporalio/client';
import { execa } from 'execa';
import { Client as MinioClient } from 'minio';
import { z } from 'zod';
import {
  REFINERY_SEARCH_ATTRIBUTES,
  REPO_ROOT,
  StackError,
  loadStackConfig,
  type SearchAttributeType,
  type StackConfig,
} from './stack-config.js';

export { REFINERY_SEARCH_ATTRIBUTES, StackError, loadStackConfig, type SearchAttributeType, type StackConfig };

export type ServiceName = 'temporal' | 'minio';

const DEFAULT_TIMEOUT_MS = 60_000;
const DEFAULT_GRACE_MS = 10_000;
const POLL_MS = 250;
const BOOTSTRAP_FIX = 'run bash infra/bootstrap.sh';

// ------------------------------------------------------------------------------------------------
// Toolchain

export interface Toolchain {
  temporal: string;
  temporalTestServer: string;
  minio: string;
  python: string;
}

const ToolchainSchema = z.object({
  temporal: z.string().min(1),
  temporalTestServer: z.string().min(1),
  minio: z.string().min(1),
  python: z.string().min(1),
});

/** `<REFINERY_STATE_DIR or <repo>/.refinery>/toolchain.json`, where infra/bootstrap.sh writes it. */
export function defaultToolchainPath(env: NodeJS.ProcessEnv = process.env): string {
  const stateDir = env.REFINERY_STATE_DIR ? path.resolve(env.REFINERY_STATE_DIR) : path.join(REPO_ROOT, '.refinery');
  return path.join(stateDir, 'toolchain.json');
}

/**
 * Reads the binary paths written by infra/bootstrap.sh. Only parses: each start function checks
 * that its own binary exists, so a missing Python env does not stop the servers.
 * @throws StackError if the file is missing or malformed ("run bash infra/bootstrap.sh").
 */
export function readToolchain(file: string = defaultToolchainPath()): Toolchain {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new StackError(`toolchain file ${file} not found; ${BOOTSTRAP_FIX}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new StackError(`toolchain file ${file} is not valid JSON; ${BOOTSTRAP_FIX} to rewrite it`);
  }
  const parsed = ToolchainSchema.safeParse(json);
  if (!parsed.success) {
    throw new StackError(`toolchain file ${file} lacks ${parsed.error.issues[0]?.path.join('.') ?? 'a field'}; ${BOOTSTRAP_FIX} to rewrite it`);
  }
  return parsed.data;
}

async function assertExecutable(binary: string, label: string): Promise<void> {
  try {
    await access(binary, fsConstants.X_OK);
  } catch {
    throw new StackError(`${label} binary not found or not executable at ${binary}; ${BOOTSTRAP_FIX}`);
  }
}

// ------------------------------------------------------------------------------------------------
// Paths, ports, pids

export interface ServicePaths {
  logFile: string;
  pidFile: string;
}

/** Where a service's log and pid file live under a state folder. */
export function servicePaths(stateDir: string, service: ServiceName): ServicePaths {
  return {
    logFile: path.join(stateDir, 'logs', `${service}.log`),
    pidFile: path.join(stateDir, 'run', `${service}.pid`),
  };
}

function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A TCP port nobody is listening on right now (the OS picks it). */
export async function getFreePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host, port: 0, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** True if we can bind `host:port` right now. */
export async function isPortFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE' || err.code === 'EACCES') resolve(false);
      else reject(new StackError(`cannot bind ${formatHostPort(host, port)}: ${err.message}`));
    });
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

interface PortClaim {
  host: string;
  port: number;
  /** e.g. "Temporal gRPC" */
  what: string;
  /** e.g. "set TEMPORAL_ADDRESS=127.0.0.1:<port>" */
  fix: string;
}

async function assertPortsFree(claims: PortClaim[]): Promise<void> {
  for (const claim of claims) {
    if (!(await isPortFree(claim.host, claim.port))) {
      throw new StackError(
        `port ${formatHostPort(claim.host, claim.port)} (${claim.what}) is already in use by another process ` +
          `(find it with: lsof -iTCP:${claim.port} -sTCP:LISTEN); stop it or ${claim.fix}`,
      );
    }
  }
}

/** Alive and not a zombie. */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    // Linux: a zombie still answers kill(0); its state letter follows the "(comm)" field.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

/**
 * Whether `pid` is a process we started for this state folder: its command line mentions the
 * folder (db file or data dir). Where /proc is unavailable (macOS) a live pid is trusted.
 */
function isOurProcess(pid: number, marker: string): boolean {
  if (!isProcessAlive(pid)) return false;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').some((arg) => arg.includes(marker));
  } catch {
    return true;
  }
}

async function readPidFile(pidFile: string): Promise<number | null> {
  try {
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal); // the whole process group: we start each service as a group leader
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** TERM, then KILL after `graceMs`. Resolves once the process is gone. */
async function terminate(pid: number, graceMs: number): Promise<'terminated' | 'killed' | 'not-running'> {
  if (!isProcessAlive(pid)) return 'not-running';
  signalGroup(pid, 'SIGTERM');
  const termDeadline = Date.now() + graceMs;
  while (Date.now() < termDeadline) {
    if (!isProcessAlive(pid)) return 'terminated';
    await sleep(100);
  }
  signalGroup(pid, 'SIGKILL');
  const killDeadline = Date.now() + 5_000;
  while (Date.now() < killDeadline && isProcessAlive(pid)) await sleep(50);
  return 'killed';
}

/** Last meaningful log line after `fromByte`, shortened, for error messages. JSON logs give msg+error. */
function lastLogLine(logFile: string, fromByte = 0): string | undefined {
  let text: string;
  try {
    const buffer = readFileSync(logFile);
    text = buffer.subarray(Math.max(fromByte, buffer.length - 16_384)).toString('utf8');
  } catch {
    return undefined;
  }
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('--- refinery stack'));
  const line = lines.at(-1);
  if (!line) return undefined;
  let shown = line;
  try {
    const record = JSON.parse(line) as { msg?: unknown; error?: unknown };
    if (typeof record.msg === 'string') shown = record.error ? `${record.msg}: ${String(record.error)}` : record.msg;
  } catch {
    // plain text
  }
  return shown.length > 200 ? `${shown.slice(0, 197)}...` : shown;
}

// ------------------------------------------------------------------------------------------------
// Launching a detached service and waiting for it

/** A running service started by this module. */
export interface ServiceHandle {
  readonly service: ServiceName;
  readonly pid: number;
  readonly logFile: string;
  readonly pidFile: string;
  /** TERM, KILL after `graceMs` (default 10 s); removes the pid file. Data stays. */
  stop(options?: { graceMs?: number }): Promise<void>;
}

export interface TemporalHandle extends ServiceHandle {
  readonly service: 'temporal';
  /** host:port for `Connection.connect({ address })`. */
  readonly address: string;
  readonly namespace: string;
  /** Web UI, or null when headless. */
  readonly uiUrl: string | null;
}

export interface MinioHandle extends ServiceHandle {
  readonly service: 'minio';
  /** S3 endpoint URL, e.g. http://127.0.0.1:9000. */
  readonly endpoint: string;
  readonly host: string;
  readonly port: number;
  readonly consoleUrl: string;
  readonly accessKey: string;
  readonly secretKey: string;
  readonly bucket: string | null;
}

/** Health probe result: ok, or why not (the last reason ends up in the timeout message). */
export type Probe = { ok: true } | { ok: false; reason: string };

interface LaunchSpec {
  service: ServiceName;
  label: string;
  binary: string;
  args: string[];
  env?: Record<string, string>;
  stateDir: string;
  timeoutMs: number;
  stopOnExit: boolean;
  probe: (timeoutMs: number) => Promise<Probe>;
}

interface Launched {
  pid: number;
  paths: ServicePaths;
  stop: (options?: { graceMs?: number }) => Promise<void>;
}

async function launch(spec: LaunchSpec): Promise<Launched> {
  const paths = servicePaths(spec.stateDir, spec.service);
  await mkdir(path.dirname(paths.logFile), { recursive: true });
  await mkdir(path.dirname(paths.pidFile), { recursive: true });

  const fd = openSync(paths.logFile, 'a');
  let logStart: number;
  // execa's types list only fds 3-9, but any fd number goes straight to child_process.spawn().
  const logFd = fd as 3;
  let subprocess;
  try {
    writeSync(fd, `\n--- refinery stack: starting ${spec.service} at ${new Date().toISOString()} ---\n`);
    logStart = readFileSync(paths.logFile).length;
    // Own process group (detached), output straight to the log file, no shell: it outlives us.
    subprocess = execa(spec.binary, spec.args, {
      cwd: spec.stateDir,
      env: spec.env ?? {},
      extendEnv: true,
      detached: true,
      cleanup: false,
      reject: false,
      stdin: 'ignore',
      stdout: logFd,
      stderr: logFd,
    });
  } finally {
    closeSync(fd); // the child holds its own copy
  }
  let exit: { code: number | undefined; signal: string | undefined } | null = null;
  const exited = subprocess.then((result) => {
    exit = { code: result.exitCode, signal: result.signal };
  });
  const pid = subprocess.pid;
  if (pid === undefined) {
    await exited;
    throw new StackError(`could not start ${spec.label} (${spec.binary}): spawn failed; ${BOOTSTRAP_FIX}`);
  }
  subprocess.unref();
  await writeFile(paths.pidFile, `${pid}\n`);

  const onExit = () => signalGroup(pid, 'SIGKILL');
  if (spec.stopOnExit) process.once('exit', onExit);

  let stopped = false;
  const stop = async ({ graceMs = DEFAULT_GRACE_MS }: { graceMs?: number } = {}) => {
    if (stopped) return;
    stopped = true;
    process.removeListener('exit', onExit);
    if (exit === null) await terminate(pid, graceMs);
    await rm(paths.pidFile, { force: true });
  };

  const deadline = Date.now() + spec.timeoutMs;
  let last: Probe = { ok: false, reason: 'not checked yet' };
  for (;;) {
    if (exit !== null) {
      await stop();
      const { code, signal } = exit as { code: number | undefined; signal: string | undefined };
      const how = signal ? `was killed by ${signal}` : `exited with code ${code ?? '?'}`;
      const line = lastLogLine(paths.logFile, logStart);
      throw new StackError(`${spec.label} ${how} during startup${line ? ` (last log line: ${line})` : ''}; see ${paths.logFile}`);
    }
    const remaining = deadline - Date.now();
    if (remaining <= 0) break;
    last = await spec.probe(Math.min(3_000, Math.max(remaining, 500)));
    if (last.ok) return { pid, paths, stop };
    await Promise.race([sleep(POLL_MS), exited]);
  }
  await stop({ graceMs: 3_000 });
  throw new StackError(
    `${spec.label} did not become healthy within ${Math.round(spec.timeoutMs / 1000)} s ` +
      `(last check: ${last.ok ? 'ok' : last.reason}); see ${paths.logFile}`,
  );
}

// ------------------------------------------------------------------------------------------------
// Temporal

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

function errorText(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.split('\n')[0]!.slice(0, 200);
}

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

// ------------------------------------------------------------------------------------------------
// MinIO

/** GET /minio/health/live. Never throws. */
export async function probeMinio(endpoint: string, timeoutMs = 3_000): Promise<Probe> {
  try {
    const response = await fetch(new URL('/minio/health/live', endpoint), { signal: AbortSignal.timeout(timeoutMs) });
    await response.body?.cancel();
    return response.ok ? { ok: true } : { ok: false, reason: `HTTP ${response.status} from ${endpoint}/minio/health/live` };
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code;
    return { ok: false, reason: cause ?? errorText(err) };
  }
}

export interface S3Credentials {
  host: string;
  port: number;
  accessKey: string;
  secretKey: string;
}

/** A minio client for a local http endpoint. */
export function minioClient({ host, port, accessKey, secretKey }: S3Credentials): MinioClient {
  return new MinioClient({ endPoint: host, port, useSSL: false, accessKey, secretKey, pathStyle: true });
}

/**
 * Creates `bucket` if missing. Retries briefly: right after /health/live answers, MinIO may
 * still refuse requests while it initializes.
 * @returns true if it was created.
 */
export async function ensureBucket(credentials: S3Credentials, bucket: string, timeoutMs = 15_000): Promise<boolean> {
  const client = minioClient(credentials);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await client.bucketExists(bucket)) return false;
      await client.makeBucket(bucket);
      return true;
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'BucketAlreadyOwnedByYou') return false;
      if (code === 'InvalidAccessKeyId' || code === 'SignatureDoesNotMatch') {
        throw new StackError(
          `MinIO at ${formatHostPort(credentials.host, credentials.port)} rejected REFINERY_S3_ACCESS_KEY/REFINERY_S3_SECRET_KEY ` +
            `(${code}); use the credentials it was first started with`,
        );
      }
      if (Date.now() > deadline) throw new StackError(`could not create bucket ${bucket} on MinIO: ${errorText(err)}`);
      await sleep(POLL_MS);
    }
  }
}

export interface StartMinioOptions {
  /** State folder: log in logs/, pid in run/, data in minio/data unless `dataDir`. */
  stateDir: string;
  /** Default `<stateDir>/minio/data`. */
  dataDir?: string;
  /** Bind address. Default 127.0.0.1. */
  host?: string;
  /** S3 API port. */
  port: number;
  /** Console port. */
  consolePort: number;
  /** Root user/password, given to MinIO through its environment. Default minioadmin/minioadmin. */
  accessKey?: string;
  secretKey?: string;
  /** Bucket to create if missing. */
  bucket?: string;
  /** Path of the `minio` binary; default from readToolchain(). */
  binary?: string;
  /** Health-check timeout; default 60 s. */
  timeoutMs?: number;
  /** SIGKILL the server when this Node process exits (for test setups). Default false. */
  stopOnExit?: boolean;
}

/**
 * Starts `minio server` detached, waits for /minio/health/live, and creates the bucket.
 * @throws StackError on a taken port, a missing binary, an early exit or a health timeout.
 */
export async function startMinio(options: StartMinioOptions): Promise<MinioHandle> {
  const host = options.host ?? '127.0.0.1';
  const stateDir = path.resolve(options.stateDir);
  const dataDir = path.resolve(options.dataDir ?? path.join(stateDir, 'minio', 'data'));
  const accessKey = options.accessKey ?? 'minioadmin';
  const secretKey = options.secretKey ?? 'minioadmin';
  const endpoint = `http://${formatHostPort(host, options.port)}`;

  const binary = options.binary ?? readToolchain().minio;
  await assertExecutable(binary, 'MinIO');
  await assertPortsFree([
    { host, port: options.port, what: 'MinIO S3 API', fix: `set REFINERY_S3_ENDPOINT=http://${host}:<free port>` },
    { host, port: options.consolePort, what: 'MinIO console', fix: 'set REFINERY_S3_CONSOLE_PORT=<free port>' },
  ]);
  await mkdir(dataDir, { recursive: true });

  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const started = await launch({
    service: 'minio',
    label: 'MinIO',
    binary,
    args: [
      'server',
      dataDir,
      '--address',
      formatHostPort(host, options.port),
      '--console-address',
      formatHostPort(host, options.consolePort),
    ],
    // Credentials through the environment only, never argv (visible in ps).
    env: { MINIO_ROOT_USER: accessKey, MINIO_ROOT_PASSWORD: secretKey, MINIO_UPDATE: 'off' },
    stateDir,
    timeoutMs,
    stopOnExit: options.stopOnExit ?? false,
    probe: (ms) => probeMinio(endpoint, ms),
  });
  if (options.bucket) {
    try {
      await ensureBucket({ host, port: options.port, accessKey, secretKey }, options.bucket, Math.max(timeoutMs / 2, 15_000));
    } catch (err) {
      await started.stop();
      throw err instanceof StackError ? err : new StackError(`MinIO bucket: ${errorText(err)}; see ${started.paths.logFile}`);
    }
  }
  return {
    service: 'minio',
    pid: started.pid,
    logFile: started.paths.logFile,
    pidFile: started.paths.pidFile,
    endpoint,
    host,
    port: options.port,
    consoleUrl: `http://${formatHostPort(host, options.consolePort)}`,
    accessKey,
    secretKey,
    bucket: options.bucket ?? null,
    stop: started.stop,
  };
}

// ------------------------------------------------------------------------------------------------
// The whole stack, as configured from the environment

export interface ServiceStatus {
  service: ServiceName;
  /** Answering its health check. */
  up: boolean;
  /** Pid from our pid file, when that process is alive; null otherwise. */
  pid: number | null;
  /** Temporal: host:port. MinIO: endpoint URL. */
  address: string;
  /** Temporal Web UI or MinIO console. */
  uiUrl: string;
  logFile: string;
  /** Why it is down, or a warning (e.g. answering but not started by us). */
  detail?: string;
}

export interface StackStatus {
  stateDir: string;
  temporal: ServiceStatus & { namespace: string };
  minio: ServiceStatus & { bucket: string };
}

/** Pid from the pid file if it names a live process of ours; removes a stale file. */
async function ourPid(stateDir: string, service: ServiceName, marker: string): Promise<number | null> {
  const { pidFile } = servicePaths(stateDir, service);
  const pid = await readPidFile(pidFile);
  if (pid !== null && isOurProcess(pid, marker)) return pid;
  if (existsSync(pidFile)) await rm(pidFile, { force: true });
  return null;
}

const markers = (config: StackConfig) => ({
  temporal: path.join(config.stateDir, 'temporal', 'temporal.db'),
  minio: path.join(config.stateDir, 'minio', 'data'),
});

/** Up/down, pid, addresses and URLs of both services. Never starts anything. */
export async function stackStatus(config: StackConfig = loadStackConfig()): Promise<StackStatus> {
  const mark = markers(config);
  const [temporalPid, minioPid, temporalProbe, minioProbe] = await Promise.all([
    ourPid(config.stateDir, 'temporal', mark.temporal),
    ourPid(config.stateDir, 'minio', mark.minio),
    probeTemporal(config.temporal.address, config.temporal.namespace, 2_000),
    probeMinio(config.s3.endpoint, 2_000),
  ]);
  const describe = (pid: number | null, probe: Probe): string | undefined => {
    if (probe.ok) return pid === null ? 'answering, but not started by this stack (no live pid file)' : undefined;
    return pid === null ? 'not running' : `process ${pid} running but not healthy: ${probe.reason}`;
  };
  const withDetail = <T extends object>(status: T, detail: string | undefined) => (detail ? { ...status, detail } : status);
  return {
    stateDir: config.stateDir,
    temporal: withDetail(
      {
        service: 'temporal' as const,
        up: temporalProbe.ok,
        pid: temporalPid,
        address: config.temporal.address,
        uiUrl: `http://${formatHostPort(config.temporal.host, config.temporal.uiPort)}`,
        logFile: servicePaths(config.stateDir, 'temporal').logFile,
        namespace: config.temporal.namespace,
      },
      describe(temporalPid, temporalProbe),
    ),
    minio: withDetail(
      {
        service: 'minio' as const,
        up: minioProbe.ok,
        pid: minioPid,
        address: config.s3.endpoint,
        uiUrl: `http://${formatHostPort(config.s3.host, config.s3.consolePort)}`,
        logFile: servicePaths(config.stateDir, 'minio').logFile,
        bucket: config.s3.bucket,
      },
      describe(minioPid, minioProbe),
    ),
  };
}

export interface StartStackOptions {
  /** Per-service health timeout; default 60 s. */
  timeoutMs?: number;
  /** Called with one progress line per service. */
  onProgress?: (line: string) => void;
  /** Default: readToolchain(<stateDir>/toolchain.json). */
  toolchain?: Toolchain;
}

async function waitHealthy(probe: () => Promise<Probe>, timeoutMs: number): Promise<Probe> {
  const deadline = Date.now() + timeoutMs;
  let last = await probe();
  while (!last.ok && Date.now() < deadline) {
    await sleep(POLL_MS);
    last = await probe();
  }
  return last;
}

/**
 * Starts whatever is not running, leaves running services alone (checking their health,
 * search attributes and bucket), and returns the resulting status. Idempotent. If MinIO fails
 * after Temporal started, Temporal is left running; fixing the cause and rerunning is enough.
 */
export async function startStack(config: StackConfig = loadStackConfig(), options: StartStackOptions = {}): Promise<StackStatus> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const say = options.onProgress ?? (() => undefined);
  const mark = markers(config);
  let toolchain = options.toolchain;
  const tools = () => (toolchain ??= readToolchain(path.join(config.stateDir, 'toolchain.json')));
  const stopHint = 'run tsx infra/stack.ts stop, then start';

  // Temporal
  const t = config.temporal;
  const temporalPid = await ourPid(config.stateDir, 'temporal', mark.temporal);
  if (temporalPid !== null) {
    const probe = await waitHealthy(() => probeTemporal(t.address, t.namespace), timeoutMs);
    const log = servicePaths(config.stateDir, 'temporal').logFile;
    if (!probe.ok) throw new StackError(`Temporal (pid ${temporalPid}) is running but not healthy (${probe.reason}); see ${log}, or ${stopHint}`);
    const added = await ensureSearchAttributes(t.address, t.namespace);
    say(`temporal  already running (pid ${temporalPid}) at ${t.address}${added.length ? `; registered ${added.join(', ')}` : ''}`);
  } else {
    const t0 = Date.now();
    const handle = await startTemporal({
      stateDir: config.stateDir,
      host: t.host,
      port: t.port,
      uiPort: t.uiPort,
      namespace: t.namespace,
      binary: tools().temporal,
      timeoutMs,
    });
    say(`temporal  started (pid ${handle.pid}) at ${t.address} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }

  // MinIO
  const s = config.s3;
  const credentials = { host: s.host, port: s.port, accessKey: s.accessKey, secretKey: s.secretKey };
  const minioPid = await ourPid(config.stateDir, 'minio', mark.minio);
  if (minioPid !== null) {
    const probe = await waitHealthy(() => probeMinio(s.endpoint), timeoutMs);
    const log = servicePaths(config.stateDir, 'minio').logFile;
    if (!probe.ok) throw new StackError(`MinIO (pid ${minioPid}) is running but not healthy (${probe.reason}); see ${log}, or ${stopHint}`);
    const created = await ensureBucket(credentials, s.bucket);
    say(`minio     already running (pid ${minioPid}) at ${s.endpoint}${created ? `; created bucket ${s.bucket}` : ''}`);
  } else {
    const t0 = Date.now();
    const handle = await startMinio({
      stateDir: config.stateDir,
      host: s.host,
      port: s.port,
      consolePort: s.consolePort,
      accessKey: s.accessKey,
      secretKey: s.secretKey,
      bucket: s.bucket,
      binary: tools().minio,
      timeoutMs,
    });
    say(`minio     started (pid ${handle.pid}) at ${s.endpoint} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }
  return stackStatus(config);
}

export interface StopResult {
  service: ServiceName;
  /** What happened to our process. */
  outcome: 'terminated' | 'killed' | 'not-running';
  pid: number | null;
}

/** Stops both services (TERM, KILL after `graceMs`), removes pid files. Data stays. */
export async function stopStack(
  config: StackConfig = loadStackConfig(),
  options: { graceMs?: number; onProgress?: (line: string) => void } = {},
): Promise<StopResult[]> {
  const graceMs = options.graceMs ?? DEFAULT_GRACE_MS;
  const mark = markers(config);
  const stopOne = async (service: ServiceName): Promise<StopResult> => {
    const pid = await ourPid(config.stateDir, service, mark[service]);
    const outcome = pid === null ? 'not-running' : await terminate(pid, graceMs);
    await rm(servicePaths(config.stateDir, service).pidFile, { force: true });
    return { service, outcome, pid };
  };
  const results = await Promise.all([stopOne('temporal'), stopOne('minio')]);
  for (const { service, outcome, pid } of results) {
    const text = {
      terminated: `stopped (pid ${pid})`,
      killed: `killed after ${graceMs / 1000} s grace (pid ${pid})`,
      'not-running': 'not running',
    }[outcome];
    options.onProgress?.(`${service.padEnd(9)} ${text}`);
  }
  return results;
}

// ------------------------------------------------------------------------------------------------
// CLI

function formatStatus(status: StackStatus): string {
  const row = (s: ServiceStatus, extra: string) =>
    `  ${s.service.padEnd(9)} ${(s.up ? 'up' : 'down').padEnd(5)} ${s.address.padEnd(22)} ` +
    `pid ${String(s.pid ?? '-').padEnd(8)} ${extra}${s.detail ? `\n  ${''.padEnd(9)} ${s.detail}` : ''}`;
  return [
    `state dir: ${status.stateDir}`,
    row(status.temporal, `namespace ${status.temporal.namespace}  UI ${status.temporal.uiUrl}`),
    row(status.minio, `bucket ${status.minio.bucket}  console ${status.minio.uiUrl}`),
  ].join('\n');
}

const USAGE = 'usage: tsx infra/stack.ts start|stop|status [--json] [--timeout <seconds>] [--grace <seconds>]';

function parseSeconds(args: string[], flag: string): number | undefined {
  const i = args.indexOf(flag);
  if (i === -1) return undefined;
  const value = Number(args[i + 1]);
  if (!(value > 0)) throw new StackError(`${flag} needs a number of seconds; ${USAGE}`);
  args.splice(i, 2);
  return value * 1000;
}

/** The CLI; returns the exit code. */
export async function main(argv: string[] = process.argv.slice(2)): Promise<number> {
  const args = [...argv];
  if (args.includes('--help') || args.includes('-h')) {
    console.log(USAGE);
    return 0;
  }
  const json = args.includes('--json');
  const timeoutMs = parseSeconds(args, '--timeout');
  const graceMs = parseSeconds(args, '--grace');
  const rest = args.filter((a) => a !== '--json');
  const command = rest[0];
  if (rest.length !== 1 || (command !== 'start' && command !== 'stop' && command !== 'status')) {
    throw new StackError(`unknown arguments "${argv.join(' ')}"; ${USAGE}`);
  }
  const config = loadStackConfig();
  const progress = json ? undefined : (line: string) => console.log(line);
  switch (command) {
    case 'start': {
      const status = await startStack(config, { timeoutMs, onProgress: progress });
      console.log(json ? JSON.stringify(status, null, 2) : formatStatus(status));
      return 0;
    }
    case 'stop': {
      const results = await stopStack(config, { graceMs, onProgress: progress });
      if (json) console.log(JSON.stringify({ stateDir: config.stateDir, services: results }, null, 2));
      return 0;
    }
    case 'status': {
      const status = await stackStatus(config);
      console.log(json ? JSON.stringify(status, null, 2) : formatStatus(status));
      return status.temporal.up && status.minio.up ? 0 : 3;
    }
  }
}

function isEntryPoint(): boolean {
  const script = process.argv[1];
  if (!script) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      // One line, no stack trace, for expected and unexpected errors alike (REFINERY_DEBUG=1 shows it).
      const text = err instanceof StackError ? err.message : `unexpected error: ${errorText(err)}`;
      console.error(`refinery stack: ${text}`);
      if (process.env.REFINERY_DEBUG && err instanceof Error) console.error(err.stack);
      process.exit(1);
    },
  );
}
