/**
 * Production Temporal: workers and the CLI reach a secured frontend with Temporal's own client
 * settings (config/temporal.ts: TEMPORAL_TLS_*, TEMPORAL_API_KEY or a TOML profile). The dev
 * server has no TLS, so a TLS front with mTLS (test/helpers/tls-proxy.ts, certificates from
 * openssl) stands where a production frontend would: a worker process (control and training) and
 * `refinery run --watch` connect through it with a client certificate and a run completes; without
 * a certificate, with one from another CA, or in plaintext, the CLI is refused with exit code 3 and
 * one line naming the address and the security it tried. The same settings from a TOML profile.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { REPO_ROOT } from '../../config/paths.js';
import { connectionOptions, describeSecurity, temporalSettings } from '../../config/temporal.js';
import { WorkerProcess } from '../../infra/harness/processes.js';
import { testJobCommand } from '../../infra/harness/workers.js';
import { stack, testStackEnv, useTestStackEnv } from '../helpers/env.js';
import { until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';
import { makeTestPki, startTlsProxy, type TestPki, type TlsProxy } from '../helpers/tls-proxy.js';

const BIN = path.join(REPO_ROOT, 'bin', 'refinery');
let pki: TestPki;
let proxy: TlsProxy;
let worker: WorkerProcess | undefined;

beforeAll(async () => {
  useTestStackEnv();
  pki = await makeTestPki();
  proxy = await startTlsProxy({ target: stack().temporalAddress, pki, requireClientCert: true });
});
afterAll(async () => {
  worker?.signal('SIGKILL');
  await proxy?.close();
});

/** The test stack's environment, with Temporal behind the TLS front. */
const securedEnv = (tls: Record<string, string>): Record<string, string> => ({ ...testStackEnv(), TEMPORAL_ADDRESS: proxy.address, ...tls });
const mtls = () => ({
  TEMPORAL_TLS_SERVER_CA_CERT_PATH: pki.ca,
  TEMPORAL_TLS_SERVER_NAME: pki.serverName,
  TEMPORAL_TLS_CLIENT_CERT_PATH: pki.clientCert,
  TEMPORAL_TLS_CLIENT_KEY_PATH: pki.clientKey,
});

describe('a Temporal frontend with TLS and client certificates', () => {
  it('settings come from Temporal\'s own variables or a TOML profile; secrets stay out of messages', async () => {
    const fromEnv = temporalSettings({ ...mtls(), TEMPORAL_ADDRESS: 'temporal.example:7233', TEMPORAL_NAMESPACE: 'prod' });
    expect(fromEnv).toMatchObject({ address: 'temporal.example:7233', namespace: 'prod', tls: { serverNameOverride: pki.serverName } });
    expect(Buffer.from(fromEnv.tls!.clientCertPair!.crt).toString()).toContain('BEGIN CERTIFICATE');
    expect(describeSecurity(fromEnv)).toBe('mTLS');
    const cloud = temporalSettings({ TEMPORAL_ADDRESS: 'ns.acct.tmprl.cloud:7233', TEMPORAL_API_KEY: 'sekrit-key' });
    expect(connectionOptions(cloud)).toMatchObject({ address: 'ns.acct.tmprl.cloud:7233', apiKey: 'sekrit-key' });
    expect(describeSecurity(cloud)).toBe('TLS + API key'); // an API key turns TLS on
    expect(describeSecurity(temporalSettings({}))).toBe('plaintext');
    expect(temporalSettings({})).toMatchObject({ address: '127.0.0.1:7233', namespace: 'refinery' }); // the local stack

    const dir = await mkdtemp(path.join(tmpdir(), 'refinery-tls-toml-'));
    const toml = path.join(dir, 'temporal.toml');
    await writeFile(toml, `[profile.prod]\naddress = "${proxy.address}"\nnamespace = "${stack().namespace}"\n[profile.prod.tls]\nserver_ca_cert_path = "${pki.ca}"\nserver_name = "${pki.serverName}"\nclient_cert_path = "${pki.clientCert}"\nclient_key_path = "${pki.clientKey}"\n`);
    const fromToml = temporalSettings({ TEMPORAL_CONFIG_FILE: toml, TEMPORAL_PROFILE: 'prod' });
    expect(fromToml).toMatchObject({ address: proxy.address, namespace: stack().namespace, tls: { serverNameOverride: pki.serverName } });
    expect(describeSecurity(fromToml)).toBe('mTLS');
  });

  it('a worker and the CLI run a pipeline through it with a client certificate; without one, with a rogue one or in plaintext the CLI is refused', async () => {
    const queue = `tls-${Date.now().toString(36)}`;
    const scratch = await mkdtemp(path.join(tmpdir(), 'refinery-tls-worker-'));
    worker = await WorkerProcess.spawn({ name: 'tls-worker', queue, scratch, stackEnv: securedEnv(mtls()), jobCommand: testJobCommand()('sft'), control: true, logDir: path.dirname(scratch) });
    await until('the worker connected over mTLS', async () => worker!.logTail(400).includes(`on ${proxy.address}/${stack().namespace} (mTLS)`), 120_000);

    const { file } = await writeTestSpec({ name: 'tls-run', storage: { prefix: `it-tls-${queue}` }, stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 4, save_steps: 2 }, job_params: { step_seconds: 0.02 }, resources: { task_queue: queue } }] });
    const run = await execa(BIN, ['run', file, '--watch', '--json'], { env: securedEnv(mtls()), reject: false, timeout: 180_000 });
    expect(run.exitCode, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout)).toMatchObject({ state: 'completed' });

    const refusedBefore = proxy.refused;
    const { TEMPORAL_TLS_CLIENT_CERT_PATH: _c, TEMPORAL_TLS_CLIENT_KEY_PATH: _k, ...caOnly } = mtls();
    for (const [what, env] of [
      ['no client certificate', securedEnv(caOnly)],
      ['a certificate from another CA', securedEnv({ ...mtls(), TEMPORAL_TLS_CLIENT_CERT_PATH: pki.rogueCert, TEMPORAL_TLS_CLIENT_KEY_PATH: pki.rogueKey })],
      ['plaintext', securedEnv({})],
    ] as const) {
      const r = await execa(BIN, ['list'], { env: { ...env }, reject: false, timeout: 60_000 });
      expect(r.exitCode, `${what}: ${r.stderr}`).toBe(3);
      expect(r.stderr, what).toMatch(new RegExp(`^error: cannot reach Temporal at ${proxy.address.replace(/\./g, '\\.')}`, 'm'));
    }
    expect(proxy.refused).toBeGreaterThan(refusedBefore); // the handshakes were refused by the front, not lost elsewhere
  });
});
