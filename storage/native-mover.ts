/**
 * The native mover (infra/mover, `refinery-mover`): a small Go program that moves files between
 * local disk and the bucket and hashes them with sha256 in the stream, for the transfers where
 * Node is the limit (a large file's download) or where the worker's CPU belongs to a training
 * job (checkpoint uploads). The commit protocol stays here: storage/commit.ts decides what to
 * move, checks what the mover reports and writes manifests and markers.
 *
 * One invocation per batch of files: the request goes as JSON on stdin, events come back as JSON
 * lines on stdout (the protocol is described at the top of infra/mover/main.go). Credentials go
 * in the child's environment only, never in argv (visible to every user of the machine).
 */
import { accessSync, constants, existsSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { execa } from 'execa';
import { recordedToolchain } from '../config/toolchain.js';
import type { StorageConfig } from './config.js';
import { ChecksumMismatch, FileChanged } from './object-store.js';
import { LocalFilesystemError } from './local-fs-error.js';

export interface MoverFile {
  key: string;
  /** Absolute local path: the target of a get, the source of a put. */
  path: string;
  size: number;
  /** get: what the bytes must hash to; put: what the file must still hash to (recorded as the object's metadata). */
  sha256?: string;
}

export interface MoverRequest {
  op: 'get' | 'put';
  files: MoverFile[];
  /** Files in flight (default 4). */
  fileConcurrency?: number;
  /** Bytes per ranged GET or uploaded part (default 16 MiB). */
  partSize?: number;
  /** Part buffers over all files: the mover's memory is about partsInFlight × partSize (default 8). */
  partsInFlight?: number;
  /** A cap over all bytes moved (0: none). */
  maxBytesPerSecond?: number;
}

export interface MovedFile {
  key: string;
  size: number;
  sha256: string;
}

export interface MoveOptions {
  /** Bytes moved (and hashed), at least once per part. */
  onBytes?: (n: number) => void;
  /** A file is done: uploaded, or downloaded, verified and under its name. */
  onFile?: (f: MovedFile) => void;
  /** Kills the mover (SIGTERM, SIGKILL 5 s later); moveFiles then throws the signal's reason. */
  signal?: AbortSignal;
  /** Runs it under `nice -n 10 ionice -c 2 -n 7` (where those exist): a background upload beside a job. */
  lowPriority?: boolean;
  /** The binary; default moverPath(). */
  mover?: string;
}

const DEFAULTS = { fileConcurrency: 4, partSize: 16 * 1024 * 1024, partsInFlight: 8, maxBytesPerSecond: 0 };
const KILL_GRACE_MS = 5_000;

/** A mover failure that is neither a checksum mismatch, a missing object nor a changed file. */
export class MoverError extends Error {
  override name = 'MoverError';
  constructor(
    message: string,
    /** The mover's error kind: 'size', 'io', 'aborted', 'exit' (it ended without saying why)… ('local' is LocalFilesystemError) */
    readonly kind: string,
    readonly key?: string,
  ) {
    super(message);
  }
}

/** The object to download does not exist; `code` makes object-store.ts's isNotFound recognise it. */
export class MoverNotFound extends Error {
  override name = 'MoverNotFound';
  readonly code = 'NoSuchKey';
  constructor(
    message: string,
    readonly key: string,
  ) {
    super(message);
  }
}

/**
 * The mover binary, or undefined when there is none: REFINERY_MOVER (a path, or "off" to use
 * Node's transfers), else what infra/bootstrap.sh recorded in toolchain.json ("mover") if it exists.
 */
export function moverPath(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const set = env.REFINERY_MOVER?.trim();
  if (set === 'off') return undefined;
  if (set) return set;
  let recorded: unknown;
  try {
    recorded = recordedToolchain(env)?.mover;
  } catch {
    return undefined; // an unreadable toolchain.json: Node's path still works
  }
  return typeof recorded === 'string' && recorded !== '' && existsSync(recorded) ? recorded : undefined;
}

/** The first executable `name` on PATH. */
function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(path.delimiter)) {
    const p = path.join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return undefined;
}

/** The endpoint URL the mover reads from REFINERY_S3_ENDPOINT. */
function endpointUrl(config: StorageConfig): string {
  const host = config.endPoint.includes(':') ? `[${config.endPoint}]` : config.endPoint;
  return `${config.useSSL ? 'https' : 'http'}://${host}:${config.port}`;
}

