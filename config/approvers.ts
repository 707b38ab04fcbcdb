/**
 * Who may approve (docs/security.md, "Signed approvals"): REFINERY_APPROVERS names a JSON file on
 * the control worker listing each approver's name, public key and the pipelines and stages they
 * may decide. Unset: approvals need no signature (and the trail records them as unsigned).
 * REFINERY_SIGNING_KEY (CLI side) names the file of the private key `approve|reject` sign with:
 * a path, never the key itself.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { parseDuration } from '../spec/duration.js';
import { keyFingerprint, parsePublicKey, publicKeyBytes } from '../storage/approval-signature.js';
import { StackError } from './errors.js';

/** "*" or exact names. */
const Scope = z.array(z.string().trim().min(1, 'an empty name')).min(1, 'list at least one name, or "*" for all');

const Approver = z.strictObject({
  /** What `--by` must say for this key. */
  name: z.string().trim().min(1, 'an approver needs a name'),
  /** SPKI PEM, or an OpenSSH "ssh-ed25519 AAAA… [comment]" line. */
  publicKey: z.string().superRefine((text, ctx) => {
    try {
      parsePublicKey(text);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
    }
  }),
  pipelines: Scope,
  stages: Scope,
});

export const ApproversFile = z.strictObject({
  approvers: z.array(Approver).min(1, 'list at least one approver'),
  /** How old a signed decision may be when the worker checks it (default 10m): older ones are refused as replays. */
  maxAge: z
    .string()
    .default('10m')
    .superRefine((text, ctx) => {
      try {
        parseDuration(text);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
      }
    }),
});
export type ApproversFile = z.infer<typeof ApproversFile>;

export interface ListedApprover {
  name: string;
  /** hex sha256 of the raw public key. */
  fingerprint: string;
  /** base64 of the raw public key. */
  publicKey: string;
  pipelines: string[];
  stages: string[];
}

export interface Approvers {
  file: string;
  maxAgeMs: number;
  approvers: ListedApprover[];
}

/** The approvers file REFINERY_APPROVERS names, or undefined when it is unset or empty. */
export function approversFileFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env.REFINERY_APPROVERS?.trim() || undefined;
}

/** The private key file `refinery approve|reject` signs with when --key is not given. */
export function signingKeyFileFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env.REFINERY_SIGNING_KEY?.trim() || undefined;
}

/** Reads and checks an approvers file; errors name the file and the field. */
export function loadApprovers(file: string): Approvers {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new StackError(`approvers file ${file} (REFINERY_APPROVERS): cannot read it: ${(err as Error).message}`);
  }
  return parseApprovers(text, file);
}

/** Parses an approvers file's text; `file` names it in errors. */
export function parseApprovers(text: string, file: string): Approvers {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new StackError(`approvers file ${file}: not JSON: ${(err as Error).message}`);
  }
  const parsed = ApproversFile.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '') || '(top level)';
    const more = parsed.error.issues.length > 1 ? ` (and ${parsed.error.issues.length - 1} more)` : '';
    throw new StackError(`approvers file ${file}: ${field}: ${issue.message}${more}`);
  }
  const approvers = parsed.data.approvers.map((a) => {
    const raw = publicKeyBytes(parsePublicKey(a.publicKey));
    return { name: a.name, fingerprint: keyFingerprint(raw), publicKey: raw.toString('base64'), pipelines: a.pipelines, stages: a.stages };
  });
  // One key, one approver: otherwise which name a signature proves would be ambiguous.
  const seen = new Map<string, string>();
  approvers.forEach((a, i) => {
    const other = seen.get(a.fingerprint);
    if (other !== undefined) throw new StackError(`approvers file ${file}: approvers[${i}].publicKey: the same key as ${other}'s: one key per approver`);
    seen.set(a.fingerprint, a.name);
  });
  return { file, maxAgeMs: parseDuration(parsed.data.maxAge), approvers };
}

/** Whether a listed scope ("*" or names) covers `name`. */
export function inScope(scope: readonly string[], name: string): boolean {
  return scope.includes('*') || scope.includes(name);
}
