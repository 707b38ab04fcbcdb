/**
 * `refinery audit <runId>`: the run manifest (who, when, spec and dataset hashes, versions) and
 * every event of the audit trail, one line each, read from object storage alone (invariant 8).
 */
import { auditKey, type AuditEvent, type AuditRecord } from '../../storage/audit-chain.js';
import { formatNumber, keyMetrics, shortHash as short } from '../format.js';
import { DEFAULT_PREFIX, readRun, type RunManifest, type RunRef } from '../run-records.js';

export interface AuditShow {
  runId: string;
  prefix: string;
  manifest: Omit<RunManifest, 'plan'> | null;
  state: string | null;
  finishedAt: string | null;
  events: AuditRecord[];
  problems: string[];
}

export async function showAudit(ref: RunRef): Promise<AuditShow> {
  const run = await readRun(ref);
  let manifest: Omit<RunManifest, 'plan'> | null = null;
  if (run.manifest) {
    const { plan: _plan, ...rest } = run.manifest;
    manifest = rest;
  }
  return {
    runId: run.runId,
    prefix: run.prefix,
    manifest,
    state: run.status?.state ?? (run.records.length > 0 ? 'running (no status.json yet)' : null),
    finishedAt: run.status?.finishedAt ?? null,
    events: run.records,
    problems: run.readProblems,
  };
}

export function renderAudit(a: AuditShow): string {
  const lines: string[] = [];
  const m = a.manifest;
  lines.push(`run ${a.runId}${m ? ` (${m.pipeline})` : ''}: ${a.state ?? 'unknown state'}`);
  if (m) {
    const row = (k: string, v: string) => lines.push(`  ${k.padEnd(13)} ${v}`);
    row('requested by', m.requestedBy);
    row('started', `${m.startedAt}${a.finishedAt ? `   finished ${a.finishedAt}` : ''}`);
    row('spec sha256', m.specSha256);
    if (m.resumeFrom) row('resumes', m.resumeFrom);
    if (m.baseModel) row('base model', `${m.baseModel.source}  manifest ${m.baseModel.manifestSha256}`);
    const ds = Object.entries(m.datasets ?? {});
    ds.forEach(([name, d], i) => row(i === 0 ? 'datasets' : '', `${name}  sha256 ${d.sha256}  (${d.source})`));
    if (m.versions) row('versions', Object.entries(m.versions).map(([k, v]) => `${k} ${v}`).join(', '));
    if (m.controlHost) row('control host', m.controlHost);
  } else {
    lines.push('  (no run.json: the run was not prepared)');
  }
  lines.push('', `audit trail (${a.events.length} event${a.events.length === 1 ? '' : 's'}, ${auditKey(`${a.prefix}/runs/${a.runId}`, 1).replace(/\d+\.json$/, '')}):`);
  if (a.events.length === 0) lines.push('  (none)');
  const typeWidth = Math.max(12, ...a.events.map((r) => r.event.type.length));
  const stageWidth = Math.max(5, ...a.events.map((r) => (r.event.stage ?? '').length));
  for (const r of a.events) {
    const e = r.event;
    lines.push(`  ${String(r.seq).padStart(4)}  ${formatTime(e.at)}  ${e.type.padEnd(typeWidth)}  ${(e.stage ?? '').padEnd(stageWidth)}  ${describeEvent(e)}`.trimEnd());
  }
  for (const p of a.problems) lines.push(`problem: ${p}`);
  lines.push('', `verify: refinery audit verify ${a.runId}${a.prefix === DEFAULT_PREFIX ? '' : ` --prefix ${a.prefix}`}`);
  return lines.join('\n');
}

function formatTime(at: string): string {
  return typeof at === 'string' ? at.replace('T', ' ').replace(/Z$/, '') : String(at);
}

