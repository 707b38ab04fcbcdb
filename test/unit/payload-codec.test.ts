/**
 * Payload encryption: the AES-GCM codec (round trip, fresh IV, tampering, unknown and rotated keys)
 * and the keys from the environment (clear errors that name the variable, never the key).
 */
import { createRequire } from 'node:module';
import { randomBytes, webcrypto } from 'node:crypto';
import { inspect } from 'node:util';
import { METADATA_ENCODING_KEY, type Payload } from '@temporalio/common';
import proto from '@temporalio/proto';
import { describe, expect, it } from 'vitest';
import { jobEnvironment } from '../../activities/job-process.js';
import { dataConverterFromEnv, ENCRYPTED_FAILURE_CONVERTER_PATH } from '../../codec/data-converter.js';
import { AesGcmPayloadCodec, ENCRYPTED_ENCODING, KEY_ID_METADATA, PayloadDecryptionError } from '../../codec/payload-codec.js';
import { payloadKeysFromEnv, PayloadKeyError, type PayloadKeys } from '../../codec/payload-keys.js';

const newKey = () => randomBytes(32).toString('base64');
const codecFor = (env: Record<string, string>) => new AesGcmPayloadCodec(payloadKeysFromEnv(env)!);
const json = (value: unknown): Payload => ({ metadata: { [METADATA_ENCODING_KEY]: Buffer.from('json/plain') }, data: Buffer.from(JSON.stringify(value)) });
const text = (b: Uint8Array | null | undefined) => Buffer.from(b ?? []).toString('utf8');
const plain = { stage: 'sft-marker-7f3a', dataset: 'data/private-marker.jsonl' };

