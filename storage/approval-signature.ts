/**
 * Signed approvals (docs/security.md, "Signed approvals"): an approver signs the canonical JSON of
 * what they decided with their Ed25519 key; the control worker checks the signature before the
 * decision counts, and `audit verify` checks it again from the trail. Pure crypto, no environment,
 * no files: the CLI (signing), the verifyApproval activity and `audit verify` share it.
 *
 * Keys: private keys are PKCS#8 PEM; public keys are SPKI PEM or an OpenSSH `ssh-ed25519 AAAA…`
 * line. On the wire and in the trail a public key is the base64 of its raw 32 bytes, and its
 * fingerprint the hex sha256 of those bytes.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import type { ApprovalDecision, ApprovalSignature } from '../workflows/types.js';
import { canonicalJson } from './canonical-json.js';

/** In every signed payload: a signature made for anything else never verifies as an approval. */
export const APPROVAL_PURPOSE = 'refinery-approval-v1';

/** What an approver signs: the decision, bound to one run and stage, one time and one nonce. */
export interface SignedApprovalFields {
  runId: string;
  stageId: string;
  approved: boolean;
  by: string;
  reason: string;
  /** When it was signed (ISO 8601): the worker refuses old ones (replays). */
  at: string;
  /** Random: no two signed decisions are the same bytes. */
  nonce: string;
}

/** The exact bytes signed: canonical JSON (sorted keys, no spaces) of the fields and the purpose. */
export function approvalPayload(fields: SignedApprovalFields): Buffer {
  const { runId, stageId, approved, by, reason, at, nonce } = fields;
  return Buffer.from(canonicalJson({ purpose: APPROVAL_PURPOSE, runId, stageId, approved, by, reason, at, nonce }), 'utf8');
}

/** The ssh wire name of the key type, also the first field of an OpenSSH public key line. */
const SSH_ED25519 = 'ssh-ed25519';

/** A public key from SPKI PEM or an OpenSSH `ssh-ed25519 <base64> [comment]` line; Ed25519 only. */
export function parsePublicKey(text: string): KeyObject {
  const trimmed = text.trim();
  let key: KeyObject;
  if (trimmed.startsWith(`${SSH_ED25519} `)) {
    key = rawPublicKey(rawFromSshLine(trimmed));
  } else if (trimmed.startsWith('-----BEGIN PUBLIC KEY-----')) {
    try {
      key = createPublicKey({ key: trimmed, format: 'pem' });
    } catch (err) {
      throw new Error(`not a readable PEM public key: ${(err as Error).message}`);
    }
  } else {
    throw new Error('expected a PEM public key ("-----BEGIN PUBLIC KEY-----…") or an OpenSSH "ssh-ed25519 AAAA…" line');
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`an ${key.asymmetricKeyType ?? 'unknown'} key, not ed25519`);
  return key;
}

function rawFromSshLine(line: string): Buffer {
  const blob = Buffer.from(line.split(/\s+/)[1] ?? '', 'base64');
  // The blob: string "ssh-ed25519", string <32 key bytes> (each a uint32 length, then the bytes).
  const typeLen = blob.length >= 4 ? blob.readUInt32BE(0) : -1;
  const type = typeLen > 0 ? blob.subarray(4, 4 + typeLen).toString('latin1') : '';
  const keyLen = blob.length >= 8 + typeLen ? blob.readUInt32BE(4 + typeLen) : -1;
  const raw = blob.subarray(8 + typeLen, 8 + typeLen + keyLen);
  if (type !== SSH_ED25519 || keyLen !== 32 || raw.length !== 32 || blob.length !== 8 + typeLen + keyLen) {
    throw new Error('not a well-formed OpenSSH ssh-ed25519 public key');
  }
  return raw;
}

/** An Ed25519 public key from its raw 32 bytes (base64 as carried in decisions and the trail, or bytes). */
export function rawPublicKey(raw: Buffer | string): KeyObject {
  const bytes = typeof raw === 'string' ? Buffer.from(raw, 'base64') : raw;
  if (bytes.length !== 32) throw new Error(`an Ed25519 public key is 32 bytes, not ${bytes.length}`);
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: bytes.toString('base64url') }, format: 'jwk' });
}

