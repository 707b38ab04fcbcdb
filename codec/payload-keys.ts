/**
 * The payload encryption keys, from the environment of the worker, the CLI and the codec server:
 *
 * - `REFINERY_PAYLOAD_KEY`: base64 of 32 random bytes (AES-256); encrypts new payloads. Unset: no
 *   encryption (plain JSON in Temporal, the default).
 * - `REFINERY_PAYLOAD_KEY_ID`: the name recorded next to each payload (default `default`), so a
 *   payload says which key opens it.
 * - `REFINERY_PAYLOAD_KEYS_OLD`: `id:base64,id:base64`; earlier keys, used only to decrypt history
 *   written before a rotation.
 *
 * Errors name the variable (and the key id), never the key.
 */
import { createSecretKey, type KeyObject } from 'node:crypto';

export const KEY_BYTES = 32;
const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

export interface PayloadKey {
  id: string;
  /** A KeyObject, not bytes: printing it shows `SecretKeyObject { symmetricKeySize: 32 }`, never the key. */
  key: KeyObject;
}

export interface PayloadKeys {
  /** Encrypts new payloads; absent when only old keys are given (history stays readable, new payloads are plain). */
  current?: PayloadKey;
  /** Decrypt only. */
  previous: PayloadKey[];
}

export class PayloadKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PayloadKeyError';
  }
}

/** `undefined` when no key variable is set: payloads stay plain JSON. */
export function payloadKeysFromEnv(env: NodeJS.ProcessEnv = process.env): PayloadKeys | undefined {
  const raw = env.REFINERY_PAYLOAD_KEY?.trim();
  const rawOld = env.REFINERY_PAYLOAD_KEYS_OLD?.trim();
  if (!raw && !rawOld) return undefined;
  const keyId = env.REFINERY_PAYLOAD_KEY_ID?.trim() || 'default';
  if (!KEY_ID.test(keyId)) {
    throw new PayloadKeyError(`REFINERY_PAYLOAD_KEY_ID "${keyId}": expected 1-64 characters of A-Z a-z 0-9 . _ -`);
  }
  const current = raw ? { id: keyId, key: parseKey(raw, 'REFINERY_PAYLOAD_KEY') } : undefined;
  const previous: PayloadKey[] = [];
  const seen = new Set(current ? [current.id] : []);
  for (const [i, entry] of (rawOld ? rawOld.split(',') : []).entries()) {
    const colon = entry.indexOf(':');
    const id = colon > 0 ? entry.slice(0, colon).trim() : '';
    // Only the entry's position and id go into messages: the rest of the entry is key material.
    if (!KEY_ID.test(id)) {
      throw new PayloadKeyError(`REFINERY_PAYLOAD_KEYS_OLD entry ${i + 1}: expected "id:base64key" with an id of 1-64 characters of A-Z a-z 0-9 . _ -`);
    }
    if (seen.has(id)) throw new PayloadKeyError(`REFINERY_PAYLOAD_KEYS_OLD: key id "${id}" is given twice (or is also REFINERY_PAYLOAD_KEY_ID)`);
    seen.add(id);
    previous.push({ id, key: parseKey(entry.slice(colon + 1).trim(), `REFINERY_PAYLOAD_KEYS_OLD (key id "${id}")`) });
  }
  return { current, previous };
}

function parseKey(base64: string, variable: string): KeyObject {
  const hint = 'expected the base64 of 32 random bytes, e.g. from "openssl rand -base64 32"';
  if (!BASE64.test(base64)) throw new PayloadKeyError(`${variable} is not valid base64: ${hint}`);
  const bytes = Buffer.from(base64, 'base64');
  try {
    if (bytes.length !== KEY_BYTES) throw new PayloadKeyError(`${variable} decodes to ${bytes.length} bytes, not ${KEY_BYTES}: ${hint}`);
    return createSecretKey(bytes);
  } finally {
    bytes.fill(0);
  }
}
