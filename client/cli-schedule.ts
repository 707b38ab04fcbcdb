/**
 * `schedule create|list|describe|pause|unpause|trigger|delete`: nightly retraining on Temporal
 * Schedules. The commands live in client/commands/schedule.ts, imported when one runs.
 */
import type { Command } from 'commander';
import type { ScheduleDetails, ScheduleInfo } from './commands/schedule.js';
import { connectClient } from './connection.js';
import { print } from './output.js';

async function withClient<T>(fn: (client: Awaited<ReturnType<typeof connectClient>>['client'], cmd: typeof import('./commands/schedule.js')) => Promise<T>): Promise<T> {
  const cmd = await import('./commands/schedule.js');
  const { client, close } = await connectClient();
  try {
    return await fn(client, cmd);
  } finally {
    await close();
  }
}

export function registerScheduleCommands(program: Command): void {
  const schedule = program
    .command('schedule')
    .description('retrain on a schedule (Temporal Schedules): a run whose inputs are unchanged since the last success trains nothing');

  schedule
    .command('create')
    .description('validate and plan a spec, then start it on a cron (or interval); s3:// dataset prefixes ending in "/" resolve to their newest object at each run')
    .argument('<spec>', 'pipeline spec (YAML or JSON)')
    .option('--cron <expr>', 'five-field cron, e.g. "0 2 * * *" for 02:00 every night (or @daily, @hourly, ...)')
    .option('--every <duration>', 'a fixed interval instead of a cron, e.g. 6h (tests and ops)')
    .option('--id <scheduleId>', 'schedule id; runs are <id>-<time> (default: the pipeline name)')
    .option('--timezone <tz>', 'IANA time zone for --cron (default UTC)')
    .option('--overlap <policy>', 'when a run is still going at the next time: skip | buffer-one | cancel-other', 'skip')
    .option('--catchup-window <duration>', 'start a missed run (server down) if it is at most this late', '1d')
    .option('--pause-on-failure', 'pause the schedule when one of its runs fails')
    .option('--by <who>', 'who sets it up, recorded on every run (default: $REFINERY_USER or the OS user)')
    .option('--json', 'machine-readable output')
    .action(async (spec: string, opts: { cron?: string; every?: string; id?: string; timezone?: string; overlap: string; catchupWindow: string; pauseOnFailure?: boolean; by?: string; json?: boolean }) => {
      (await import('./commands/schedule.js')).checkCreateOptions(opts); // bad values fail before connecting
      const details = await withClient((client, cmd) => cmd.createSchedule(client, spec, opts));
      print(opts.json, details, () => `created schedule ${details.scheduleId}\n${renderDetails(details)}`);
    });

  schedule
    .command('list')
    .description("list Refinery's schedules")
    .option('--json', 'machine-readable output')
    .action(async (opts: { json?: boolean }) => {
      const rows = await withClient((client, cmd) => cmd.listSchedules(client));
      print(opts.json, rows, () => rows.map(renderRow).join('\n') || 'no schedules');
    });

  schedule
    .command('describe')
    .description('show a schedule: timing, policies, counts, running and recent runs with their states, next times')
    .argument('<scheduleId>')
    .option('--json', 'machine-readable output')
    .action(async (id: string, opts: { json?: boolean }) => {
      const details = await withClient((client, cmd) => cmd.describeSchedule(client, id));
      print(opts.json, details, () => renderDetails(details));
    });

  for (const paused of [true, false]) {
    schedule
      .command(paused ? 'pause' : 'unpause')
      .description(paused ? 'stop starting runs (running ones go on)' : 'start runs again at the scheduled times')
      .argument('<scheduleId>')
      .option('--reason <text>', 'a note shown by describe and in the Temporal UI')
      .option('--json', 'machine-readable output')
      .action(async (id: string, opts: { reason?: string; json?: boolean }) => {
        const details = await withClient((client, cmd) => (paused ? cmd.pauseSchedule : cmd.unpauseSchedule)(client, id, opts.reason));
        print(opts.json, details, () => `${paused ? 'paused' : 'unpaused'} schedule ${id}${details.note ? ` (${details.note})` : ''}`);
      });
  }

  schedule
    .command('trigger')
    .description("start a run now (the schedule's overlap policy applies; an unchanged run trains nothing)")
    .argument('<scheduleId>')
    .option('--overlap <policy>', "this once: skip | buffer-one | cancel-other (default: the schedule's)")
    .option('--json', 'machine-readable output')
    .action(async (id: string, opts: { overlap?: string; json?: boolean }) => {
      const r = await withClient((client, cmd) => cmd.triggerSchedule(client, id, { overlap: opts.overlap }));
      print(opts.json, r, () =>
        r.outcome === 'started'
          ? `started run ${r.runId}\n  watch: refinery status ${r.runId}`
          : r.outcome === 'skipped'
            ? `skipped: run ${r.runningRuns.join(', ')} is still going (overlap policy)`
            : `triggered schedule ${id}; no run started yet${r.runningRuns.length ? ` (running: ${r.runningRuns.join(', ')})` : ''}`,
      );
    });

  schedule
    .command('delete')
    .description('delete a schedule (runs it started go on)')
    .argument('<scheduleId>')
    .option('--json', 'machine-readable output')
    .action(async (id: string, opts: { json?: boolean }) => {
      const r = await withClient((client, cmd) => cmd.deleteSchedule(client, id));
      print(opts.json, r, () => `deleted schedule ${id}${r.runningRuns.length ? `\n  still running: ${r.runningRuns.join(', ')} (refinery cancel <runId> to stop)` : ''}`);
    });
}

function renderRow(s: ScheduleInfo): string {
  const last = s.recentRuns.at(-1);
  return [s.scheduleId.padEnd(28), String(s.pipeline ?? '?').padEnd(20), String(s.when ?? '?').padEnd(28), (s.paused ? 'paused' : 'active').padEnd(7), `next ${s.nextRuns[0] ?? '-'}`, last ? `  last ${last.runId}` : ''].join(' ');
}

function renderDetails(d: ScheduleDetails): string {
  const lines = [
    `schedule ${d.scheduleId}: pipeline ${d.pipeline ?? '?'}, ${d.when ?? '?'}${d.paused ? `, PAUSED${d.note ? ` (${d.note})` : ''}` : ''}`,
    `  spec       ${d.spec ?? '?'} (sha256 ${d.specSha256?.slice(0, 12) ?? '?'}…), by ${d.createdBy ?? '?'}`,
    `  policies   overlap ${d.overlap}, catch-up window ${Math.round(d.catchupWindowMs / 1000)}s${d.pauseOnFailure ? ', pause on failure' : ''}`,
    `  runs       ${d.actionsTaken} started, ${d.skippedOverlap} skipped (overlap), ${d.missedCatchupWindow} missed (catch-up window)`,
  ];
  if (d.runningRuns.length) lines.push(`  running    ${d.runningRuns.join(', ')}`);
  for (const r of d.recentRuns.slice(-5)) lines.push(`  recent     ${r.runId}  ${r.state ?? '?'}`);
  if (d.nextRuns.length) lines.push(`  next       ${d.nextRuns.slice(0, 3).join(', ')}`);
  return lines.join('\n');
}
