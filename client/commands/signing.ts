/**
 * `refinery keygen` and the signing half of `approve|reject --key` (docs/security.md, "Signed
 * approvals"). The private key stays in its file (mode 0600): only the signed decision — public
 * data — leaves this process.
 */
import { stat, readFile, writeFile } from 'node:fs/promises';
import { generateSigningKeyPair, keyFingerprint, parsePrivateKey, signApproval, sshPublicKeyLine } from '../../storage/approval-signature.js';
import type { ApprovalDecision } from '../../workflows/types.js';
import { CliError } from '../errors.js';
import { EXIT } from '../exit-codes.js';

export interface GeneratedKey {
  privateKeyFile: string;
  publicKeyFile: string;
  fingerprint: string;
  /** The public key as one OpenSSH line, for the approvers file. */
  sshLine: string;
}

/** Writes a new Ed25519 key: `out` (PKCS#8 PEM, mode 0600) and `out.pub` (SPKI PEM). Never overwrites unless told. */
export async function generateKeyFiles(out: string, opts: { force?: boolean; comment?: string } = {}): Promise<GeneratedKey> {
  const pair = generateSigningKeyPair();
  const flag = opts.force ? 'w' : 'wx';
  const publicKeyFile = `${out}.pub`;
  try {
    await writeFile(out, pair.privateKeyPem, { mode: 0o600, flag });
    await writeFile(publicKeyFile, pair.publicKeyPem, { mode: 0o644, flag });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new CliError(`${(err as NodeJS.ErrnoException).path ?? out} exists`, 'choose another --out, or --force to replace the key', EXIT.badInput);
    throw err;
  }
  return { privateKeyFile: out, publicKeyFile, fingerprint: keyFingerprint(pair.publicKey), sshLine: sshPublicKeyLine(pair.publicKey, opts.comment) };
}

/** The private key of a file that only its owner can read (as ssh insists). */
export async function readSigningKey(file: string) {
  let mode: number;
  let pem: string;
  try {
    mode = (await stat(file)).mode;
    pem = await readFile(file, 'utf8');
  } catch (err) {
    throw new CliError(`cannot read the signing key ${file}: ${(err as Error).message}`, 'create one with "refinery keygen --out FILE"', EXIT.badInput);
  }
  if ((mode & 0o077) !== 0) throw new CliError(`the signing key ${file} can be read by others (mode ${(mode & 0o777).toString(8)})`, `chmod 600 ${file}`, EXIT.badInput);
  try {
    return parsePrivateKey(pem);
  } catch (err) {
    throw new CliError(`the signing key ${file}: ${(err as Error).message}`, 'refinery keygen writes Ed25519 keys in PKCS#8 PEM', EXIT.badInput);
  }
}

/** The decision signed with the key in `keyFile`, for run `runId`. */
export async function signDecision(keyFile: string, runId: string, decision: Pick<ApprovalDecision, 'stageId' | 'approved' | 'by' | 'reason'>): Promise<ApprovalDecision> {
  return signApproval(await readSigningKey(keyFile), runId, decision);
}
