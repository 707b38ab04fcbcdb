/**
 * The whole local stack as configured from the environment (config/stack.ts): status of both
 * services, an idempotent start that leaves running services alone, and stop. Data stays.
 */
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { StackError } from '../../config/errors.js';
import { loadStackConfig, type StackConfig } from '../../config/stack.js';
import { readToolchain, type Toolchain } from '../../config/toolchain.js';
import { ensureBucket, ensureLockedBucket, probeMinio, startMinio, type LockedBucketOptions } from './minio.js';
import {
  DEFAULT_GRACE_MS,
  DEFAULT_TIMEOUT_MS,
  POLL_MS,
  formatHostPort,
  isOurProcess,
  readPidFile,
  servicePaths,
  sleep,
  terminate,
  type Probe,
  type ServiceName,
} from './processes.js';
import { ensureSearchAttributes, probeTemporal, startTemporal } from './temporal.js';

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
  // The audit trail's write-once copies (config/audit-lock.ts): created with object locking.
  const a = config.audit;
  const auditBucket: LockedBucketOptions | undefined = a.bucket ? { name: a.bucket, retentionDays: a.retentionDays, mode: a.mode } : undefined;
  const lockedNote = (b: LockedBucketOptions) => `${b.name} (object lock, ${b.mode?.toLowerCase() ?? 'compliance'} ${b.retentionDays} d)`;
  const minioPid = await ourPid(config.stateDir, 'minio', mark.minio);
  if (minioPid !== null) {
    const probe = await waitHealthy(() => probeMinio(s.endpoint), timeoutMs);
    const log = servicePaths(config.stateDir, 'minio').logFile;
    if (!probe.ok) throw new StackError(`MinIO (pid ${minioPid}) is running but not healthy (${probe.reason}); see ${log}, or ${stopHint}`);
    const created = [(await ensureBucket(credentials, s.bucket)) ? s.bucket : undefined];
    if (auditBucket && (await ensureLockedBucket(credentials, auditBucket))) created.push(lockedNote(auditBucket));
    const made = created.filter(Boolean);
    say(`minio     already running (pid ${minioPid}) at ${s.endpoint}${made.length ? `; created bucket ${made.join(', ')}` : ''}`);
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
      auditBucket,
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
