/**
 * The stack manager's command line: `start|stop|status [--json] [--timeout <seconds>]
 * [--grace <seconds>]`, parsed with node:util's parseArgs. `main()` returns the exit code
 * (`refinery stack` calls it too); `runCli()` is what `tsx infra/stack.ts` runs: it prints any error
 * as one line, without a stack trace, and exits.
 */
import { parseArgs } from 'node:util';
import { StackError } from '../../config/errors.js';
import { loadStackConfig } from '../../config/stack.js';
import { errorText } from './processes.js';
import { stackStatus, startStack, stopStack, type ServiceStatus, type StackStatus } from './stack.js';

function formatStatus(status: StackStatus): string {
  const row = (s: ServiceStatus, extra: string) =>
    `  ${s.service.padEnd(9)} ${(s.up ? 'up' : 'down').padEnd(5)} ${s.address.padEnd(22)} ` +
    `pid ${String(s.pid ?? '-').padEnd(8)} ${extra}${s.detail ? `\n  ${''.padEnd(9)} ${s.detail}` : ''}`;
  return [
    `state dir: ${status.stateDir}`,
    row(status.temporal, `namespace ${status.temporal.namespace}  UI ${status.temporal.uiUrl}`),
    row(status.minio, `bucket ${status.minio.bucket}  console ${status.minio.uiUrl}`),
  ].join('\n');
}

const USAGE = 'usage: tsx infra/stack.ts start|stop|status [--json] [--timeout <seconds>] [--grace <seconds>]';

const OPTIONS = {
  json: { type: 'boolean' },
  timeout: { type: 'string' },
  grace: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

const COMMANDS = ['start', 'stop', 'status'] as const;
type Command = (typeof COMMANDS)[number];

interface Parsed {
  command: Command;
  json: boolean;
  timeoutMs: number | undefined;
  graceMs: number | undefined;
}

function seconds(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!(n > 0)) throw new StackError(`${flag} needs a number of seconds; ${USAGE}`);
  return n * 1000;
}

/** The arguments, or 'help' when --help / -h is among them (whatever else is). */
function parse(argv: string[]): Parsed | 'help' {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true });
  } catch (err) {
    // --help wins over any other mistake on the line.
    if (parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: false }).values.help === true) return 'help';
    // A --timeout / --grace without its value (missing, or a negative number read as a flag).
    const code = (err as { code?: string }).code;
    const flag = ['--timeout', '--grace'].find((f) => code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && (err as Error).message.includes(`'${f}`));
    if (flag) throw new StackError(`${flag} needs a number of seconds; ${USAGE}`);
    throw new StackError(`unknown arguments "${argv.join(' ')}"; ${USAGE}`);
  }
  const { values, positionals } = parsed;
  if (values.help) return 'help';
  const timeoutMs = seconds(values.timeout, '--timeout');
  const graceMs = seconds(values.grace, '--grace');
  const command = positionals[0] as Command;
  if (positionals.length !== 1 || !COMMANDS.includes(command)) {
    throw new StackError(`unknown arguments "${argv.join(' ')}"; ${USAGE}`);
  }
  return { command, json: values.json ?? false, timeoutMs, graceMs };
}

/** The CLI; returns the exit code. */
export async function main(argv: string[] = process.argv.slice(2)): Promise<number> {
  const parsed = parse(argv);
  if (parsed === 'help') {
    console.log(USAGE);
    return 0;
  }
  const { command, json, timeoutMs, graceMs } = parsed;
  const config = loadStackConfig();
  const progress = json ? undefined : (line: string) => console.log(line);
  switch (command) {
    case 'start': {
      const status = await startStack(config, { timeoutMs, onProgress: progress });
      console.log(json ? JSON.stringify(status, null, 2) : formatStatus(status));
      return 0;
    }
    case 'stop': {
      const results = await stopStack(config, { graceMs, onProgress: progress });
      if (json) console.log(JSON.stringify({ stateDir: config.stateDir, services: results }, null, 2));
      return 0;
    }
    case 'status': {
      const status = await stackStatus(config);
      console.log(json ? JSON.stringify(status, null, 2) : formatStatus(status));
      return status.temporal.up && status.minio.up ? 0 : 3;
    }
  }
}

/** Runs `main()` on process.argv and exits with its code; any error is one line on stderr. */
export function runCli(): void {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      // One line, no stack trace, for expected and unexpected errors alike (REFINERY_DEBUG=1 shows it).
      const text = err instanceof StackError ? err.message : `unexpected error: ${errorText(err)}`;
      console.error(`refinery stack: ${text}`);
      if (process.env.REFINERY_DEBUG && err instanceof Error) console.error(err.stack);
      process.exit(1);
    },
  );
}
