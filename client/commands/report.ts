/**
 * `report`: one self-contained HTML page about a run, from the object store alone: who ran what
 * on which data, a stage timeline with every attempt, loss and reward curves from the jobs'
 * events (every attempt, resumes marked), metrics, gate decisions and approvals, artifacts and
 * datasets with their hashes. Inline CSS and SVG only: no scripts, no external references.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { AuditRecord } from '../../storage/audit-chain.js';
import { listJobLogs, readJobLog } from '../../storage/job-logs.js';
import { ObjectStore } from '../../storage/object-store.js';
import { CliError } from '../errors.js';
import { COLORS, PALETTE, esc, formatDuration, lineChart, timeline, type Marker, type Series, type TimelineBar, type TimelineRow } from '../report/svg.js';
import { DEFAULT_PREFIX, formatNumber, keyMetrics, readRun, type RunRecords, type RunRef } from './audit.js';

/** One line of `logs/<stage>/attempt-N.events.jsonl`: a job contract event plus `at` and `attempt`. */
export interface JobEventLine {
  at: string;
  attempt: number;
  event: string;
  step?: number;
  total_steps?: number | null;
  loss?: number | null;
  metrics?: Record<string, number | null>;
  resumed_from_step?: number | null;
  message?: string;
}

export type AttemptOutcome = 'ok' | 'failed' | 'lost' | 'cancelled' | 'running' | 'unknown';

export interface AttemptView {
  attempt: number;
  start?: number;
  end?: number;
  outcome: AttemptOutcome;
  reason?: string;
  host?: string;
  resumedFromStep?: number | null;
}

export interface GateView {
  type: 'gate' | 'approval';
  passed: boolean;
  text: string;
  at?: string;
}

export interface StageView {
  id: string;
  kind: string;
  state: string;
  start?: number;
  end?: number;
  /** When an approval was given (the stage waited from `end` until then). */
  decidedAt?: number;
  attempts: AttemptView[];
  /** Attempts made, as far as anything recorded tells (status.json counts them even without the trail). */
  attemptCount: number;
  reused: boolean;
  metrics: Record<string, number | null>;
  artifact?: { uri: string; manifestSha256: string };
  cacheKey?: string;
  error?: string;
  gates: GateView[];
  checkpoints: number[];
  /** Job events by attempt. */
  events: Map<number, JobEventLine[]>;
}

