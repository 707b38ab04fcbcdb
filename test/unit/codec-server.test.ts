/**
 * The remote codec endpoint on its own (no Temporal): the protocol's JSON, CORS for the UI origin,
 * the X-Namespace check, and clear errors for bad bodies and payloads it cannot decrypt.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCodecServer, type CodecServer } from '../../client/commands/codec-server.js';
import { AesGcmPayloadCodec } from '../../codec/payload-codec.js';
import { payloadKeysFromEnv } from '../../codec/payload-keys.js';

const codec = new AesGcmPayloadCodec(payloadKeysFromEnv({ REFINERY_PAYLOAD_KEY: randomBytes(32).toString('base64'), REFINERY_PAYLOAD_KEY_ID: 'unit' })!);
const b64 = (s: string) => Buffer.from(s).toString('base64');
const plainPayload = { metadata: { encoding: b64('json/plain') }, data: b64('{"stage":"sft"}') };
let server: CodecServer;
const logged: string[] = [];

beforeAll(async () => {
  server = await startCodecServer({ codec, namespaces: ['refinery-unit'], port: 0, corsOrigins: ['http://ui.example:8233'], log: (l) => logged.push(l) });
});
afterAll(() => server?.close());

const post = (route: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${server.url}${route}`, { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });

describe('codec server', () => {
  it('binds 127.0.0.1 by default', () => {
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  });

  it('encode then decode gives the payloads back, in the JSON form of the remote codec protocol', async () => {
    const enc = await post('/encode', { payloads: [plainPayload] }, { 'X-Namespace': 'refinery-unit' });
    expect(enc.status).toBe(200);
    expect(enc.headers.get('content-type')).toBe('application/json');
    const encoded = (await enc.json()) as { payloads: { metadata: Record<string, string>; data: string }[] };
    expect(Buffer.from(encoded.payloads[0]!.metadata.encoding!, 'base64').toString()).toBe('binary/encrypted');
    expect(Buffer.from(encoded.payloads[0]!.metadata['encryption-key-id']!, 'base64').toString()).toBe('unit');
    const dec = await post('/decode', encoded, { 'X-Namespace': 'refinery-unit' });
    expect(dec.status).toBe(200);
    expect(await dec.json()).toEqual({ payloads: [plainPayload] });
    // No X-Namespace (a plain HTTP client) is fine too; an empty list is an empty list.
    expect(await (await post('/decode', { payloads: [] })).json()).toEqual({ payloads: [] });
  });

  it('answers the UI preflight for the configured origin only', async () => {
    const ok = await fetch(`${server.url}/decode`, {
      method: 'OPTIONS',
      headers: { Origin: 'http://ui.example:8233', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type,x-namespace' },
    });
    expect(ok.status).toBe(204);
    expect(ok.headers.get('access-control-allow-origin')).toBe('http://ui.example:8233');
    expect(ok.headers.get('access-control-allow-methods')).toContain('POST');
    expect(ok.headers.get('access-control-allow-headers')?.toLowerCase()).toContain('x-namespace');
    const posted = await post('/decode', { payloads: [] }, { Origin: 'http://ui.example:8233' });
    expect(posted.headers.get('access-control-allow-origin')).toBe('http://ui.example:8233');

    const other = await fetch(`${server.url}/decode`, { method: 'OPTIONS', headers: { Origin: 'http://evil.example' } });
    expect(other.status).toBe(403);
    expect(other.headers.get('access-control-allow-origin')).toBeNull();
    const otherPost = await post('/decode', { payloads: [] }, { Origin: 'http://evil.example' });
    expect(otherPost.status).toBe(403);
  });

  it('refuses another namespace, bad bodies, other routes and methods, each with a JSON error', async () => {
    const cases: [Promise<Response>, number, RegExp][] = [
      [post('/decode', { payloads: [] }, { 'X-Namespace': 'someone-else' }), 403, /namespace "someone-else" is not served here \(serves "refinery-unit"\)/],
      [post('/decode', 'not json'), 400, /body is not JSON/],
      [post('/decode', { nope: 1 }), 400, /expected \{"payloads": \[\.\.\.\]\}/],
      [post('/decode', { payloads: [{ data: 'not base64!' }] }), 400, /payloads\[0\]: data must be base64/],
      [post('/decode', { payloads: [{ metadata: { encoding: 5 } }] }), 400, /payloads\[0\]: metadata\.encoding must be base64/],
      [post('/other', { payloads: [] }), 404, /not found/],
      [fetch(`${server.url}/decode`), 405, /GET not allowed/],
    ];
    for (const [response, status, message] of cases) {
      const r = await response;
      expect(r.status).toBe(status);
      expect(((await r.json()) as { error: string }).error).toMatch(message);
    }
  });

  it('says which key id it lacks when a payload cannot be decrypted (422), without stopping', async () => {
    const otherKey = new AesGcmPayloadCodec(payloadKeysFromEnv({ REFINERY_PAYLOAD_KEY: randomBytes(32).toString('base64'), REFINERY_PAYLOAD_KEY_ID: 'elsewhere' })!);
    const [sealed] = await otherKey.encode([{ metadata: { encoding: Buffer.from('json/plain') }, data: Buffer.from('1') }]);
    const body = { payloads: [{ metadata: { encoding: b64('binary/encrypted'), 'encryption-key-id': b64('elsewhere') }, data: Buffer.from(sealed!.data!).toString('base64') }] };
    const r = await post('/decode', body);
    expect(r.status).toBe(422);
    expect(((await r.json()) as { error: string }).error).toMatch(/key id "elsewhere", which this process does not have/);
    expect(logged.some((l) => l.includes('/decode 422'))).toBe(true);
    expect((await post('/decode', { payloads: [] })).status).toBe(200);
  });
});
