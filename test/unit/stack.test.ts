// The local stack manager (infra/stack.ts): configuration, the error paths (with fake binaries,
// no real servers), the CLI's one-line errors, and one real start/stop/restart of Temporal + MinIO
// on free ports in a temporary state folder, checking that history and objects survive.
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { SearchAttributeType, defineSearchAttributeKey } from '@temporalio/common';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../config/paths.js';
import {
  REFINERY_SEARCH_ATTRIBUTES,
  StackError,
  getFreePort,
  isProcessAlive,
  loadStackConfig,
  minioClient,
  readToolchain,
  stackStatus,
  startMinio,
  startStack,
  startTemporal,
  stopStack,
  type MinioHandle,
  type TemporalHandle,
} from '../../infra/stack.js';

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'refinery-stack-test-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** An executable shell script standing in for a server binary. */
async function fakeBinary(name: string, body: string): Promise<string> {
  await mkdir(path.join(tmp, 'bin'), { recursive: true });
  const file = path.join(tmp, 'bin', name);
  await writeFile(file, `#!/bin/sh\n${body}\n`);
  await chmod(file, 0o755);
  return file;
}

/** Distinct free ports. */
async function freePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await getFreePort());
  return [...ports];
}

async function listenOn(port: number): Promise<net.Server> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port }, resolve));
  return server;
}

describe('loadStackConfig', () => {
  it('has dev defaults', () => {
    const config = loadStackConfig({});
    expect(config.stateDir).toBe(path.join(REPO_ROOT, '.refinery'));
    expect(config.temporal).toEqual({ host: '127.0.0.1', port: 7233, address: '127.0.0.1:7233', uiPort: 8233, namespace: 'refinery' });
    expect(config.s3).toEqual({
      endpoint: 'http://127.0.0.1:9000',
      host: '127.0.0.1',
      port: 9000,
      consolePort: 9001,
      accessKey: 'minioadmin',
      secretKey: 'minioadmin',
      bucket: 'refinery',
    });
  });

  it('reads the environment', () => {
    const config = loadStackConfig({
      REFINERY_STATE_DIR: '/tmp/x',
      TEMPORAL_ADDRESS: 'localhost:7300',
      TEMPORAL_UI_PORT: '8300',
      REFINERY_S3_ENDPOINT: 'http://localhost:9100/',
      REFINERY_BUCKET: 'my-bucket',
    });
    expect(config.stateDir).toBe('/tmp/x');
    expect(config.temporal).toMatchObject({ host: 'localhost', port: 7300, uiPort: 8300 });
    expect(config.s3).toMatchObject({ endpoint: 'http://localhost:9100', host: 'localhost', port: 9100, bucket: 'my-bucket' });
  });

  it('rejects bad values with the variable and a fix', () => {
    expect(() => loadStackConfig({ TEMPORAL_ADDRESS: '7233' })).toThrow(/TEMPORAL_ADDRESS=7233 is not host:port/);
    expect(() => loadStackConfig({ TEMPORAL_ADDRESS: 'temporal.example.com:7233' })).toThrow(/not a local address/);
    expect(() => loadStackConfig({ TEMPORAL_UI_PORT: 'x' })).toThrow(/TEMPORAL_UI_PORT/);
    expect(() => loadStackConfig({ REFINERY_BUCKET: 'Bad_Bucket' })).toThrow(/REFINERY_BUCKET/);
    expect(() => loadStackConfig({ REFINERY_S3_SECRET_KEY: 'short' })).toThrow(/at least 8/);
  });
});