describe('AesGcmPayloadCodec', () => {
  it('round-trips payloads (metadata and data) and stores only the encoding and the key id in the clear', async () => {
    const codec = codecFor({ REFINERY_PAYLOAD_KEY: newKey(), REFINERY_PAYLOAD_KEY_ID: 'k2026' });
    const input = [json(plain), { metadata: { [METADATA_ENCODING_KEY]: Buffer.from('binary/null') } }, json('x'.repeat(100_000))];
    const encoded = await codec.encode(input);
    expect(encoded).toHaveLength(3);
    for (const p of encoded) {
      expect(Object.keys(p.metadata!).sort()).toEqual([KEY_ID_METADATA, METADATA_ENCODING_KEY].sort());
      expect(text(p.metadata![METADATA_ENCODING_KEY])).toBe(ENCRYPTED_ENCODING);
      expect(text(p.metadata![KEY_ID_METADATA])).toBe('k2026');
      expect(text(p.data)).not.toContain('marker');
      expect(text(p.data)).not.toContain('json/plain');
    }
    const decoded = await codec.decode(encoded);
    expect(decoded.map((p) => text(p.metadata![METADATA_ENCODING_KEY]))).toEqual(['json/plain', 'binary/null', 'json/plain']);
    expect(JSON.parse(text(decoded[0]!.data))).toEqual(plain);
    expect(text(decoded[2]!.data)).toBe(JSON.stringify('x'.repeat(100_000)));
  });

  it('gives a different ciphertext for the same payload each time (random IV)', async () => {
    const codec = codecFor({ REFINERY_PAYLOAD_KEY: newKey() });
    const [a, b] = await codec.encode([json(plain), json(plain)]);
    expect(Buffer.from(a!.data!).equals(Buffer.from(b!.data!))).toBe(false);
    expect(Buffer.from(a!.data!).subarray(0, 12).equals(Buffer.from(b!.data!).subarray(0, 12))).toBe(false);
  });

  it('refuses altered data: a flipped bit in the IV, the ciphertext or the tag, or a truncated payload', async () => {
    const codec = codecFor({ REFINERY_PAYLOAD_KEY: newKey() });
    const [sealed] = await codec.encode([json(plain)]);
    const length = sealed!.data!.length;
    for (const at of [0, 12, Math.floor(length / 2), length - 1]) {
      const data = Buffer.from(sealed!.data!);
      data[at]! ^= 0x01;
      await expect(codec.decode([{ ...sealed, data }])).rejects.toThrow(/key id "default"\) failed authentication/);
    }
    await expect(codec.decode([{ ...sealed, data: sealed!.data!.subarray(0, 20) }])).rejects.toThrow(/truncated/);
    await expect(codec.decode([{ metadata: { [METADATA_ENCODING_KEY]: Buffer.from(ENCRYPTED_ENCODING) }, data: sealed!.data }])).rejects.toThrow(/no "encryption-key-id"/);
  });

  it('names an unknown key id, and refuses a different key under the same id', async () => {
    const [sealed] = await codecFor({ REFINERY_PAYLOAD_KEY: newKey(), REFINERY_PAYLOAD_KEY_ID: 'retired-2025' }).encode([json(plain)]);
    const other = codecFor({ REFINERY_PAYLOAD_KEY: newKey(), REFINERY_PAYLOAD_KEY_ID: 'current' });
    await expect(other.decode([sealed!])).rejects.toThrow(PayloadDecryptionError);
    await expect(other.decode([sealed!])).rejects.toThrow(/key id "retired-2025", which this process does not have \(it has "current"\)/);
    const sameIdOtherKey = codecFor({ REFINERY_PAYLOAD_KEY: newKey(), REFINERY_PAYLOAD_KEY_ID: 'retired-2025' });
    await expect(sameIdOtherKey.decode([sealed!])).rejects.toThrow(/failed authentication/);
  });

  it('passes plain payloads through decode (history from before encryption was turned on)', async () => {
    const codec = codecFor({ REFINERY_PAYLOAD_KEY: newKey() });
    const p = json(plain);
    expect(await codec.decode([p])).toEqual([p]);
  });

  it('rotation: decrypts with the old keys, encrypts with the current one only', async () => {
    const [oldKey, newerKey] = [newKey(), newKey()];
    const [before] = await codecFor({ REFINERY_PAYLOAD_KEY: oldKey, REFINERY_PAYLOAD_KEY_ID: 'k1' }).encode([json(plain)]);
    const rotated = codecFor({ REFINERY_PAYLOAD_KEY: newerKey, REFINERY_PAYLOAD_KEY_ID: 'k2', REFINERY_PAYLOAD_KEYS_OLD: `k1:${oldKey}` });
    expect(rotated.keyIds).toEqual(['k2', 'k1']);
    expect(JSON.parse(text((await rotated.decode([before!]))[0]!.data))).toEqual(plain);
    const [after] = await rotated.encode([json(plain)]);
    expect(text(after!.metadata![KEY_ID_METADATA])).toBe('k2');
    // Decrypt-only (encryption turned off): old history still reads, new payloads stay plain.
    const off = codecFor({ REFINERY_PAYLOAD_KEYS_OLD: `k1:${oldKey}, k2:${newerKey}` });
    expect(await off.encode([json(plain)])).toEqual([json(plain)]);
    expect((await off.decode([before!, after!])).map((p) => JSON.parse(text(p.data)))).toEqual([plain, plain]);
  });

  it("reads the format of Temporal's encryption sample (WebCrypto AES-GCM: IV | ciphertext | tag)", async () => {
    const raw = randomBytes(32);
    const key = await webcrypto.subtle.importKey('raw', raw, { name: 'AES-GCM' }, false, ['encrypt']);
    const iv = randomBytes(12);
    const inner = proto.temporal.api.common.v1.Payload.encode(json(plain)).finish();
    const sealed = Buffer.concat([iv, Buffer.from(await webcrypto.subtle.encrypt({ name: 'AES-GCM', iv, tagLength: 128 }, key, inner))]);
    const codec = codecFor({ REFINERY_PAYLOAD_KEY: raw.toString('base64'), REFINERY_PAYLOAD_KEY_ID: 'sample' });
    const [out] = await codec.decode([{ metadata: { [METADATA_ENCODING_KEY]: Buffer.from(ENCRYPTED_ENCODING), [KEY_ID_METADATA]: Buffer.from('sample') }, data: sealed }]);
    expect(JSON.parse(text(out!.data))).toEqual(plain);
  });

  it('never shows key material when printed', () => {
    const key = newKey();
    const keys = payloadKeysFromEnv({ REFINERY_PAYLOAD_KEY: key, REFINERY_PAYLOAD_KEYS_OLD: `old:${newKey()}` }) as PayloadKeys;
    const shown = inspect({ keys, codec: new AesGcmPayloadCodec(keys), converter: dataConverterFromEnv({ REFINERY_PAYLOAD_KEY: key }) }, { depth: 10 });
    expect(shown).not.toContain(key);
    expect(shown).not.toContain(Buffer.from(key, 'base64').toString('hex'));
    expect(JSON.stringify(keys)).not.toContain(key);
  });
});

