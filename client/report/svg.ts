/**
 * Inline SVG for `refinery report`: a line chart and a timeline, as strings, with every piece of
 * text escaped. No scripts and no external references, so a report opens anywhere, offline.
 */

/** Escapes text for HTML and SVG content and attribute values. */
export function esc(value: unknown): string {
  return String(value ?? '')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

export const COLORS = {
  ok: '#2f6fd0',
  failed: '#d0382f',
  lost: '#e08a1e',
  cancelled: '#8a8f98',
  running: '#6aa84f',
  reused: '#9aa5b1',
  waiting: '#e6c14a',
  span: '#e7ecf3',
  grid: '#e3e6ea',
  axis: '#5b6470',
  text: '#1f2630',
};

/** Colours for the series of a chart, in order. */
export const PALETTE = ['#2f6fd0', '#2e9e6a', '#8e44ad', '#e08a1e', '#16a2b8', '#c2417c', '#6b7a8f', '#a0852c'];

export interface Series {
  label: string;
  points: [number, number][];
  color: string;
  dashed?: boolean;
}

export interface Marker {
  x: number;
  label: string;
  color?: string;
}

export interface LineChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** Vertical lines at an x value (e.g. where an attempt resumed). */
  markers?: Marker[];
  /** Small ticks on the x axis (e.g. committed checkpoints). */
  ticks?: { x: number; label: string }[];
  width?: number;
  height?: number;
}

const num = (v: number) => String(Math.round(v * 10) / 10);

/** A line chart: one polyline per series, axes with round ticks, a legend under the plot. */
export function lineChart(o: LineChartOptions): string {
  const width = o.width ?? 480;
  const legendRows = Math.ceil(o.series.length / 2);
  const plotHeight = (o.height ?? 240) - 60;
  const m = { left: 58, right: 16, top: 30, bottom: 38 };
  const height = m.top + plotHeight + m.bottom + legendRows * 16 + 6;
  const pw = width - m.left - m.right;
  const all = o.series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const xs = [...all.map((p) => p[0]), ...(o.markers ?? []).map((mk) => mk.x)];
  const ys = all.map((p) => p[1]);
  const [x0, x1] = padRange(Math.min(0, ...xs), Math.max(...xs), false);
  const [y0, y1] = padRange(Math.min(...ys), Math.max(...ys), true);
  const sx = (x: number) => m.left + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number) => m.top + plotHeight - ((y - y0) / (y1 - y0)) * plotHeight;
  const out: string[] = [];
  out.push(`<svg class="chart" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-label="${esc(o.title)}">`);
  out.push(`<text x="${m.left}" y="18" class="chart-title">${esc(o.title)}</text>`);
  for (const t of niceTicks(y0, y1, 5)) {
    out.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${num(sy(t))}" y2="${num(sy(t))}" stroke="${COLORS.grid}"/>`);
    out.push(`<text x="${m.left - 6}" y="${num(sy(t) + 4)}" text-anchor="end" class="tick">${esc(formatTick(t))}</text>`);
  }
  for (const t of niceTicks(x0, x1, 6)) {
    out.push(`<line x1="${num(sx(t))}" x2="${num(sx(t))}" y1="${m.top + plotHeight}" y2="${m.top + plotHeight + 4}" stroke="${COLORS.axis}"/>`);
    out.push(`<text x="${num(sx(t))}" y="${m.top + plotHeight + 16}" text-anchor="middle" class="tick">${esc(formatTick(t))}</text>`);
  }
  out.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${m.top + plotHeight}" y2="${m.top + plotHeight}" stroke="${COLORS.axis}"/>`);
  out.push(`<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + plotHeight}" stroke="${COLORS.axis}"/>`);
  out.push(`<text x="${m.left + pw / 2}" y="${m.top + plotHeight + 31}" text-anchor="middle" class="axis-label">${esc(o.xLabel)}</text>`);
  out.push(`<text transform="translate(13 ${m.top + plotHeight / 2}) rotate(-90)" text-anchor="middle" class="axis-label">${esc(o.yLabel)}</text>`);
  for (const t of o.ticks ?? []) {
    const x = num(sx(t.x));
    const y = m.top + plotHeight;
    out.push(`<path d="M${x} ${y - 7} l4 6 h-8 z" fill="${COLORS.axis}" opacity="0.55"><title>${esc(t.label)}</title></path>`);
  }
  for (const mk of o.markers ?? []) {
    const x = num(sx(mk.x));
    const color = mk.color ?? COLORS.axis;
    out.push(`<line x1="${x}" x2="${x}" y1="${m.top}" y2="${m.top + plotHeight}" stroke="${color}" stroke-dasharray="4 3"/>`);
    const anchor = sx(mk.x) > m.left + pw * 0.6 ? 'end' : 'start';
    out.push(`<text x="${num(sx(mk.x) + (anchor === 'end' ? -4 : 4))}" y="${m.top + 11}" text-anchor="${anchor}" class="marker" fill="${color}">${esc(mk.label)}</text>`);
  }
  for (const s of o.series) {
    const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (pts.length === 0) continue;
    const dash = s.dashed ? ' stroke-dasharray="5 3"' : '';
    out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="1.8"${dash} points="${pts.map(([x, y]) => `${num(sx(x))},${num(sy(y))}`).join(' ')}"><title>${esc(s.label)}</title></polyline>`);
    if (pts.length <= 2) for (const [x, y] of pts) out.push(`<circle cx="${num(sx(x))}" cy="${num(sy(y))}" r="2.5" fill="${s.color}"/>`);
    const [lx, ly] = pts[pts.length - 1]!;
    if (s.dashed) out.push(`<path d="M${num(sx(lx) - 4)} ${num(sy(ly) - 4)} l8 8 m0 -8 l-8 8" stroke="${s.color}" stroke-width="1.8"/>`);
  }
  o.series.forEach((s, i) => {
    const lx = m.left + (i % 2) * (pw / 2);
    const ly = m.top + plotHeight + m.bottom + Math.floor(i / 2) * 16 + 4;
    const dash = s.dashed ? ' stroke-dasharray="5 3"' : '';
    out.push(`<line x1="${lx}" x2="${lx + 18}" y1="${ly}" y2="${ly}" stroke="${s.color}" stroke-width="2"${dash}/>`);
    out.push(`<text x="${lx + 23}" y="${ly + 4}" class="legend">${esc(truncate(s.label, 40))}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}

