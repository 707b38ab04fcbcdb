/**
 * Payload encryption end to end. A short run (contract test job, one failed and retried attempt) with
 * the control worker in this process and the training worker as a `bin/refinery worker` process,
 * both given a test key, as is the client. Then, through a client WITHOUT the codec, the raw history
 * of the run and of its stage: every payload (workflow and activity inputs and results, signals,
 * failure attributes) is `binary/encrypted`, and markers from the spec (pipeline name, storage
 * prefix, dataset path) and the job's failure message appear nowhere in the history outside the
 * search attributes. With the codec the same payloads give them
 * back; so does the codec server (`refinery codec-server`), while one with another key refuses.
 */
import * as PATCHES from '../../workflows/patches.js';
import { copyFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { METADATA_ENCODING_KEY, type Payload } from '@temporalio/common';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRun } from '../../client/commands/run.js';
import { startCodecServer } from '../../client/commands/codec-server.js';
import { dataConverterFromEnv } from '../../codec/data-converter.js';
import { AesGcmPayloadCodec, ENCRYPTED_ENCODING, KEY_ID_METADATA } from '../../codec/payload-codec.js';
import { payloadKeysFromEnv } from '../../codec/payload-keys.js';
import { REPO_ROOT } from '../../config/paths.js';
import { stack, startTestWorkers, testClient, testJobCommand, testStackEnv, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { writeTestSpec } from '../helpers/specs.js';

const BIN = path.join(REPO_ROOT, 'bin', 'refinery');
const keyEnv = { REFINERY_PAYLOAD_KEY: randomBytes(32).toString('base64'), REFINERY_PAYLOAD_KEY_ID: 'it-codec' };
const dataConverter = dataConverterFromEnv(keyEnv)!;
const codec = dataConverter.payloadCodecs![0] as AesGcmPayloadCodec;
const queue = `gpu-codec-${Date.now()}`;
const markers = {
  pipeline: 'codecpipe-q7x2',
  prefix: `codec-prefix-marker-${Date.now()}`,
  dataset: 'codec-dataset-marker-9m.jsonl',
  failure: 'injected failure at step 4',
};

let control: TestWorkers;
let client: Client;
let plain: Client;
const closers: (() => Promise<void>)[] = [];
let trainer: ResultPromise | undefined;
let trainerOutput = '';
/** The run of the first test, read again by the CLI in the second. */
let runId = '';

function stackEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { ...testStackEnv(), ...extra };
}

beforeAll(async () => {
  useTestStackEnv();
  // The training worker reads the key from its environment, as in production (worker/main.ts).
  trainer = execa(BIN, ['worker', '--no-control', '--queue', queue], {
    env: stackEnv({ ...keyEnv, REFINERY_JOB_COMMAND: JSON.stringify(testJobCommand()('sft')) }),
    extendEnv: false,
    reject: false,
    all: true,
    buffer: false,
  });
  trainer.all?.on('data', (chunk: Buffer) => (trainerOutput += chunk.toString()));
  control = await startTestWorkers({ trainingQueues: [], dataConverter });
  const withCodec = await testClient(dataConverter);
  const withoutCodec = await testClient();
  ({ client } = withCodec);
  plain = withoutCodec.client;
  closers.push(withCodec.close, withoutCodec.close);
});
afterAll(async () => {
  trainer?.kill('SIGTERM');
  await trainer;
  for (const close of closers) await close();
  await control?.shutdown();
});

/** Every payload in a history event (any object with metadata.encoding), search attributes left out. */
function payloadsIn(value: unknown, out: Payload[] = []): Payload[] {
  if (Array.isArray(value)) for (const v of value) payloadsIn(v, out);
  else if (value && typeof value === 'object' && !(value instanceof Uint8Array)) {
    const o = value as Record<string, unknown>;
    if (o.metadata && typeof o.metadata === 'object' && (o.metadata as Record<string, unknown>)[METADATA_ENCODING_KEY]) out.push(o as Payload);
    else for (const [k, v] of Object.entries(o)) if (k !== 'searchAttributes') payloadsIn(v, out);
  }
  return out;
}

/**
 * Every string and byte string (read as UTF-8) in a history event, search attributes (plain by design)
 * left out. A walk, not JSON.stringify: proto messages serialise their bytes as base64.
 */
function rawText(value: unknown, out: string[] = []): string {
  if (value instanceof Uint8Array) out.push(Buffer.from(value).toString('utf8'));
  else if (typeof value === 'string') out.push(value);
  else if (Array.isArray(value)) for (const v of value) rawText(v, out);
  else if (value && typeof value === 'object') for (const [k, v] of Object.entries(value)) if (k !== 'searchAttributes') rawText(v, out);
  return out.join('\n');
}

const text = (bytes: Uint8Array | null | undefined) => Buffer.from(bytes ?? []).toString('utf8');
const toJson = (p: Payload) => ({
  metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
  data: Buffer.from(p.data ?? []).toString('base64'),
});

