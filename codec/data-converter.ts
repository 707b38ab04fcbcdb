/**
 * The Temporal DataConverter of every worker and client, from the environment: with
 * REFINERY_PAYLOAD_KEY (or only REFINERY_PAYLOAD_KEYS_OLD) set, payloads are encrypted with AES-GCM
 * and failure messages are encrypted with them; unset, Temporal's defaults (plain JSON). Workers and
 * clients of one namespace must agree (docs/security.md).
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DataConverter } from '@temporalio/common';
import { AesGcmPayloadCodec } from './payload-codec.js';
import { payloadKeysFromEnv, type PayloadKeys } from './payload-keys.js';

/** Failure converter that moves messages and stack traces into encoded (so encrypted) attributes. */
export const ENCRYPTED_FAILURE_CONVERTER_PATH = path.join(path.dirname(fileURLToPath(import.meta.url)), 'failure-converter.cjs');

export function encryptingDataConverter(keys: PayloadKeys): DataConverter {
  const payloadCodecs = [new AesGcmPayloadCodec(keys)];
  // Decrypt-only (old keys, no current one): nothing new is encrypted, so failures stay as they are.
  return keys.current ? { payloadCodecs, failureConverterPath: ENCRYPTED_FAILURE_CONVERTER_PATH } : { payloadCodecs };
}

/** `undefined` (Temporal's default converter) when no key is configured; throws PayloadKeyError on a bad one. */
export function dataConverterFromEnv(env: NodeJS.ProcessEnv = process.env): DataConverter | undefined {
  const keys = payloadKeysFromEnv(env);
  return keys ? encryptingDataConverter(keys) : undefined;
}