/** The fields of an event a reader cares about, on one line. */
export function describeEvent(e: AuditEvent): string {
  const f = e as Record<string, unknown>;
  switch (e.type) {
    case 'run-started':
      return join([`pipeline ${f.pipeline}`, `by ${f.requestedBy}`, `spec ${short(f.specSha256)}`, f.resumeFrom ? `resumes ${f.resumeFrom}` : '', (f.forceStages as string[] | undefined)?.length ? `force ${(f.forceStages as string[]).join(',')}` : '']);
    case 'run-prepared': {
      const ds = Object.entries((f.datasets ?? {}) as Record<string, { sha256?: string }>).map(([k, d]) => `${k} ${short(d.sha256)}`);
      const base = f.baseModel as { manifestSha256?: string } | undefined;
      return join([base ? `base model ${short(base.manifestSha256)}` : '', ds.length ? `datasets ${ds.join(', ')}` : '', f.jobsVersion ? `jobs ${f.jobsVersion}` : '']);
    }
    case 'stage-started':
      return `kind ${f.kind}`;
    case 'attempt-started':
      return join([`attempt ${f.attempt}`, f.host ? `on ${f.host}` : '', f.resumedFromStep ? `resumed from step ${f.resumedFromStep}` : '']);
    case 'attempt-failed':
    case 'attempt-lost':
      return join([`attempt ${f.attempt}`, f.host ? `on ${f.host}` : '', oneLine(f.reason)]);
    case 'checkpoint-committed':
      return `step ${f.step} (attempt ${f.attempt})`;
    case 'attempt': {
      const cps = (f.checkpoints as number[] | undefined) ?? [];
      const skipped = (f.skippedCheckpoints as { step: number }[] | undefined) ?? [];
      return join([
        `attempt ${f.attempt} ${f.outcome}`,
        f.host ? `on ${f.host}` : '',
        f.resumedFromStep ? `resumed from step ${f.resumedFromStep}` : '',
        cps.length ? `checkpoints ${cps.length > 6 ? `${cps.slice(0, 3).join(', ')}, …, ${cps.slice(-2).join(', ')}` : cps.join(', ')}` : '',
        skipped.length ? `skipped corrupt ${skipped.map((c) => c.step).join(', ')}` : '',
        f.contractViolations ? `${f.contractViolations} contract violations` : '',
        f.reason ? oneLine(f.reason) : '',
      ]);
    }
    case 'stage-completed':
    case 'stage-reused': {
      const art = f.artifact as { uri?: string; manifestSha256?: string } | undefined;
      const metrics = keyMetrics((f.metrics ?? {}) as Record<string, number | null>, 4).map(([k, v]) => `${k}=${formatNumber(v)}`);
      return join([art ? `manifest ${short(art.manifestSha256)}` : '', f.attempt ? `attempt ${f.attempt}` : '', f.resumedFromStep ? `resumed@${f.resumedFromStep}` : '', metrics.join(' '), art?.uri ?? '']);
    }
    case 'stage-failed':
    case 'stage-cancelled':
      return oneLine(f.error);
    case 'gate':
      return /^(passed|failed)\b/i.test(oneLine(f.reason)) ? oneLine(f.reason) : `${f.passed ? 'passed' : 'FAILED'}: ${oneLine(f.reason)}`;
    case 'approval':
      return `${f.approved ? 'approved' : 'rejected'} by ${f.by}: ${oneLine(f.reason)}${f.signed === true ? ` (signed, key ${short(String(f.keyFingerprint))})` : f.signed === false ? ' (unsigned)' : ''}`;
    case 'run-unchanged':
      return `not run: inputs unchanged since run ${f.previousRunId}`;
    case 'run-finished':
      return join([String(f.state), f.error ? oneLine(f.error) : '']);
    case 'run-cost': {
      const t = f.total as { wallSeconds?: number | null; attempts?: number; attemptSeconds?: number; gpuSeconds?: number } | undefined;
      return t ? `wall ${t.wallSeconds ?? '?'} s, ${t.attempts ?? 0} attempts, ${t.attemptSeconds ?? 0} s of attempt time, ${((t.gpuSeconds ?? 0) / 3600).toFixed(2)} GPU-hours` : '';
    }
    case 'promoted':
      return `${f.changed ? 'promoted' : 'already pointed at it:'} ${f.model}@${f.alias} -> stage ${f.stage} (${short((f.target as { manifestSha256?: string } | undefined)?.manifestSha256)})`;
    case 'baseline': {
      const t = f.target as { runId?: string; stage?: string; manifestSha256?: string } | null;
      return t ? `${f.model}@${f.alias} -> ${t.runId}/${t.stage} (${short(t.manifestSha256)})` : `${f.model}@${f.alias} points at no model yet`;
    }
    default:
      return Object.entries(f)
        .filter(([k]) => !['type', 'at', 'stage'].includes(k))
        .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
        .join(' ');
  }
}

const join = (parts: string[]) => parts.filter(Boolean).join('  ');
const oneLine = (v: unknown) => (v === undefined || v === null ? '' : String(v).split('\n')[0]!.slice(0, 200));
