/**
 * `report`: one self-contained HTML page about a run, from the object store alone: who ran what
 * on which data, a stage timeline with every attempt, loss and reward curves from the jobs'
 * events (every attempt, resumes marked), metrics, gate decisions and approvals, artifacts and
 * datasets with their hashes.
 *
 *   client/run-records.ts    reads the run's records and job events
 *   client/report/model.ts   assembles them into stages and attempts (`assemble`)
 *   client/report/html.ts    renders the page (`renderReport`), with charts.ts and svg.ts
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ObjectStore } from '../../storage/object-store.js';
import { CliError } from '../errors.js';
import { renderReport } from '../report/html.js';
import { assemble, type ReportData } from '../report/model.js';
import { readJobEvents, readRun, type RunRef } from '../run-records.js';
import { EXIT } from '../exit-codes.js';

export { renderReport } from '../report/html.js';
export { assemble, type AttemptOutcome, type AttemptView, type GateView, type ReportData, type StageView } from '../report/model.js';
export { parseJobEventLines, type JobEventLine } from '../run-records.js';

export interface ReportOptions extends RunRef {
  /** Output file (default ./report-<runId>.html). */
  out?: string;
  /** Time shown as "generated at" (tests pin it). */
  now?: Date;
}

export interface ReportResult {
  runId: string;
  file: string;
  bytes: number;
  stages: number;
  charts: number;
  exitCode: 0;
}

/** Writes the report file; returns where and what it holds. */
export async function writeReport(opts: ReportOptions): Promise<ReportResult> {
  const { html, data, charts } = await buildReport(opts);
  const file = path.resolve(opts.out ?? `report-${data.run.runId}.html`);
  try {
    await writeFile(file, html);
  } catch (err) {
    throw new CliError(`cannot write ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, 'pass --out with a writable file path', EXIT.badInput);
  }
  return { runId: data.run.runId, file, bytes: Buffer.byteLength(html), stages: data.stages.length, charts, exitCode: 0 };
}

/** The report as HTML, without writing it. */
export async function buildReport(opts: ReportOptions): Promise<{ html: string; data: ReportData; charts: number }> {
  const store = opts.store ?? new ObjectStore();
  const run = await readRun({ ...opts, store });
  const events = await readJobEvents(store, run.runKey);
  const now = opts.now ?? new Date();
  const data = assemble(run, events, now);
  const { html, charts } = renderReport(data, now);
  return { html, data, charts };
}