describe('keys from the environment', () => {
  const secret = newKey();

  it('no key variable: no codec, plain JSON as before', () => {
    expect(payloadKeysFromEnv({})).toBeUndefined();
    expect(payloadKeysFromEnv({ REFINERY_PAYLOAD_KEY: '', REFINERY_PAYLOAD_KEY_ID: 'k' })).toBeUndefined();
    expect(dataConverterFromEnv({})).toBeUndefined();
  });

  it('a key: the AES-GCM codec and the failure converter that encrypts messages and stack traces', () => {
    const dc = dataConverterFromEnv({ REFINERY_PAYLOAD_KEY: secret });
    expect(dc?.payloadCodecs?.[0]).toBeInstanceOf(AesGcmPayloadCodec);
    expect(dc?.failureConverterPath).toBe(ENCRYPTED_FAILURE_CONVERTER_PATH);
    const loaded = createRequire(import.meta.url)(ENCRYPTED_FAILURE_CONVERTER_PATH) as { failureConverter: { options: { encodeCommonAttributes: boolean } } };
    expect(loaded.failureConverter.options.encodeCommonAttributes).toBe(true);
    // Decrypt-only: nothing new is encrypted, so failures are left as they are.
    expect(dataConverterFromEnv({ REFINERY_PAYLOAD_KEYS_OLD: `k1:${secret}` })?.failureConverterPath).toBeUndefined();
  });

  const bad: [string, Record<string, string>, RegExp][] = [
    ['not base64', { REFINERY_PAYLOAD_KEY: `${secret.slice(0, 20)}!${secret.slice(21)}` }, /^REFINERY_PAYLOAD_KEY is not valid base64: expected the base64 of 32 random bytes/],
    ['16 bytes', { REFINERY_PAYLOAD_KEY: randomBytes(16).toString('base64') }, /^REFINERY_PAYLOAD_KEY decodes to 16 bytes, not 32/],
    ['a hex key', { REFINERY_PAYLOAD_KEY: randomBytes(32).toString('hex') }, /^REFINERY_PAYLOAD_KEY decodes to 48 bytes, not 32/],
    ['bad key id', { REFINERY_PAYLOAD_KEY: secret, REFINERY_PAYLOAD_KEY_ID: 'a b' }, /^REFINERY_PAYLOAD_KEY_ID "a b": expected/],
    ['old entry without id', { REFINERY_PAYLOAD_KEY: newKey(), REFINERY_PAYLOAD_KEYS_OLD: secret }, /^REFINERY_PAYLOAD_KEYS_OLD entry 1: expected "id:base64key"/],
    ['old key too short', { REFINERY_PAYLOAD_KEY: newKey(), REFINERY_PAYLOAD_KEYS_OLD: `k1:${newKey()},k0:${secret.slice(0, 24)}` }, /^REFINERY_PAYLOAD_KEYS_OLD \(key id "k0"\) decodes to 18 bytes/],
    ['old id twice', { REFINERY_PAYLOAD_KEY: newKey(), REFINERY_PAYLOAD_KEYS_OLD: `default:${secret}` }, /^REFINERY_PAYLOAD_KEYS_OLD: key id "default" is given twice/],
  ];
  it.each(bad)('%s: one error naming the variable, without the key', (_name, env, message) => {
    let error: unknown;
    try {
      payloadKeysFromEnv(env);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(PayloadKeyError);
    const msg = (error as Error).message;
    expect(msg).toMatch(message);
    for (const value of [env.REFINERY_PAYLOAD_KEY, secret, secret.slice(0, 20), secret.slice(0, 24)]) if (value) expect(msg).not.toContain(value);
    expect(msg.split('\n')).toHaveLength(1);
  });

  it('jobs never inherit the key variables', () => {
    const env = jobEnvironment({ REFINERY_PAYLOAD_KEY: secret, REFINERY_PAYLOAD_KEYS_OLD: `k:${secret}`, REFINERY_PAYLOAD_KEY_ID: 'k', HOME: '/h' }, {});
    expect(Object.keys(env).filter((k) => k.startsWith('REFINERY_PAYLOAD_'))).toEqual([]);
    expect(env.HOME).toBe('/h');
  });
});