describe('payload encryption', () => {
  it('keeps workflow data encrypted in Temporal, readable with the key and through the codec server', async () => {
    const started = Date.now();
    const { dir, file } = await writeTestSpec({
      name: markers.pipeline,
      storage: { prefix: markers.prefix },
      datasets: { chats: { path: `data/${markers.dataset}`, format: 'chat' } },
      defaults: { resources: { task_queue: queue }, retry: { initial_interval: '1s' }, timeouts: { heartbeat: '10s' } },
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 6, save_steps: 2 }, job_params: { step_seconds: 0.02, fail_at_step: 4 } }],
    });
    await copyFile(path.join(dir, 'data', 'sft.jsonl'), path.join(dir, 'data', markers.dataset));
    const run = await startRun(client, file, { id: `codec-${Date.now()}` });
    const handle = run.handle;
    runId = run.runId;
    const result = await handle.result();
    expect(result.status.state).toBe('completed');
    expect(result.status.stages[0]!.attempt).toBe(2);

    // 1. The raw history, through a client without the codec.
    const ids = [runId, `${runId}--sft`];
    const raw: Payload[] = [];
    let rawAll = '';
    const kinds = new Map<string, number>();
    const count = (kind: string) => kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
    let failures = 0;
    let patchMarkers = 0;
    for (const id of ids) {
      const history = await plain.workflow.getHandle(id).fetchHistory();
      for (const e of history.events ?? []) {
        // Patch markers are written by sdk-core itself, not through the payload codec: their only
        // content is the patch id from workflows/patches.ts (code, not data). Check exactly that.
        if (e.markerRecordedEventAttributes?.markerName === 'core_patch') {
          const inMarker = payloadsIn(e.markerRecordedEventAttributes.details);
          const [marker] = inMarker.map((p) => JSON.parse(text(p.data)) as { id: string; deprecated: boolean });
          expect(inMarker).toHaveLength(1);
          expect(marker).toEqual({ id: expect.any(String), deprecated: false });
          expect(Object.values(PATCHES)).toContain(marker!.id);
          patchMarkers++;
          continue;
        }
        const payloads = payloadsIn(e);
        raw.push(...payloads);
        rawAll += rawText(e);
        if (e.workflowExecutionStartedEventAttributes?.input?.payloads?.length) count('workflow input');
        if (e.workflowExecutionCompletedEventAttributes?.result?.payloads?.length) count('workflow result');
        if (e.activityTaskScheduledEventAttributes?.input?.payloads?.length) count('activity input');
        if (e.activityTaskCompletedEventAttributes?.result?.payloads?.length) count('activity result');
        if (e.workflowExecutionSignaledEventAttributes?.input?.payloads?.length) count('signal');
        if (e.childWorkflowExecutionCompletedEventAttributes?.result?.payloads?.length) count('child result');
        // The failed first attempt is an ActivityTaskFailed event (the stage workflow retries it; runs
        // from before attempt budgets: the retry's lastFailure). encodeCommonAttributes: its message
        // and stack trace travel inside an encrypted payload.
        const failure = e.activityTaskFailedEventAttributes?.failure ?? e.activityTaskStartedEventAttributes?.lastFailure;
        if (failure) {
          failures++;
          expect(failure.message).toBe('Encoded failure');
          expect(failure.stackTrace ?? '').toBe('');
          expect(text(failure.encodedAttributes?.metadata?.[METADATA_ENCODING_KEY])).toBe(ENCRYPTED_ENCODING);
        }
      }
    }
    expect(Object.fromEntries(kinds)).toMatchObject({
      'workflow input': 2, 'workflow result': 2, 'activity input': expect.any(Number), 'activity result': expect.any(Number), 'child result': 1,
    });
    // Live progress travels in heartbeat details, not as signals in the history (docs/operations.md).
    expect(kinds.get('signal')).toBeUndefined();
    expect(patchMarkers).toBe(4); // the run's history-v2, notifications and toolchain-keys, the stage's attempt-budgets
    expect(raw.length).toBeGreaterThan(20);
    const notEncrypted = raw.filter((p) => text(p.metadata?.[METADATA_ENCODING_KEY]) !== ENCRYPTED_ENCODING);
    expect(notEncrypted.map((p) => text(p.metadata?.[METADATA_ENCODING_KEY]))).toEqual([]);
    expect(new Set(raw.map((p) => text(p.metadata?.[KEY_ID_METADATA])))).toEqual(new Set(['it-codec']));
    expect(failures).toBeGreaterThanOrEqual(1);
    // (The scan reads payload bytes as text: the metadata of this very history, a marker in a plain payload.)
    expect(rawAll).toContain(ENCRYPTED_ENCODING);
    for (const data of [Buffer.from(markers.dataset), new TextEncoder().encode(markers.dataset)]) expect(rawText({ input: { payloads: [{ data }] } })).toContain(markers.dataset);
    for (const [name, marker] of Object.entries(markers)) expect(rawAll.includes(marker), `${name} in the raw history`).toBe(false);
    // The pipeline name is only in the search attributes (plain by design: the UI filters on them).
    const parentRaw = await plain.workflow.getHandle(runId).fetchHistory();
    const pipelineAttribute = parentRaw.events?.map((e) => e.upsertWorkflowSearchAttributesEventAttributes?.searchAttributes?.indexedFields?.RefineryPipeline).find(Boolean);
    expect(text(pipelineAttribute?.data)).toBe(JSON.stringify([markers.pipeline]));
    // Without the key, the data cannot be read.
    await expect(plain.workflow.getHandle(runId).result()).rejects.toThrow(/binary\/encrypted/);

    // 2. With the codec, the same payloads give the markers back.
    const decoded = (await codec.decode(raw)).map((p) => text(p.data)).join('\n');
    for (const [name, marker] of Object.entries(markers)) expect(decoded.includes(marker), `${name} after decoding`).toBe(true);
    expect(decoded).toContain(`"stageId":"sft"`);

    // 3. The codec server: /decode gives the plain JSON, /encode round-trips, another key refuses.
    const server = await startCodecServer({ codec, namespaces: [stack().namespace], port: 0 });
    const otherKey = new AesGcmPayloadCodec(payloadKeysFromEnv({ REFINERY_PAYLOAD_KEY: randomBytes(32).toString('base64'), REFINERY_PAYLOAD_KEY_ID: 'it-codec' })!);
    const wrong = await startCodecServer({ codec: otherKey, namespaces: [stack().namespace], port: 0 });
    try {
      const post = (url: string, route: string, payloads: unknown[]) =>
        fetch(`${url}${route}`, { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Namespace': stack().namespace }, body: JSON.stringify({ payloads }) });
      // The run's input: the whole plan.
      const runInput = parentRaw.events![0]!.workflowExecutionStartedEventAttributes!.input!.payloads!.map(toJson);
      const r = await post(server.url, '/decode', runInput);
      expect(r.status).toBe(200);
      const [input] = ((await r.json()) as { payloads: { metadata: Record<string, string>; data: string }[] }).payloads;
      expect(Buffer.from(input!.metadata.encoding!, 'base64').toString()).toBe('json/plain');
      const plan = JSON.parse(Buffer.from(input!.data, 'base64').toString()) as { plan: { name: string } };
      expect(plan.plan.name).toBe(markers.pipeline);
      expect(JSON.stringify(plan)).toContain(markers.dataset);

      const again = (await (await post(server.url, '/encode', [input])).json()) as { payloads: unknown[] };
      const back = (await (await post(server.url, '/decode', again.payloads)).json()) as { payloads: unknown[] };
      expect(back.payloads).toEqual([input]);

      const refused = await post(wrong.url, '/decode', runInput);
      expect(refused.status).toBe(422);
      expect(((await refused.json()) as { error: string }).error).toMatch(/key id "it-codec"\) failed authentication/);
    } finally {
      await server.close();
      await wrong.close();
    }
    console.log(`codec run: ${raw.length} payloads, ${[...kinds].map(([k, n]) => `${k} ${n}`).join(', ')}; ${Date.now() - started} ms`);
  });

  it('the CLI: reads the run with the key, stops with one line on a bad key, serves the codec endpoint', async () => {
    expect(runId, 'the first test ran').not.toBe('');

    const status = await execa(BIN, ['status', runId, '--json'], { env: stackEnv(keyEnv), extendEnv: false, reject: false });
    expect(status.exitCode, status.stderr).toBe(0);
    expect((JSON.parse(status.stdout) as { state: string }).state).toBe('completed');

    const badKey = randomBytes(16).toString('base64');
    const bad = await execa(BIN, ['status', runId], { env: stackEnv({ REFINERY_PAYLOAD_KEY: badKey }), extendEnv: false, reject: false });
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr.trim()).toBe('error: REFINERY_PAYLOAD_KEY decodes to 16 bytes, not 32: expected the base64 of 32 random bytes, e.g. from "openssl rand -base64 32"');
    expect(bad.stderr + bad.stdout).not.toContain(badKey);

    const server = execa(BIN, ['codec-server', '--port', '0', '--json'], { env: stackEnv(keyEnv), extendEnv: false, reject: false, buffer: false });
    try {
      const url = await new Promise<string>((resolve, reject) => {
        let out = '';
        server.stdout?.on('data', (chunk: Buffer) => {
          out += chunk.toString();
          const line = out.trim();
          if (line.endsWith('}')) resolve((JSON.parse(line) as { url: string }).url);
        });
        server.once('exit', () => reject(new Error(`codec-server exited: ${out}`)));
      });
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const [sealed] = await codec.encode([{ metadata: { [METADATA_ENCODING_KEY]: Buffer.from('json/plain') }, data: Buffer.from(`"${markers.prefix}"`) }]);
      const r = await fetch(`${url}/decode`, { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Namespace': stack().namespace }, body: JSON.stringify({ payloads: [toJson(sealed!)] }) });
      const body = (await r.json()) as { payloads: { data: string }[] };
      expect(Buffer.from(body.payloads[0]!.data, 'base64').toString()).toBe(`"${markers.prefix}"`);
    } finally {
      server.kill('SIGTERM');
      await server;
    }
    expect(trainerOutput).toContain('payloads encrypted');
  });
});