export interface TimelineBar {
  start: number;
  end: number;
  color: string;
  label?: string;
  /** Tooltip. */
  title: string;
  hatched?: boolean;
}

export interface TimelineRow {
  label: string;
  sublabel?: string;
  span?: { start: number; end: number };
  bars: TimelineBar[];
  /** Right-hand text: duration, attempts. */
  note: string;
  noteColor?: string;
}

/** One row per stage on a shared time axis (ms since epoch), bars per attempt on the stage's span. */
export function timeline(o: { rows: TimelineRow[]; start: number; end: number; width?: number; legend?: { color: string; label: string; hatched?: boolean }[] }): string {
  const width = o.width ?? 1040;
  const m = { left: 150, right: 230, top: 30 };
  const rowH = 30;
  const pw = width - m.left - m.right;
  const total = Math.max(1, o.end - o.start);
  const legendH = o.legend?.length ? 26 : 0;
  const height = m.top + o.rows.length * rowH + 8 + legendH;
  const sx = (t: number) => m.left + ((t - o.start) / total) * pw;
  const out: string[] = [];
  out.push(`<svg class="timeline" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-label="stage timeline">`);
  out.push('<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#cfd6de"/><line x1="0" y1="0" x2="0" y2="6" stroke="#9aa5b1" stroke-width="3"/></pattern></defs>');
  for (const t of timeTicks(total / 1000, 8)) {
    const x = num(sx(o.start + t * 1000));
    out.push(`<line x1="${x}" x2="${x}" y1="${m.top - 6}" y2="${m.top + o.rows.length * rowH}" stroke="${COLORS.grid}"/>`);
    out.push(`<text x="${x}" y="${m.top - 10}" text-anchor="middle" class="tick">${esc(formatDuration(t * 1000, true))}</text>`);
  }
  o.rows.forEach((r, i) => {
    const y = m.top + i * rowH;
    const mid = y + rowH / 2;
    out.push(`<text x="${m.left - 10}" y="${mid - (r.sublabel ? 1 : -4)}" text-anchor="end" class="row-label">${esc(truncate(r.label, 18))}</text>`);
    if (r.sublabel) out.push(`<text x="${m.left - 10}" y="${mid + 11}" text-anchor="end" class="row-sublabel">${esc(truncate(r.sublabel, 22))}</text>`);
    if (r.span) {
      const w = Math.max(2, sx(r.span.end) - sx(r.span.start));
      out.push(`<rect x="${num(sx(r.span.start))}" y="${y + 4}" width="${num(w)}" height="${rowH - 8}" rx="3" fill="${COLORS.span}"/>`);
    }
    for (const b of r.bars) {
      const x = sx(b.start);
      const w = Math.max(3, sx(b.end) - x);
      const fill = b.hatched ? 'url(#hatch)' : b.color;
      out.push(`<rect x="${num(x)}" y="${y + 7}" width="${num(w)}" height="${rowH - 14}" rx="2" fill="${fill}"><title>${esc(b.title)}</title></rect>`);
      if (b.label && w > 7 * b.label.length + 6) {
        out.push(`<text x="${num(x + w / 2)}" y="${mid + 4}" text-anchor="middle" class="bar-label" fill="${b.hatched ? COLORS.text : '#fff'}">${esc(b.label)}</text>`);
      }
    }
    out.push(`<text x="${width - m.right + 10}" y="${mid + 4}" class="row-note" fill="${r.noteColor ?? COLORS.text}">${esc(truncate(r.note, 38))}</text>`);
  });
  if (o.legend?.length) {
    let x = m.left;
    const y = m.top + o.rows.length * rowH + 16;
    for (const l of o.legend) {
      out.push(`<rect x="${x}" y="${y - 9}" width="14" height="10" rx="2" fill="${l.hatched ? 'url(#hatch)' : l.color}"/>`);
      out.push(`<text x="${x + 19}" y="${y}" class="legend">${esc(l.label)}</text>`);
      x += 30 + l.label.length * 6.5;
    }
  }
  out.push('</svg>');
  return out.join('\n');
}

