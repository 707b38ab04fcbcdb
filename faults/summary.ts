/** The fault suite's verdict: per-kind summaries, the invariant problems, and the printed table. */
import { OVERLAP_BOUND_MS } from './context.js';
import { FAULT_KINDS, type KindSummary, type SuiteResult } from './types.js';

export function summarize(r: Omit<SuiteResult, 'ok' | 'byKind' | 'problems' | 'table'>): SuiteResult {
  const byKind: KindSummary[] = [];
  for (const kind of FAULT_KINDS) {
    const runs = r.runs.filter((x) => x.kind === kind);
    if (runs.length === 0) continue;
    const lost = runs.map((x) => x.fault.stepsLost).filter((n): n is number => n !== null);
    byKind.push({
      kind,
      runs: runs.length,
      finishedAsExpected: runs.filter((x) => x.state === x.expected).length,
      artifactsChecked: sum(runs.map((x) => x.artifactsChecked)),
      artifactsVerified: sum(runs.map((x) => x.artifactsChecked - x.artifactsFailed.length)),
      maxStepsLost: lost.length ? Math.max(...lost) : null,
      bound: Math.max(...runs.map((x) => x.fault.bound)),
      duplicates: sum(runs.map((x) => x.duplicates)),
      orphans: sum(runs.map((x) => x.orphans.length)),
      overlapping: sum(runs.map((x) => x.overlaps.filter((o) => o.ms > OVERLAP_BOUND_MS).length)),
      maxOverlapMs: Math.max(0, ...runs.flatMap((x) => x.overlaps.map((o) => o.ms))),
      problems: sum(runs.map((x) => x.problems.length)),
    });
  }
  const problems = [
    ...r.runs.flatMap((x) => x.problems.map((p) => `${x.runId}: ${p}`)),
    ...r.notAllowed.map((s) => `${s.kind} could not run here and no --allow-skip names it: ${s.reason}`),
  ];
  const result: SuiteResult = { ...r, ok: problems.length === 0 && r.runs.length > 0, byKind, problems, table: '' };
  result.table = renderTable(result);
  return result;
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

export function renderTable(r: SuiteResult): string {
  const head = ['fault kind', 'runs', 'ended as expected', 'artifacts verified', 'max steps lost (bound)', 'overlapping attempts (max ms)', 'duplicates', 'orphans', 'problems'];
  const rows = r.byKind.map((k) => [
    k.kind,
    String(k.runs),
    `${k.finishedAsExpected}/${k.runs}${k.kind === 'cancel' ? ' cancelled' : ' completed'}`,
    `${k.artifactsVerified}/${k.artifactsChecked}`,
    k.kind === 'cancel' ? '- (cancelled)' : `${k.maxStepsLost ?? '-'} (<= ${k.bound})`,
    `${k.overlapping} (${k.maxOverlapMs})`,
    String(k.duplicates),
    String(k.orphans),
    String(k.problems),
  ]);
  const total = [
    'total',
    String(r.runs.length),
    `${sum(r.byKind.map((k) => k.finishedAsExpected))}/${r.runs.length}`,
    `${sum(r.byKind.map((k) => k.artifactsVerified))}/${sum(r.byKind.map((k) => k.artifactsChecked))}`,
    '',
    `${sum(r.byKind.map((k) => k.overlapping))} (${Math.max(0, ...r.byKind.map((k) => k.maxOverlapMs))})`,
    String(sum(r.byKind.map((k) => k.duplicates))),
    String(sum(r.byKind.map((k) => k.orphans))),
    String(r.problems.length),
  ];
  const all = [head, ...rows, total];
  const widths = head.map((_, i) => Math.max(...all.map((row) => row[i]!.length)));
  const line = (row: string[]) => row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  const out = [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line), widths.map((w) => '-'.repeat(w)).join('  '), line(total)];
  out.push('');
  out.push(`overlapping attempts: pairs of attempts of one stage whose job processes were alive at once for more than ${OVERLAP_BOUND_MS} ms (in brackets the longest overlap, ms)`);
  out.push(`${r.runs.length} runs, ${r.runs.length} faults (${r.byKind.map((k) => `${k.kind} ${k.runs}`).join(', ')}); seed ${r.seed}; ${(r.durationMs / 1000).toFixed(0)} s`);
  for (const s of r.skipped) out.push(`skipped ${s.kind}: ${s.reason}`);
  out.push(r.ok ? 'all invariants held' : `${r.problems.length} invariant violation(s):`);
  for (const p of r.problems) out.push(`  ${p.split('\n').join('\n    ')}`);
  return out.join('\n');
}