/** The raw 32 bytes of an Ed25519 public (or private: its public half) key. */
export function publicKeyBytes(key: KeyObject): Buffer {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  const x = pub.export({ format: 'jwk' }).x;
  if (pub.asymmetricKeyType !== 'ed25519' || typeof x !== 'string') throw new Error('not an Ed25519 key');
  return Buffer.from(x, 'base64url');
}

/** hex sha256 of the raw public key. */
export function keyFingerprint(key: KeyObject | Buffer): string {
  return createHash('sha256').update(Buffer.isBuffer(key) ? key : publicKeyBytes(key)).digest('hex');
}

/** The OpenSSH one-line form (fits a JSON string in the approvers file). */
export function sshPublicKeyLine(key: KeyObject, comment = ''): string {
  const type = Buffer.from(SSH_ED25519, 'latin1');
  const raw = publicKeyBytes(key);
  const len = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };
  const blob = Buffer.concat([len(type.length), type, len(raw.length), raw]);
  return `${SSH_ED25519} ${blob.toString('base64')}${comment ? ` ${comment}` : ''}`;
}

/** A new key pair: the private key as PKCS#8 PEM, the public key as SPKI PEM. */
export function generateSigningKeyPair(): { privateKeyPem: string; publicKeyPem: string; publicKey: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    publicKey,
  };
}

/** A private key from PKCS#8 PEM (unencrypted); Ed25519 only. */
export function parsePrivateKey(pem: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw new Error(`not a readable PEM private key: ${(err as Error).message}`);
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`an ${key.asymmetricKeyType ?? 'unknown'} key, not ed25519`);
  return key;
}

/** The decision with its signature: what `refinery approve|reject --key` sends (public data only). */
export function signApproval(
  privateKey: KeyObject,
  runId: string,
  decision: Pick<ApprovalDecision, 'stageId' | 'approved' | 'by' | 'reason'>,
  now: Date = new Date(),
): ApprovalDecision {
  const at = now.toISOString();
  const nonce = randomBytes(16).toString('base64url');
  const signature = sign(null, approvalPayload({ runId, ...decision, at, nonce }), privateKey).toString('base64');
  const raw = publicKeyBytes(privateKey);
  const signed: ApprovalSignature = { at, nonce, publicKey: raw.toString('base64'), keyFingerprint: keyFingerprint(raw), signature };
  return { stageId: decision.stageId, approved: decision.approved, by: decision.by, reason: decision.reason, signed };
}

/**
 * Why a signed decision's signature does not hold, or undefined when it does: the key its
 * fingerprint names, the signature over exactly these fields with that key.
 */
export function signatureProblem(fields: SignedApprovalFields, signed: Pick<ApprovalSignature, 'publicKey' | 'keyFingerprint' | 'signature'>): string | undefined {
  const problem = payloadSignatureProblem(approvalPayload(fields), signed);
  return problem === SIGNATURE_MISMATCH ? `the signature does not verify with key ${shortFingerprint(signed.keyFingerprint)}: the decision was changed after it was signed, or signed for another run, stage or key` : problem;
}

/** What payloadSignatureProblem says when the key is fine but the bytes were not what it signed. */
export const SIGNATURE_MISMATCH = 'signature mismatch';

/** Why `signed` is not a valid Ed25519 signature of `payload` by the key it names (undefined: it is). */
export function payloadSignatureProblem(payload: Buffer, signed: Pick<ApprovalSignature, 'publicKey' | 'keyFingerprint' | 'signature'>): string | undefined {
  let raw: Buffer;
  let key: KeyObject;
  try {
    raw = Buffer.from(signed.publicKey, 'base64');
    key = rawPublicKey(raw);
  } catch (err) {
    return `its public key is unusable: ${(err as Error).message}`;
  }
  if (keyFingerprint(raw) !== signed.keyFingerprint) return `its key fingerprint ${signed.keyFingerprint} is not the fingerprint of its public key (${keyFingerprint(raw)})`;
  const signature = Buffer.from(signed.signature, 'base64');
  let valid = false;
  try {
    valid = signature.length === 64 && verify(null, payload, key, signature);
  } catch {
    valid = false;
  }
  return valid ? undefined : SIGNATURE_MISMATCH;
}

/** Enough of a fingerprint to tell keys apart in messages. */
export function shortFingerprint(fingerprint: string): string {
  return fingerprint.slice(0, 16);
}
