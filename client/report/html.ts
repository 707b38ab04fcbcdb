/**
 * The report page: one self-contained HTML document from a run's model (client/report/model.ts):
 * header, timeline, failures and retries, curves, metrics, gates and approvals, artifacts, inputs.
 * Inline CSS and SVG only: no scripts, no external references.
 */
import { formatNumber, keyMetrics } from '../format.js';
import { DEFAULT_PREFIX } from '../run-records.js';
import type { Cost } from '../../workflows/types.js';
import { durationOf, renderCharts, renderTimeline } from './charts.js';
import { time, type ReportData } from './model.js';
import { esc, formatDuration } from './svg.js';

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

const isoOf = (t: number | undefined) => (t === undefined ? '—' : new Date(t).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z'));
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

  // Cost (workflows/cost.ts): from status.json, else the trail's run-cost event
  const costEvent = run.records.map((r) => r.event).find((e) => e.type === 'run-cost') as { total?: Cost; stages?: Record<string, Cost> } | undefined;
  const total = run.status?.cost ?? costEvent?.total;
  if (total) {
    const stageCosts = run.status?.stages?.map((st) => [st.id, st.cost] as const) ?? Object.entries(costEvent?.stages ?? {});
    const row = (name: string, c: Cost | undefined) =>
      c ? `<tr><td>${esc(name)}</td><td>${c.wallSeconds === null ? '—' : esc(formatDuration(c.wallSeconds * 1000))}</td><td>${c.attempts}</td><td>${esc(formatDuration(c.attemptSeconds * 1000))}</td><td>${(c.gpuSeconds / 3600).toFixed(2)}</td></tr>` : '';
    parts.push(
      `<section><h2>Cost</h2><table><thead><tr><th>stage</th><th>wall time</th><th>attempts</th><th>attempt time</th><th>GPU-hours</th></tr></thead><tbody>${stageCosts.map(([id, c]) => row(id, c)).join('')}${row('run', total).replace('<tr>', '<tr class="total">')}</tbody></table></section>`,
    );
  }

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
