/**
 * The model of a run that `report` draws: stages, each with its attempts (start, end, outcome,
 * host, resume step), gates and approvals, metrics, artifact and checkpoints, and the job events
 * by attempt. Assembled from the audit trail, status.json and the job events (client/run-records.ts),
 * in that order of trust.
 */
import type { AuditRecord } from '../../storage/audit-chain.js';
import type { JobEventLine, RunRecords } from '../run-records.js';

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

/** Epoch milliseconds of an ISO time; undefined for anything else. */
export const time = (at: unknown): number | undefined => {
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
