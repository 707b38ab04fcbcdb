/**
 * Signed registry changes: `refinery promote|rollback --key FILE` signs what the change does with
 * the approver's Ed25519 key (the keys of signed approvals, storage/approval-signature.ts); the
 * record keeps the signature and public key, and `refinery model aliases` re-checks every one —
 * against the approvers file too when REFINERY_APPROVERS is set, where an unsigned change, an
 * unlisted key or a `by` that is not the key's approver is a problem.
 */
import { randomBytes, sign, type KeyObject } from 'node:crypto';
import type { ApprovalSignature } from '../workflows/types.js';
import { keyFingerprint, payloadSignatureProblem, publicKeyBytes, shortFingerprint, SIGNATURE_MISMATCH } from './approval-signature.js';
import { canonicalJson } from './canonical-json.js';

/** In every signed payload: an approval's signature never verifies as a registry change. */
export const REGISTRY_PURPOSE = 'refinery-registry-v1';

/** What a registry change signs: the model, the alias, what it points at after and before, who, why, when. */
export interface SignedRegistryFields {
  type: 'alias-promoted' | 'alias-rolled-back';
  model: string;
  alias: string;
  /** The manifest the alias points at after the change (null: nothing). */
  target: string | null;
  replaced: string | null;
  by: string;
  reason: string;
  at: string;
}

export function registryPayload(fields: SignedRegistryFields, nonce: string): Buffer {
  const { type, model, alias, target, replaced, by, reason, at } = fields;
  return Buffer.from(canonicalJson({ purpose: REGISTRY_PURPOSE, type, model, alias, target, replaced, by, reason, at, nonce }), 'utf8');
}

/** A signer for storage/registry.ts promote/rollback. */
export function registrySigner(privateKey: KeyObject): (fields: SignedRegistryFields) => ApprovalSignature {
  return (fields) => {
    const nonce = randomBytes(16).toString('base64url');
    const raw = publicKeyBytes(privateKey);
    const signature = sign(null, registryPayload(fields, nonce), privateKey).toString('base64');
    return { at: fields.at, nonce, publicKey: raw.toString('base64'), keyFingerprint: keyFingerprint(raw), signature };
  };
}

/** Why a registry change's signature does not hold (undefined: it does). */
export function registrySignatureProblem(fields: SignedRegistryFields, signed: ApprovalSignature): string | undefined {
  if (signed.at !== fields.at) return `it was signed at ${signed.at}, the record says ${fields.at}`;
  const problem = payloadSignatureProblem(registryPayload(fields, signed.nonce), signed);
  return problem === SIGNATURE_MISMATCH ? `the signature does not verify with key ${shortFingerprint(signed.keyFingerprint)}: the record was changed after it was signed` : problem;
}
