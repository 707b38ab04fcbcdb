/**
 * `audit`, `audit verify`, `report`, `logs`: commands that read a run's records in object storage
 * (`audit verify` also reads the run's result from Temporal when it can reach it, as the chain
 * head's anchor). Each lives in client/commands/ and is imported when it runs.
 */
import { type Command, InvalidArgumentError } from 'commander';
import { print } from './output.js';

const PREFIX_HELP = "storage prefix of the run (the spec's storage.prefix; the demo uses \"demo\")";
const DEFAULT_PREFIX = 'refinery';

function positiveInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1) throw new InvalidArgumentError('expected an attempt number (1, 2, …)');
  return n;
}

export function registerAuditCommands(program: Command): void {
  const audit = program
    .command('audit')
    .description("show a run's audit trail and manifest from object storage (\"audit verify\" checks it)")
    .argument('<runId>')
    .option('--prefix <prefix>', PREFIX_HELP, DEFAULT_PREFIX)
    .option('--json', 'machine-readable output')
    .action(async (runId: string, opts: { prefix: string; json?: boolean }) => {
      const { showAudit, renderAudit } = await import('./commands/audit.js');
      const shown = await showAudit({ runId, prefix: opts.prefix });
      print(opts.json, shown, () => renderAudit(shown));
    });

  // --prefix and --json are audit's: commander hands them to the parent wherever they appear.
  audit
    .command('verify')
    .description('check the hash chain, re-hash every artifact and input, match run.json to the trail, look for leaked secrets; exit 1 on any problem')
    .argument('<runId>')
    .configureHelp({ showGlobalOptions: true })
    .action(async (runId: string, _opts: unknown, cmd: Command) => {
      const opts = cmd.optsWithGlobals<{ prefix: string; json?: boolean }>();
      const { verifyRun, renderVerify } = await import('./commands/audit.js');
      const result = await verifyRun({ runId, prefix: opts.prefix });
      print(opts.json, result, () => renderVerify(result));
      process.exitCode = result.exitCode;
    });

  program
    .command('report')
    .description('write a self-contained HTML report of a run: timeline, loss and reward curves, metrics, gates, artifacts, datasets')
    .argument('<runId>')
    .option('--prefix <prefix>', PREFIX_HELP, DEFAULT_PREFIX)
    .option('--out <file>', 'output file (default ./report-<runId>.html)')
    .option('--json', 'machine-readable output')
    .action(async (runId: string, opts: { prefix: string; out?: string; json?: boolean }) => {
      const { writeReport } = await import('./commands/report.js');
      const result = await writeReport({ runId, prefix: opts.prefix, out: opts.out });
      print(opts.json, result, () => `wrote ${result.file} (${result.stages} stages, ${result.charts} charts, ${Math.ceil(result.bytes / 1024)} KiB)`);
    });

  program
    .command('logs')
    .description("print a run's job logs stored in object storage, stage by stage and attempt by attempt")
    .argument('<runId>')
    .option('--prefix <prefix>', PREFIX_HELP, DEFAULT_PREFIX)
    .option('--stage <stageId>', 'only this stage')
    .option('--attempt <n>', 'only this attempt', positiveInt)
    .option('--events', "the job's JSON-lines contract events instead of its output")
    .option('-f, --follow', 'keep printing new attempts and output (polls every 2 s) until the run ends')
    .option('--json', 'machine-readable output (with --follow: one JSON object per line)')
    .action(async (runId: string, opts: { prefix: string; stage?: string; attempt?: number; events?: boolean; follow?: boolean; json?: boolean }) => {
      const { streamLogs } = await import('./commands/logs.js');
      // `refinery logs RUN | head`: a closed pipe ends the command quietly.
      process.stdout.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'EPIPE') process.exit(0);
        throw err;
      });
      const stop = new AbortController();
      // Ctrl-C while following ends the command normally (after the current poll).
      const onSigint = () => stop.abort();
      if (opts.follow) process.once('SIGINT', onSigint);
      const collected: { stage: string; attempt: number; uri: string; text: string }[] = [];
      let atLineStart = true;
      try {
        const result = await streamLogs({
          runId,
          prefix: opts.prefix,
          stage: opts.stage,
          attempt: opts.attempt,
          events: opts.events,
          follow: opts.follow,
          signal: stop.signal,
          onChunk: (c) => {
            if (opts.json) {
              if (opts.follow) process.stdout.write(JSON.stringify({ stage: c.stage, attempt: c.attempt, uri: c.uri, text: c.text }) + '\n');
              else collected.push({ stage: c.stage, attempt: c.attempt, uri: c.uri, text: c.text });
              return;
            }
            if (c.first) process.stdout.write(`${atLineStart ? '' : '\n'}==> ${c.stage} attempt ${c.attempt} (${c.uri}) <==\n`);
            process.stdout.write(c.text);
            if (c.text.length > 0) atLineStart = c.text.endsWith('\n');
          },
        });
        if (opts.json && !opts.follow) print(true, { runId, logs: collected }, () => '');
        else if (!opts.json && result.files.length === 0) {
          process.stderr.write(`no ${opts.events ? 'events' : 'logs'} stored for run ${runId}${opts.stage ? ` stage ${opts.stage}` : ''}${opts.attempt ? ` attempt ${opts.attempt}` : ''} yet\n`);
        }
        if (!opts.json && !atLineStart) process.stdout.write('\n');
        process.exitCode = result.exitCode;
      } finally {
        process.removeListener('SIGINT', onSigint);
      }
    });
}