/** "1.2 s", "3 min 05 s", "1 h 02 min"; `tick` gives compact axis labels. */
export function formatDuration(ms: number, tick = false): string {
  const s = ms / 1000;
  if (tick) {
    if (s < 60) return `${Number(s.toFixed(s < 10 && s % 1 !== 0 ? 1 : 0))}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${s % 60 ? String(Math.round(s % 60)).padStart(2, '0') + 's' : ''}`;
    return `${Math.floor(s / 3600)}h${String(Math.round((s % 3600) / 60)).padStart(2, '0')}`;
  }
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(Math.round(s % 60)).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.round((s % 3600) / 60)).padStart(2, '0')} min`;
}

function truncate(s: string, n: number): string {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

function padRange(lo: number, hi: number, pad: boolean): [number, number] {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (lo === hi) return lo === 0 ? [-1, 1] : [lo - Math.abs(lo) * 0.1, hi + Math.abs(hi) * 0.1];
  const d = pad ? (hi - lo) * 0.06 : 0;
  return [lo - d, hi + d];
}

const TIME_STEPS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

/** Tick values in seconds from 0 to `total`, on steps a clock reader expects (5 s, 30 s, 5 min…). */
export function timeTicks(total: number, count: number): number[] {
  const step = TIME_STEPS.find((s) => s >= total / count) ?? Math.ceil(total / count / 86400) * 86400;
  const out: number[] = [];
  for (let v = 0; v <= total + 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** Round tick values between lo and hi, about `count` of them. */
export function niceTicks(lo: number, hi: number, count: number): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function formatTick(v: number): string {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}
