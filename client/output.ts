/**
 * How commands print: text for people, or with --json exactly one JSON document on stdout; a
 * failure is one `error:` line (plus `hint:`) on stderr, or with --json one JSON object there.
 */
import type { ErrorReport } from './errors.js';

export function print(json: boolean | undefined, data: unknown, text: () => string): void {
  process.stdout.write((json ? JSON.stringify(data, null, 2) : text()) + '\n');
}

export function printError(json: boolean, report: ErrorReport, err: NodeJS.WritableStream = process.stderr): void {
  if (json) {
    err.write(JSON.stringify(report) + '\n');
    return;
  }
  for (const line of report.error.split('\n')) err.write(`error: ${line}\n`);
  if (report.hint) err.write(`hint: ${report.hint}\n`);
}

/** Whether the command line asks for --json (before any `--`): errors then go out as JSON too. */
export function wantsJson(argv: readonly string[]): boolean {
  const end = argv.indexOf('--');
  return (end === -1 ? argv : argv.slice(0, end)).includes('--json');
}