/**
 * Runs one mover invocation over `request.files`; resolves with each file's size and sha256 in
 * request order. Failures: ChecksumMismatch (get: the bytes do not hash to the given sha256; the
 * file is not created), MoverNotFound (get: no such object), FileChanged (put: the file no longer
 * hashes to the given sha256), MoverError otherwise; the signal's reason on abort. On a failure
 * the mover has aborted its multipart uploads and removed its temp files.
 */
export async function moveFiles(config: StorageConfig, request: MoverRequest, options: MoveOptions = {}): Promise<MovedFile[]> {
  const { signal } = options;
  signal?.throwIfAborted();
  const mover = options.mover ?? moverPath();
  if (!mover) throw new MoverError('no native mover (REFINERY_MOVER=off, or none in toolchain.json: run bash infra/bootstrap.sh mover)', 'missing');
  const argv: string[] = [];
  // Parent gone (a killed worker): the mover gets SIGTERM and aborts its uploads instead of living on.
  const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));
  if (setpriv && process.platform === 'linux') argv.push(setpriv, '--pdeathsig', 'SIGTERM', '--');
  if (options.lowPriority) {
    const nice = onPath('nice');
    const ionice = onPath('ionice');
    if (nice) argv.push(nice, '-n', '10');
    if (ionice) argv.push(ionice, '-c', '2', '-n', '7');
  }
  argv.push(mover);
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    REFINERY_S3_ENDPOINT: endpointUrl(config),
    REFINERY_S3_ACCESS_KEY: config.accessKey,
    REFINERY_S3_SECRET_KEY: config.secretKey,
    REFINERY_S3_REGION: config.region,
    REFINERY_BUCKET: config.bucket,
  };
  const body = JSON.stringify({ ...DEFAULTS, ...request });
  const child = execa(argv[0]!, argv.slice(1), {
    env,
    extendEnv: false,
    input: body,
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: { stdout: false },
    reject: false,
    forceKillAfterDelay: KILL_GRACE_MS,
    killSignal: 'SIGTERM',
    ...(signal ? { cancelSignal: signal } : {}),
  });

  const done = new Map<string, MovedFile>();
  let failure: Error | undefined;
  const byKey = new Map(request.files.map((f) => [f.key, f]));
  const lines = createInterface({ input: child.stdout, crlfDelay: Infinity });
  lines.on('line', (line) => {
    let ev: Record<string, unknown>;
    try {
      ev = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    try {
      if (ev.event === 'bytes' && typeof ev.n === 'number') options.onBytes?.(ev.n);
      else if (ev.event === 'file' && typeof ev.key === 'string') {
        const f: MovedFile = { key: ev.key, size: Number(ev.size), sha256: String(ev.sha256) };
        done.set(f.key, f);
        options.onFile?.(f);
      } else if (ev.event === 'error') failure ??= errorFromEvent(ev, byKey);
    } catch (err) {
      // A callback that throws (a progress report refusing to go on) stops the transfer.
      failure ??= err instanceof Error ? err : new Error(String(err));
      child.kill('SIGTERM');
    }
  });
  const result = await child;
  lines.close();
  if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason ?? 'aborted'));
  if (failure) throw failure;
  if (result.exitCode !== 0 || result.failed) {
    const stderr = typeof result.stderr === 'string' ? result.stderr.trim().slice(-2000) : '';
    throw new MoverError(`refinery-mover ${request.op} failed (${result.exitCode !== undefined ? `exit ${result.exitCode}` : (result.signal ?? result.shortMessage)})${stderr ? `: ${stderr}` : ''}`, 'exit');
  }
  return request.files.map((f) => {
    const moved = done.get(f.key);
    if (!moved) throw new MoverError(`refinery-mover ${request.op}: ${f.key}: no result`, 'exit', f.key);
    return moved;
  });
}

function errorFromEvent(ev: Record<string, unknown>, byKey: Map<string, MoverFile>): Error {
  const key = typeof ev.key === 'string' ? ev.key : '';
  const message = typeof ev.message === 'string' ? ev.message : `refinery-mover: ${String(ev.kind)} error`;
  const actual = String(ev.actual ?? '');
  const expected = String(ev.expected ?? '');
  switch (ev.kind) {
    case 'checksum':
      return new ChecksumMismatch(key, actual, expected);
    case 'not-found':
      return new MoverNotFound(message, key);
    case 'changed':
      return new FileChanged(byKey.get(key)?.path ?? key, expected, actual);
    case 'local':
      return new LocalFilesystemError(message, typeof ev.code === 'string' && ev.code ? ev.code : undefined, key || undefined);
    default:
      return new MoverError(message, String(ev.kind ?? 'io'), key || undefined);
  }
}
