/**
 * The report's pictures of a run's model (client/report/model.ts): the stage timeline with every
 * attempt, and loss and reward curves per stage with resumes and checkpoints marked. Built from
 * the SVG primitives in svg.ts, which know nothing of runs.
 */
import { COLORS, PALETTE, esc, formatDuration, lineChart, timeline, type Marker, type Series, type TimelineBar, type TimelineRow } from './svg.js';
import type { AttemptOutcome, ReportData } from './model.js';

const OUTCOME_COLOR: Record<AttemptOutcome, string> = { ok: COLORS.ok, failed: COLORS.failed, lost: COLORS.lost, cancelled: COLORS.cancelled, running: COLORS.running, unknown: COLORS.cancelled };

/** How long from a to b ("—" when either is unknown). */
export const durationOf = (a?: number, b?: number) => (a !== undefined && b !== undefined ? formatDuration(Math.max(0, b - a)) : '—');

export function renderTimeline(d: ReportData): string {
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
export function renderCharts(d: ReportData): string[] {
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