export interface ReportData {
  run: RunRecords;
  stages: StageView[];
  start?: number;
  end?: number;
  state: string;
  error?: string;
}

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
    throw new CliError(`cannot write ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, 'pass --out with a writable file path', 2);
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

/**
 * Every `attempt-N.events.jsonl` of the run, by stage and attempt: the whole object, or for an
 * attempt still running or killed, the parts its worker flushed (its curve up to the last flush).
 */
async function readJobEvents(store: ObjectStore, runKey: string): Promise<Map<string, Map<number, JobEventLine[]>>> {
  const out = new Map<string, Map<number, JobEventLine[]>>();
  const refs = await listJobLogs(store, runKey, { kind: 'events' });
  await Promise.all(
    refs.map(async (ref) => {
      const bytes = await readJobLog(store, ref.key);
      if (!bytes) return;
      const byAttempt = out.get(ref.stage) ?? new Map<number, JobEventLine[]>();
      byAttempt.set(ref.attempt, parseJobEventLines(bytes.toString('utf8')));
      out.set(ref.stage, byAttempt);
    }),
  );
  return out;
}

/** The lines of an events file that are job events; a torn last line (a killed attempt) is skipped. */
export function parseJobEventLines(text: string): JobEventLine[] {
  const lines: JobEventLine[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      const ev = JSON.parse(line) as JobEventLine;
      if (ev && typeof ev === 'object' && typeof ev.event === 'string') lines.push(ev);
    } catch {
      // a torn last line of a killed attempt: skip it
    }
  }
  return lines;
}

const time = (at: unknown): number | undefined => {
  const t = typeof at === 'string' ? Date.parse(at) : NaN;
  return Number.isFinite(t) ? t : undefined;
};

/** Stage and attempt history from the audit trail, status.json and the job events, in that order of trust. */
export function assemble(run: RunRecords, jobEvents: Map<string, Map<number, JobEventLine[]>>, now?: Date): ReportData {
  const stages = new Map<string, StageView>();
  const stage = (id: string, kind = '?'): StageView => {
    let s = stages.get(id);
    if (!s) {
      s = { id, kind, state: 'pending', attempts: [], attemptCount: 0, reused: false, metrics: {}, gates: [], checkpoints: [], events: new Map() };
      stages.set(id, s);
    }
    if (s.kind === '?' && kind !== '?') s.kind = kind;
    return s;
  };
  for (const p of run.manifest?.plan?.stages ?? []) stage(p.id, p.kind);
  for (const st of run.status?.stages ?? []) {
    const s = stage(st.id, st.kind);
    Object.assign(s, { state: st.state, metrics: { ...st.metrics }, error: st.error, start: time(st.startedAt), end: time(st.endedAt), reused: st.state === 'reused', attemptCount: st.attempt });
    if (st.artifact) s.artifact = { uri: st.artifact.uri, manifestSha256: st.artifact.manifestSha256 };
    // status.json keeps the last gate verdict; the trail's events (below) replace it when present.
    if (st.gate?.startsWith('no approval')) s.gates.push({ type: 'approval', passed: false, text: st.gate });
    else if (st.gate && !st.gate.startsWith('approved') && !st.gate.startsWith('rejected')) s.gates.push({ type: 'gate', passed: st.gate.startsWith('passed'), text: st.gate });
  }

  let runStart: number | undefined;
  let runEnd: number | undefined;
  let state: string = run.status?.state ?? 'running';
  let error = run.status?.error;
  const attemptOf = (s: StageView, n: number): AttemptView => {
    let a = s.attempts.find((x) => x.attempt === n);
    if (!a) {
      a = { attempt: n, outcome: 'unknown' };
      s.attempts.push(a);
      s.attempts.sort((x, y) => x.attempt - y.attempt);
    }
    return a;
  };
  const closeOpen = (s: StageView, at: number | undefined, outcome: AttemptOutcome) => {
    for (const a of s.attempts) if (a.end === undefined && a.outcome === 'unknown') Object.assign(a, { end: at, outcome });
  };
  for (const { event: e } of run.records as AuditRecord[]) {
    const at = time(e.at);
    const f = e as Record<string, unknown>;
    const s = e.stage ? stage(e.stage) : undefined;
    switch (e.type) {
      case 'run-started':
        runStart = at;
        break;
      case 'run-finished':
        runEnd = at;
        state = String(f.state ?? state);
        error = (f.error as string | null) ?? error;
        break;
      case 'stage-started':
        if (!s) break;
        s.kind = String(f.kind ?? s.kind);
        s.start = at;
        if (s.state === 'pending') s.state = 'running';
        break;
      case 'attempt-started': {
        if (!s) break;
        const n = Number(f.attempt);
        // An attempt still open when the next one starts was lost (the workflow records it too).
        for (const a of s.attempts) if (a.attempt < n && a.end === undefined) Object.assign(a, { end: at, outcome: a.outcome === 'unknown' ? 'lost' : a.outcome });
        Object.assign(attemptOf(s, n), { start: at, host: f.host as string | undefined, resumedFromStep: (f.resumedFromStep as number | null) ?? null });
        break;
      }
      case 'attempt-failed':
      case 'attempt-lost': {
        if (!s) break;
        const a = attemptOf(s, Number(f.attempt));
        if (a.outcome === 'unknown' || e.type === 'attempt-failed') {
          a.outcome = e.type === 'attempt-failed' ? 'failed' : 'lost';
          a.end ??= at;
        }
        a.reason = String(f.reason ?? '');
        a.host ??= f.host as string | undefined;
        break;
      }
      case 'checkpoint-committed':
        if (s && typeof f.step === 'number') s.checkpoints.push(f.step);
        break;
      case 'attempt': {
        // Runs since the history-v2 patch: one event per attempt, from the attempt's own records.
        if (!s) break;
        const a = attemptOf(s, Number(f.attempt));
        const outcome = String(f.outcome);
        Object.assign(a, {
          start: time(f.startedAt as string | undefined) ?? a.start,
          end: time(f.endedAt as string | undefined) ?? a.end ?? at,
          host: (f.host as string | null) ?? a.host,
          resumedFromStep: (f.resumedFromStep as number | null) ?? null,
          outcome: outcome === 'completed' || outcome === 'reused' ? 'ok' : outcome === 'failed' || outcome === 'cancelled' || outcome === 'lost' ? outcome : 'unknown',
          ...(f.reason ? { reason: String(f.reason) } : {}),
        });
        for (const step of (f.checkpoints as number[] | undefined) ?? []) s.checkpoints.push(step);
        break;
      }
      case 'stage-completed':
      case 'stage-reused': {
        if (!s) break;
        const art = f.artifact as { uri: string; manifestSha256: string } | undefined;
        if (art) s.artifact = { uri: art.uri, manifestSha256: art.manifestSha256 };
        s.cacheKey = f.cacheKey as string | undefined;
        s.metrics = { ...s.metrics, ...((f.metrics as Record<string, number | null>) ?? {}) };
        s.reused = e.type === 'stage-reused';
        if (s.state === 'pending' || s.state === 'running') s.state = s.reused ? 'reused' : 'completed';
        if (!s.reused && typeof f.attempt === 'number') {
          const a = attemptOf(s, f.attempt);
          if (a.outcome === 'unknown') Object.assign(a, { outcome: 'ok', end: a.end ?? at });
        }
        closeOpen(s, at, 'lost');
        s.end = at;
        break;
      }
      case 'stage-failed':
      case 'stage-cancelled':
        if (!s) break;
        closeOpen(s, at, e.type === 'stage-cancelled' ? 'cancelled' : 'failed');
        s.error = String(f.error ?? s.error ?? '');
        s.end ??= at;
        if (s.state === 'pending' || s.state === 'running') s.state = e.type === 'stage-cancelled' ? 'cancelled' : 'failed';
        break;
      case 'gate':
        if (!s) break;
        s.gates = s.gates.filter((g) => g.type !== 'gate' || g.at !== undefined);
        s.gates.push({ type: 'gate', passed: Boolean(f.passed), text: String(f.reason ?? ''), at: e.at });
        break;
      case 'approval':
        if (!s) break;
        s.gates.push({ type: 'approval', passed: Boolean(f.approved), text: `${f.approved ? 'approved' : 'rejected'} by ${String(f.by)}: ${String(f.reason ?? '')}`, at: e.at });
        s.decidedAt = at;
        break;
    }
  }

  // Job events: exact attempt start/end where the trail had to guess, and attempts it never saw.
  for (const [stageId, byAttempt] of jobEvents) {
    const s = stage(stageId);
    s.events = byAttempt;
    for (const [n, lines] of byAttempt) {
      if (lines.length === 0) continue;
      const a = attemptOf(s, n);
      const first = time(lines[0]!.at);
      const last = time(lines[lines.length - 1]!.at);
      if (first !== undefined && (a.start === undefined || first < a.start)) a.start = first;
      if (a.outcome === 'lost' || a.end === undefined) a.end = last ?? a.end;
      const started = lines.find((l) => l.event === 'started');
      if (started?.resumed_from_step) a.resumedFromStep ??= started.resumed_from_step;
      if (a.outcome === 'unknown') a.outcome = lines.some((l) => l.event === 'done') ? 'ok' : lines.some((l) => l.event === 'error') ? 'failed' : 'unknown';
      if (!a.reason) a.reason = lines.find((l) => l.event === 'error')?.message;
    }
  }
  const all = [...stages.values()];
  const runEndKnown = runEnd ?? time(run.status?.finishedAt);
  for (const s of all) {
    for (const a of s.attempts) {
      a.start ??= s.start;
      if (a.end === undefined) {
        a.end = s.end ?? runEndKnown;
        if (a.outcome === 'unknown') a.outcome = s.state === 'running' ? 'running' : s.state === 'completed' ? 'ok' : s.state === 'cancelled' ? 'cancelled' : 'unknown';
      }
    }
    s.checkpoints = [...new Set(s.checkpoints)].sort((x, y) => x - y);
    s.attemptCount = Math.max(s.attemptCount, s.attempts.length, ...s.attempts.map((a) => a.attempt));
  }
  const times = all.flatMap((s) => [s.start, s.end, s.decidedAt, ...s.attempts.flatMap((a) => [a.start, a.end])]).filter((t): t is number => t !== undefined);
  const start = runStart ?? time(run.manifest?.startedAt) ?? (times.length ? Math.min(...times) : undefined);
  // A run still going: its timeline reaches to now (when the report is made).
  const lastSeen = times.length ? Math.max(...times) : undefined;
  const end = runEndKnown ?? (now && lastSeen !== undefined ? Math.max(now.getTime(), lastSeen) : lastSeen);
  return { run, stages: all, start, end, state, error };
}

// ---------------------------------------------------------------------------------------------
// HTML

const CSS = `
*{box-sizing:border-box}
body{margin:0;background:#f4f6f9;color:#1f2630;font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:24px 24px 40px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:16px;margin:0 0 12px;color:#2a3340}
section{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:16px 18px;margin:16px 0}
.sub{color:#5b6470;margin:0 0 14px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;vertical-align:middle;margin-left:6px}
.st-completed{background:#2e7d4f}.st-failed{background:#c0392b}.st-cancelled{background:#7f8790}.st-running{background:#2f6fd0}.st-reused{background:#8794a3}.st-skipped{background:#b3bac3}.st-pending{background:#b3bac3}.st-awaiting-approval{background:#c9a227}.st-unchanged{background:#6b7a8f}
dl.kv{display:grid;grid-template-columns:150px 1fr;gap:4px 14px;margin:0}
dl.kv dt{color:#5b6470}
dl.kv dd{margin:0;min-width:0}
code,.hash{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.hash{word-break:break-all}
table{border-collapse:collapse;width:100%;table-layout:auto}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #edf0f3;vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#5b6470;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#2e7d4f;font-weight:600}.bad{color:#c0392b;font-weight:600}.warn{color:#b86e00;font-weight:600}.muted{color:#7a828c}
.charts{display:flex;flex-wrap:wrap;gap:12px}
.charts figure{margin:0;border:1px solid #edf0f3;border-radius:6px;padding:6px;background:#fff;flex:1 1 440px;max-width:calc(50% - 6px);min-width:0}
.charts figure svg{width:100%}
.charts figcaption{font-size:12px;color:#5b6470;padding:0 4px 2px}
svg{max-width:100%;height:auto;display:block}
svg text{font-family:inherit;fill:#1f2630}
svg .chart-title{font-size:13px;font-weight:600}
svg .tick{font-size:10.5px;fill:#5b6470}
svg .axis-label{font-size:11px;fill:#5b6470}
svg .legend{font-size:11px}
svg .marker{font-size:10.5px;font-weight:600}
svg .row-label{font-size:12.5px;font-weight:600}
svg .row-sublabel{font-size:10.5px;fill:#7a828c}
svg .row-note{font-size:11.5px}
svg .bar-label{font-size:10.5px;font-weight:600}
.metrics{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:2px 18px}
.metrics div{display:flex;justify-content:space-between;gap:8px;border-bottom:1px dotted #e3e6ea;padding:1px 0;min-width:0}
.metrics span:first-child{color:#5b6470;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.metrics span:last-child{font-variant-numeric:tabular-nums}
footer{color:#7a828c;font-size:12px;margin-top:18px}
`;

const OUTCOME_COLOR: Record<AttemptOutcome, string> = { ok: COLORS.ok, failed: COLORS.failed, lost: COLORS.lost, cancelled: COLORS.cancelled, running: COLORS.running, unknown: COLORS.cancelled };
const isoOf = (t: number | undefined) => (t === undefined ? '—' : new Date(t).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z'));
const durationOf = (a?: number, b?: number) => (a !== undefined && b !== undefined ? formatDuration(Math.max(0, b - a)) : '—');
const badge = (state: string) => `<span class="badge st-${esc(state.replace(/[^a-z-]/g, ''))}">${esc(state)}</span>`;
const hash = (h: string | undefined) => (h ? `<span class="hash">${esc(h)}</span>` : '<span class="muted">—</span>');

export function renderReport(d: ReportData, now: Date): { html: string; charts: number } {
  const { run } = d;
  const m = run.manifest;
  const pipeline = m?.pipeline ?? run.status?.pipeline ?? '?';
  const parts: string[] = [];
  parts.push(`<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">`);
  parts.push(`<title>${esc(`Refinery run ${run.runId} — ${pipeline}`)}</title><style>${CSS}</style></head><body><main>`);

  // Header
  const head = run.status?.auditHead ?? (run.records.length ? { seq: run.records[run.records.length - 1]!.seq, hash: run.records[run.records.length - 1]!.hash } : undefined);
  parts.push(`<header><h1>Run ${esc(run.runId)} ${badge(d.state)}</h1><p class="sub">pipeline <b>${esc(pipeline)}</b> · storage prefix <code>${esc(run.prefix)}</code></p></header>`);
  const kv: [string, string][] = [
    ['requested by', esc(m?.requestedBy ?? (run.records[0]?.event.requestedBy as string | undefined) ?? '—')],
    ['started', esc(isoOf(d.start))],
    ['finished', esc(run.status ? isoOf(d.end) : 'not finished')],
    ['duration', esc(durationOf(d.start, d.end))],
    ['spec sha256', hash(m?.specSha256 ?? (run.records[0]?.event.specSha256 as string | undefined))],
  ];
  if (m?.resumeFrom) kv.push(['resumes run', esc(m.resumeFrom)]);
  if (run.status?.unchangedSince) kv.push(['not run', `inputs unchanged since run ${esc(run.status.unchangedSince)}`]);
  if (m?.versions) kv.push(['versions', Object.entries(m.versions).map(([k, v]) => `${esc(k)} <code>${esc(v)}</code>`).join(' · ')]);
  if (m?.controlHost) kv.push(['control host', esc(m.controlHost)]);
  kv.push(['audit trail', head && run.records.length > 0 ? `${run.records.length} events · head #${head.seq} ${hash(head.hash)}` : '<span class="warn">no audit trail stored</span>']);
  if (d.error) kv.push(['error', `<span class="bad">${esc(d.error)}</span>`]);
  parts.push(`<section><dl class="kv">${kv.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${v}</dd>`).join('')}</dl></section>`);

  // Timeline
  parts.push(`<section><h2>Stage timeline</h2>${renderTimeline(d)}</section>`);

  // Failures and retries
  const failures = d.stages.flatMap((s) => s.attempts.filter((a) => a.outcome === 'failed' || a.outcome === 'lost' || a.outcome === 'cancelled').map((a) => ({ s, a })));
  if (failures.length > 0) {
    const rows = failures.map(({ s, a }) => {
      const next = s.attempts.find((x) => x.attempt === a.attempt + 1);
      const after = next ? `retried: attempt ${next.attempt}${next.resumedFromStep ? ` resumed from step ${next.resumedFromStep}` : ' from the start'} (${next.outcome})` : '—';
      return `<tr><td>${esc(s.id)}</td><td class="num">${a.attempt}</td><td class="${a.outcome === 'failed' ? 'bad' : 'warn'}">${esc(a.outcome)}</td><td>${esc(a.host ?? '—')}</td><td>${esc(isoOf(a.end))}</td><td>${esc(a.reason ?? '—')}</td><td>${esc(after)}</td></tr>`;
    });
    parts.push(`<section><h2>Failures and retries</h2><table><thead><tr><th>stage</th><th>attempt</th><th>outcome</th><th>host</th><th>at</th><th>reason</th><th>then</th></tr></thead><tbody>${rows.join('')}</tbody></table></section>`);
  }

  // Curves
  const charts = renderCharts(d);
  parts.push(`<section><h2>Training curves</h2>${charts.length ? `<div class="charts">${charts.join('')}</div>` : '<p class="muted">No progress events stored for this run (logs/&lt;stage&gt;/attempt-N.events.jsonl).</p>'}</section>`);

  // Metrics
  const withMetrics = d.stages.filter((s) => Object.keys(s.metrics).length > 0);
  parts.push(
    `<section><h2>Final metrics</h2>${
      withMetrics.length
        ? `<table><thead><tr><th style="width:120px">stage</th><th>metrics</th></tr></thead><tbody>${withMetrics
            .map((s) => `<tr><td>${esc(s.id)}${s.kind === s.id ? '' : `<div class="muted">${esc(s.kind)}</div>`}</td><td><div class="metrics">${keyMetrics(s.metrics, Infinity).map(([k, v]) => `<div><span title="${esc(k)}">${esc(k)}</span><span>${esc(formatNumber(v))}</span></div>`).join('')}</div></td></tr>`)
            .join('')}</tbody></table>`
        : '<p class="muted">No metrics recorded.</p>'
    }</section>`,
  );

  // Gates and approvals
  const gates = d.stages.flatMap((s) => s.gates.map((g) => ({ s, g })));
  parts.push(
    `<section><h2>Gates and approvals</h2>${
      gates.length
        ? `<table><thead><tr><th>stage</th><th>check</th><th>result</th><th>detail</th><th>at</th></tr></thead><tbody>${gates
            .map(({ s, g }) => `<tr><td>${esc(s.id)}</td><td>${esc(g.type === 'gate' ? 'metric gate' : 'approval')}</td><td class="${g.passed ? 'ok' : 'bad'}">${g.passed ? (g.type === 'gate' ? 'passed' : 'approved') : g.type === 'gate' ? 'failed' : 'rejected'}</td><td>${esc(g.text)}</td><td>${esc(g.at ? isoOf(time(g.at)) : '—')}</td></tr>`)
            .join('')}</tbody></table>`
        : '<p class="muted">No gates in this run.</p>'
    }</section>`,
  );

  // Artifacts
  const arts = d.stages.filter((s) => s.artifact);
  parts.push(
    `<section><h2>Artifacts</h2>${
      arts.length
        ? `<table><thead><tr><th>stage</th><th>state</th><th>manifest sha256</th><th>location</th></tr></thead><tbody>${arts
            .map((s) => `<tr><td>${esc(s.id)}</td><td>${badge(s.state)}</td><td>${hash(s.artifact!.manifestSha256)}</td><td><span class="hash">${esc(s.artifact!.uri)}</span>${s.cacheKey ? `<div class="muted">cache key ${esc(s.cacheKey)}</div>` : ''}</td></tr>`)
            .join('')}</tbody></table>`
        : '<p class="muted">No committed artifacts.</p>'
    }</section>`,
  );

  // Inputs
  const inputs: string[] = [];
  if (m?.baseModel) inputs.push(`<tr><td>base model</td><td>${esc(m.baseModel.source)}</td><td>${hash(m.baseModel.manifestSha256)} <span class="muted">(manifest)</span></td><td><span class="hash">${esc(m.baseModel.uri)}</span></td></tr>`);
  for (const [name, ds] of Object.entries(m?.datasets ?? {})) {
    inputs.push(`<tr><td>${esc(name)}</td><td>${esc(ds.source)}</td><td>${hash(ds.sha256)}</td><td><span class="hash">${esc(ds.uri)}</span></td></tr>`);
  }
  parts.push(
    `<section><h2>Datasets and base model</h2>${
      inputs.length ? `<table><thead><tr><th>input</th><th>source</th><th>sha256</th><th>stored copy</th></tr></thead><tbody>${inputs.join('')}</tbody></table>` : '<p class="muted">No run manifest (run.json): the run was not prepared.</p>'
    }</section>`,
  );

  const verify = `refinery audit verify ${run.runId}${run.prefix === DEFAULT_PREFIX ? '' : ` --prefix ${run.prefix}`}`;
  parts.push(`<footer>Generated ${esc(isoOf(now.getTime()))} from the object store alone. Check the trail and re-hash every artifact with <code>${esc(verify)}</code>.</footer>`);
  parts.push('</main></body></html>\n');
  return { html: parts.join('\n'), charts: charts.length };
}

function renderTimeline(d: ReportData): string {
  if (d.start === undefined || d.end === undefined || d.stages.every((s) => s.start === undefined)) return '<p class="muted">No stage started.</p>';
  const rows: TimelineRow[] = d.stages.map((s) => {
    const bars: TimelineBar[] = [];
    if (s.reused && s.start !== undefined) {
      bars.push({ start: s.start, end: Math.max(s.end ?? s.start, s.start), color: COLORS.reused, hatched: true, label: 'reused', title: `${s.id}: reused a committed output` });
    }
    for (const a of s.attempts) {
      if (a.start === undefined) continue;
      const end = a.end ?? d.end!;
      const resumed = a.resumedFromStep ? `, resumed from step ${a.resumedFromStep}` : '';
      bars.push({
        start: a.start,
        end,
        color: OUTCOME_COLOR[a.outcome],
        label: `#${a.attempt}${a.resumedFromStep ? ` ↻${a.resumedFromStep}` : ''}`,
        title: `${s.id} attempt ${a.attempt} (${a.outcome}${resumed}) on ${a.host ?? '?'}: ${formatDuration(end - a.start)}${a.reason ? ` — ${a.reason}` : ''}`,
      });
    }
    if (s.decidedAt !== undefined && s.end !== undefined && s.decidedAt > s.end) {
      bars.push({ start: s.end, end: s.decidedAt, color: COLORS.waiting, label: 'approval', title: `${s.id}: waited for approval ${formatDuration(s.decidedAt - s.end)}` });
    }
    const failed = s.attempts.filter((a) => a.outcome === 'failed' || a.outcome === 'lost').length;
    const dur = s.start !== undefined && s.end === undefined && d.state === 'running' ? `running ${durationOf(s.start, d.end)}` : durationOf(s.start, s.end);
    const note = s.reused ? `reused · ${dur}` : s.start === undefined ? s.state : `${dur} · ${s.attemptCount || 1} attempt${s.attemptCount > 1 ? 's' : ''}${failed ? `, ${failed} failed` : ''}`;
    return {
      label: s.id,
      sublabel: s.kind === s.id ? s.state : `${s.kind} · ${s.state}`,
      span: s.start !== undefined ? { start: s.start, end: Math.max(s.end ?? d.end!, s.decidedAt ?? 0) } : undefined,
      bars,
      note,
      noteColor: s.state === 'failed' || failed ? COLORS.failed : undefined,
    };
  });
  return timeline({
    rows,
    start: d.start,
    end: d.end,
    legend: [
      { color: COLORS.ok, label: 'attempt' },
      { color: COLORS.failed, label: 'failed attempt' },
      { color: COLORS.lost, label: 'lost attempt' },
      { color: COLORS.reused, label: 'reused output', hatched: true },
      { color: COLORS.waiting, label: 'awaiting approval' },
      { color: COLORS.span, label: 'stage (downloads, commit)' },
    ],
  });
}

const MAX_REWARD_SERIES = 6;

/** Loss per training stage and reward-like metrics, one chart each, every attempt a series. */
function renderCharts(d: ReportData): string[] {
  const out: string[] = [];
  for (const s of d.stages) {
    if (s.events.size === 0) continue;
    const attempts = [...s.events.keys()].sort((a, b) => a - b);
    const outcome = (n: number) => s.attempts.find((a) => a.attempt === n)?.outcome ?? 'unknown';
    const attemptColor = (n: number, i: number) => (outcome(n) === 'failed' || outcome(n) === 'lost' ? COLORS.failed : PALETTE[i % PALETTE.length]!);
    const markers: Marker[] = [];
    for (const n of attempts) {
      const a = s.attempts.find((x) => x.attempt === n);
      const started = s.events.get(n)!.find((l) => l.event === 'started');
      const from = started?.resumed_from_step ?? a?.resumedFromStep;
      if (n > 1 && from) markers.push({ x: from, label: `attempt ${n} resumes @ step ${from}`, color: COLORS.ok });
    }
    const checkpoints = [...new Set([...s.checkpoints, ...[...s.events.values()].flat().filter((l) => l.event === 'checkpoint' && typeof l.step === 'number').map((l) => l.step!)])];
    const ticks = checkpoints.map((x) => ({ x, label: `checkpoint at step ${x}` }));

    const loss: Series[] = [];
    attempts.forEach((n, i) => {
      const pts = s.events.get(n)!.filter((l) => l.event === 'progress' && typeof l.loss === 'number' && typeof l.step === 'number').map((l) => [l.step!, l.loss!] as [number, number]);
      if (pts.length > 0) loss.push({ label: `attempt ${n} (${outcome(n)})`, points: pts, color: attemptColor(n, i), dashed: outcome(n) === 'failed' || outcome(n) === 'lost' });
    });
    if (loss.length > 0) {
      out.push(figure(lineChart({ title: `${s.id} — loss`, xLabel: 'step', yLabel: 'loss', series: loss, markers, ticks }), `${s.kind} stage ${s.id}: training loss per step, every attempt${ticks.length ? '; ▲ committed checkpoints' : ''}`));
    }

    const reward = new Map<string, [number, number][]>();
    attempts.forEach((n) => {
      let lastStep = 0;
      for (const l of s.events.get(n)!) {
        if (typeof l.step === 'number' && (l.event === 'progress' || l.event === 'metrics')) lastStep = l.step;
        if ((l.event !== 'progress' && l.event !== 'metrics') || !l.metrics) continue;
        for (const [k, v] of Object.entries(l.metrics)) {
          if (!/reward/i.test(k) || typeof v !== 'number') continue;
          const key = `${k}\u0000${n}`;
          const pts = reward.get(key) ?? [];
          pts.push([typeof l.step === 'number' ? l.step : lastStep, v]);
          reward.set(key, pts);
        }
      }
    });
    if (reward.size > 0) {
      const names = [...new Set([...reward.keys()].map((k) => k.split('\u0000')[0]!))].slice(0, MAX_REWARD_SERIES);
      const series: Series[] = [];
      for (const [key, pts] of reward) {
        const [name, n] = key.split('\u0000') as [string, string];
        const i = names.indexOf(name);
        if (i < 0) continue;
        const failed = outcome(Number(n)) === 'failed' || outcome(Number(n)) === 'lost';
        series.push({ label: attempts.length > 1 ? `${name} · attempt ${n}` : name, points: pts, color: PALETTE[i % PALETTE.length]!, dashed: failed });
      }
      out.push(figure(lineChart({ title: `${s.id} — reward`, xLabel: 'step', yLabel: 'reward', series, markers }), `${s.kind} stage ${s.id}: reward metrics per step${attempts.length > 1 ? ' (dashed: failed attempts)' : ''}`));
    }
  }
  return out;
}

function figure(svg: string, caption: string): string {
  return `<figure>${svg}<figcaption>${esc(caption)}</figcaption></figure>`;
}
