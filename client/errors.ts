/** An error the CLI prints as one line (plus a hint) and turns into an exit code (client/exit-codes.ts). */
import { CommanderError } from 'commander';
import { InputError } from '../spec/errors.js';
import { EXIT } from './exit-codes.js';

export class CliError extends Error {
  constructor(message: string, readonly hint?: string, readonly exitCode: number = EXIT.problems) {
    super(message);
    this.name = 'CliError';
  }
}

/** What the CLI reports for a failed command: the text (JSON `{ error, hint, exitCode }` with --json). */
export interface ErrorReport {
  error: string;
  hint?: string;
  exitCode: number;
}

// gRPC status UNAVAILABLE: the server went away mid-command.
const GRPC_UNAVAILABLE = 14;

/** Maps any error a command throws to its report and documented exit code. */
export function describeError(err: unknown): ErrorReport {
  if (err instanceof CliError) return { error: err.message, ...(err.hint ? { hint: err.hint } : {}), exitCode: err.exitCode };
  if (err instanceof InputError) return { error: err.message, exitCode: EXIT.badInput };
  // Usage errors (unknown option, missing argument); help and --version exit 0.
  if (err instanceof CommanderError) return { error: err.message.replace(/^error: /, ''), hint: 'run with --help for usage', exitCode: err.exitCode === 0 ? EXIT.ok : EXIT.badInput };
  const e = err as { name?: string; message?: string; code?: unknown; cause?: unknown };
  if (e?.name === 'WorkflowNotFoundError') return { error: e.message ?? 'no such run', hint: 'see "refinery list"', exitCode: EXIT.notFound };
  if (e?.code === GRPC_UNAVAILABLE || (e?.cause as { code?: unknown } | undefined)?.code === GRPC_UNAVAILABLE) {
    return { error: `lost Temporal: ${e.message ?? String(err)}`, hint: 'is the server up? "refinery stack status"', exitCode: EXIT.unreachable };
  }
  return { error: e?.message ?? String(err), exitCode: EXIT.problems };
}