describe('error paths', () => {
  it('readToolchain: a missing file says to run bootstrap', () => {
    expect(() => readToolchain(path.join(tmp, 'nope.json'))).toThrow(/not found; run bash infra\/bootstrap\.sh/);
  });

  it('a missing binary says to run bootstrap', async () => {
    const [port, uiPort] = await freePorts(2);
    const start = startTemporal({ stateDir: tmp, port: port!, uiPort, namespace: 'x', binary: path.join(tmp, 'no-such-temporal') });
    await expect(start).rejects.toThrow(StackError);
    await expect(start).rejects.toThrow(/Temporal CLI binary not found .*; run bash infra\/bootstrap\.sh/);
    const minio = startMinio({ stateDir: tmp, port: port!, consolePort: uiPort!, binary: path.join(tmp, 'no-such-minio') });
    await expect(minio).rejects.toThrow(/MinIO binary not found .*; run bash infra\/bootstrap\.sh/);
  });

  it('a taken port is detected before starting, naming the variable to change', async () => {
    const binary = await fakeBinary('never-started', 'echo started >> "$0.ran"; sleep 30');
    const [port, uiPort] = await freePorts(2);
    const blocker = await listenOn(port!);
    try {
      await expect(startTemporal({ stateDir: tmp, port: port!, uiPort, namespace: 'x', binary })).rejects.toThrow(
        new RegExp(`port 127\\.0\\.0\\.1:${port} \\(Temporal gRPC\\) is already in use .*set TEMPORAL_ADDRESS=`),
      );
      await expect(startMinio({ stateDir: tmp, port: uiPort!, consolePort: port!, binary })).rejects.toThrow(
        /\(MinIO console\) is already in use .*REFINERY_S3_CONSOLE_PORT/,
      );
    } finally {
      blocker.close();
    }
    expect(existsSync(`${binary}.ran`)).toBe(false);
  });

  it('a service that never becomes healthy is stopped and the error points at its log', async () => {
    const binary = await fakeBinary('hangs', 'exec sleep 30');
    const [port, consolePort] = await freePorts(2);
    const stateDir = path.join(tmp, 'hangs');
    const error = await startMinio({ stateDir, port: port!, consolePort: consolePort!, binary, timeoutMs: 1_000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StackError);
    expect((error as Error).message).toMatch(/^MinIO did not become healthy within 1 s \(last check: .*\); see .*logs\/minio\.log$/);
    expect(existsSync(path.join(stateDir, 'run', 'minio.pid'))).toBe(false);
  });

  it('a service that exits during startup reports its code and last log line', async () => {
    const binary = await fakeBinary('crashes', 'echo "listen tcp: bind: address already in use" >&2; exit 3');
    const [port, uiPort] = await freePorts(2);
    const stateDir = path.join(tmp, 'crashes');
    await expect(startTemporal({ stateDir, port: port!, uiPort, namespace: 'x', binary })).rejects.toThrow(
      /^Temporal exited with code 3 during startup \(last log line: listen tcp: bind: address already in use\); see .*logs\/temporal\.log$/,
    );
  });

  it('the CLI prints one line without a stack trace and exits 1', async () => {
    const stateDir = path.join(tmp, 'empty-state');
    const result = await execa(process.execPath, ['--import', 'tsx', path.join(REPO_ROOT, 'infra', 'stack.ts'), 'start'], {
      cwd: REPO_ROOT,
      env: { REFINERY_STATE_DIR: stateDir },
      reject: false,
    });
    expect(result.exitCode).toBe(1);
    expect(result.stderr.trim().split('\n')).toEqual([
      `refinery stack: toolchain file ${path.join(stateDir, 'toolchain.json')} not found; run bash infra/bootstrap.sh`,
    ]);
  });
});

describe('real stack: start, stop, start again', () => {
  let temporal: TemporalHandle | undefined;
  let minio: MinioHandle | undefined;
  afterAll(async () => {
    await temporal?.stop({ graceMs: 2_000 });
    await minio?.stop({ graceMs: 2_000 });
  });

  it('keeps Temporal history, namespace and search attributes and MinIO objects across a restart', async () => {
    const toolchain = readToolchain();
    const stateDir = path.join(tmp, 'real');
    const [port, uiPort, s3Port, consolePort] = await freePorts(4);
    const namespace = 'refinery-test';
    const bucket = 'refinery-test';

    // First start through the handle API, with one search attribute only: the second start must
    // add the others, because start-dev registers attributes only on a fresh database.
    [temporal, minio] = await Promise.all([
      startTemporal({
        stateDir,
        port: port!,
        namespace,
        headless: true,
        searchAttributes: { RefineryPipeline: 'Keyword' },
        binary: toolchain.temporal,
        stopOnExit: true,
      }),
      startMinio({ stateDir, port: s3Port!, consolePort: consolePort!, bucket, binary: toolchain.minio, stopOnExit: true }),
    ]);
    expect(temporal.uiUrl).toBeNull();
    expect(existsSync(temporal.pidFile)).toBe(true);
    const s3 = minioClient(minio);
    await s3.putObject(bucket, 'kept/object.txt', Buffer.from('still here'));
    // A workflow with no worker: it just sits in history, tagged with a search attribute.
    const pipelineKey = defineSearchAttributeKey('RefineryPipeline', SearchAttributeType.KEYWORD);
    const first = await Connection.connect({ address: temporal.address });
    try {
      await new Client({ connection: first, namespace }).workflow.start('noWorkerWorkflow', {
        workflowId: 'kept-workflow',
        taskQueue: 'no-worker',
        typedSearchAttributes: [{ key: pipelineKey, value: 'stack-test' }],
      });
    } finally {
      await first.close();
    }

    const pids = [temporal.pid, minio.pid];
    await Promise.all([temporal.stop(), minio.stop()]);
    expect(pids.map(isProcessAlive)).toEqual([false, false]);
    expect(existsSync(temporal.pidFile) || existsSync(minio.pidFile)).toBe(false);
    temporal = minio = undefined;

    // Second start through the environment-driven path the CLI uses.
    const config = loadStackConfig({
      REFINERY_STATE_DIR: stateDir,
      TEMPORAL_ADDRESS: `127.0.0.1:${port}`,
      TEMPORAL_UI_PORT: String(uiPort),
      TEMPORAL_NAMESPACE: namespace,
      REFINERY_S3_ENDPOINT: `http://127.0.0.1:${s3Port}`,
      REFINERY_S3_CONSOLE_PORT: String(consolePort),
      REFINERY_BUCKET: bucket,
    });
    try {
      const status = await startStack(config, { toolchain });
      expect(status.temporal).toMatchObject({ up: true, address: `127.0.0.1:${port}` });
      expect(status.minio).toMatchObject({ up: true, address: `http://127.0.0.1:${s3Port}` });
      expect(status.temporal.pid).toBeGreaterThan(0);

      const object = await s3.getObject(bucket, 'kept/object.txt');
      expect(Buffer.concat(await object.toArray()).toString()).toBe('still here');

      const connection = await Connection.connect({ address: config.temporal.address });
      try {
        const described = await connection.workflowService.describeNamespace({ namespace });
        expect(described.namespaceInfo?.name).toBe(namespace);
        const { customAttributes } = await connection.operatorService.listSearchAttributes({ namespace });
        expect(Object.keys(customAttributes ?? {})).toEqual(expect.arrayContaining(Object.keys(REFINERY_SEARCH_ATTRIBUTES)));
        const kept = await new Client({ connection, namespace }).workflow.getHandle('kept-workflow').describe();
        expect(kept.status.name).toBe('RUNNING');
        expect(kept.typedSearchAttributes.get(pipelineKey)).toBe('stack-test');
      } finally {
        await connection.close();
      }

      // Idempotent: a second start leaves the running services alone.
      const lines: string[] = [];
      const again = await startStack(config, { toolchain, onProgress: (line) => lines.push(line) });
      expect(lines.map((l) => l.split(/\s+/).slice(0, 3).join(' '))).toEqual(['temporal already running', 'minio already running']);
      expect(again.temporal.pid).toBe(status.temporal.pid);
    } finally {
      const stopped = await stopStack(config, { graceMs: 5_000 });
      expect(stopped.map((s) => s.outcome)).toEqual(['terminated', 'terminated']);
    }
    const after = await stackStatus(config);
    expect([after.temporal.up, after.minio.up, after.temporal.pid, after.minio.pid]).toEqual([false, false, null, null]);
  });
});
