/**
 * AES-256-GCM payload encryption for everything Temporal stores of a run: each payload (metadata
 * and data, serialised as a proto `Payload`, as in Temporal's encryption sample) becomes the data of
 * a new payload whose metadata says only `encoding: binary/encrypted` and which key id sealed it.
 * Data layout: 12-byte random IV | ciphertext | 16-byte GCM tag (the sample's and WebCrypto's).
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { METADATA_ENCODING_KEY, type Payload, type PayloadCodec } from '@temporalio/common';
import proto from '@temporalio/proto';
import type { PayloadKey, PayloadKeys } from './payload-keys.js';

export const ENCRYPTED_ENCODING = 'binary/encrypted';
export const KEY_ID_METADATA = 'encryption-key-id';
const IV_BYTES = 12;
const TAG_BYTES = 16;
const ProtoPayload = proto.temporal.api.common.v1.Payload;

export class PayloadDecryptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PayloadDecryptionError';
  }
}

export class AesGcmPayloadCodec implements PayloadCodec {
  private readonly byId: Map<string, PayloadKey>;

  constructor(private readonly keys: PayloadKeys) {
    this.byId = new Map([...(keys.current ? [keys.current] : []), ...keys.previous].map((k) => [k.id, k]));
  }

  /** Key ids this codec can decrypt, the current one first. */
  get keyIds(): string[] {
    return [...this.byId.keys()];
  }

  async encode(payloads: Payload[]): Promise<Payload[]> {
    const current = this.keys.current;
    // Decrypt-only (encryption being turned off): new payloads stay as they are.
    if (!current) return payloads;
    return payloads.map((payload) => {
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv('aes-256-gcm', current.key, iv, { authTagLength: TAG_BYTES });
      const sealed = Buffer.concat([iv, cipher.update(ProtoPayload.encode(payload).finish()), cipher.final(), cipher.getAuthTag()]);
      return {
        metadata: { [METADATA_ENCODING_KEY]: Buffer.from(ENCRYPTED_ENCODING), [KEY_ID_METADATA]: Buffer.from(current.id) },
        data: sealed,
      };
    });
  }

  async decode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((payload) => {
      // Plain payloads (history from before encryption was turned on) pass through.
      if (text(payload.metadata?.[METADATA_ENCODING_KEY]) !== ENCRYPTED_ENCODING) return payload;
      const keyId = text(payload.metadata?.[KEY_ID_METADATA]);
      if (!keyId) throw new PayloadDecryptionError(`encrypted payload has no "${KEY_ID_METADATA}" metadata`);
      const key = this.byId.get(keyId);
      if (!key) {
        throw new PayloadDecryptionError(
          `payload was encrypted with key id "${keyId}", which this process does not have (it has ${this.keyIds.map((id) => `"${id}"`).join(', ')}); ` +
            'set REFINERY_PAYLOAD_KEY / REFINERY_PAYLOAD_KEY_ID, or REFINERY_PAYLOAD_KEYS_OLD for a retired key',
        );
      }
      const data = payload.data ?? new Uint8Array();
      if (data.length < IV_BYTES + TAG_BYTES) throw new PayloadDecryptionError(`encrypted payload (key id "${keyId}") is truncated: ${data.length} bytes`);
      const decipher = createDecipheriv('aes-256-gcm', key.key, data.subarray(0, IV_BYTES), { authTagLength: TAG_BYTES });
      decipher.setAuthTag(data.subarray(data.length - TAG_BYTES));
      let plain: Buffer;
      try {
        plain = Buffer.concat([decipher.update(data.subarray(IV_BYTES, data.length - TAG_BYTES)), decipher.final()]);
      } catch {
        throw new PayloadDecryptionError(
          `encrypted payload (key id "${keyId}") failed authentication: it was altered, or sealed by a different key under the same id`,
        );
      }
      return ProtoPayload.decode(plain);
    });
  }
}

function text(bytes: Uint8Array | null | undefined): string | undefined {
  return bytes ? Buffer.from(bytes).toString('utf8') : undefined;
}
