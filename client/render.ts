/** Text rendering of a run's status: one line per stage, for `status` and `run --watch`. */
import type { AttemptStatus, PipelineStatus, StageStatus } from '../workflows/types.js';

const BAR_WIDTH = 20;

export function renderStatus(status: PipelineStatus, etas: Map<string, number | undefined> = new Map()): string {
  const width = Math.max(...status.stages.map((s) => s.id.length), 5);
  const lines = [`run ${status.runId} (${status.pipeline}): ${status.state}${status.error ? ` — ${status.error.split('\n')[0]}` : ''}${status.unchangedSince ? ` since run ${status.unchangedSince}` : ''}`];
  for (const s of status.stages) {
    lines.push(`  ${s.id.padEnd(width)}  ${s.kind.padEnd(6)} ${renderStage(s, etas.get(s.id))}`);
    for (const a of s.attempts ?? []) if (a.outcome !== 'completed' && a.outcome !== 'reused') lines.push(`  ${''.padEnd(width)}  ${renderAttempt(a)}`);
  }
  const c = status.cost;
  if (c && status.state !== 'running') lines.push(`  cost: wall ${c.wallSeconds === null ? '?' : formatSeconds(c.wallSeconds)}, ${c.attempts} attempt${c.attempts === 1 ? '' : 's'} (${formatSeconds(c.attemptSeconds)} of attempt time), ${(c.gpuSeconds / 3600).toFixed(2)} GPU-hours`);
  const p = status.promoted;
  if (p) lines.push(p.changed ? `  promoted ${p.model}@${p.alias} -> ${p.stage} (${p.target.manifestSha256.slice(0, 12)})${p.replaced ? `, replacing ${p.replaced.manifestSha256.slice(0, 12)}` : ''}` : `  ${p.model}@${p.alias} already pointed at ${p.stage}'s output: unchanged`);
  for (const q of status.quarantinedHosts ?? []) lines.push(`  host ${q.host} quarantined since ${q.since}: ${q.reason} (refinery worker clear ${q.host})`);
  return lines.join('\n');
}

/** A failed, drained or lost attempt: whose failure it was, where, and how far it got. */
function renderAttempt(a: AttemptStatus): string {
  const cls = a.failureClass ? `${a.failureClass}: ${(a.failureKind ?? '').replace(/-/g, ' ')}` : a.outcome;
  const where = a.host ? ` on ${a.host}` : '';
  const ckpt = a.lastCheckpointStep !== null ? `, last checkpoint ${a.lastCheckpointStep}` : '';
  const adjusted = a.adjustments?.batchSize ? `, batch ${a.adjustments.batchSize} x ${a.adjustments.gradientAccumulation}` : '';
  const reason = a.reason ? ` — ${a.reason.split('\n')[0]!.slice(0, 160)}` : '';
  return `attempt ${a.attempt}${where}: ${a.outcome} (${cls}${ckpt}${adjusted})${reason}`;
}

function renderStage(s: StageStatus, etaSeconds: number | undefined): string {
  const state = s.state.padEnd(17);
  const parts: string[] = [state];
  if (s.totalSteps) {
    const frac = Math.min(1, s.step / s.totalSteps);
    const filled = Math.round(frac * BAR_WIDTH);
    parts.push(`[${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}] ${s.step}/${s.totalSteps}`);
  }
  if (s.loss !== null && s.loss !== undefined) parts.push(`loss ${typeof s.loss === 'number' ? s.loss.toFixed(4) : s.loss}`);
  if (s.attempt > 1) parts.push(`attempt ${s.attempt}`);
  if (s.cost && s.state !== 'running' && s.cost.wallSeconds !== null && s.cost.attempts > 0) parts.push(`took ${formatSeconds(s.cost.wallSeconds)}${s.cost.gpuSeconds > 0 ? ` (${(s.cost.gpuSeconds / 3600).toFixed(2)} GPU-h)` : ''}`);
  if (s.resumedFromStep) parts.push(`resumed@${s.resumedFromStep}`);
  if (s.state === 'running' && etaSeconds !== undefined) parts.push(`ETA ${formatSeconds(etaSeconds)}`);
  if (s.baseline) parts.push(`baseline ${s.baseline}`);
  if (s.gate) parts.push(`gate: ${s.gate}`);
  if (s.note) parts.push(s.note);
  if (s.error && (s.state === 'failed' || s.state === 'cancelled')) parts.push(`— ${s.error.split('\n')[0]}`);
  return parts.join('  ');
}

export function formatSeconds(total: number): string {
  const s = Math.max(0, Math.round(total));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : `${m}:${String(sec).padStart(2, '0')}`;
}

/** Estimates time left per stage from the step rate seen between polls. */
export class EtaTracker {
  private first = new Map<string, { step: number; at: number }>();

  update(status: PipelineStatus, now = Date.now()): Map<string, number | undefined> {
    const out = new Map<string, number | undefined>();
    for (const s of status.stages) {
      if (s.state !== 'running' || !s.totalSteps) continue;
      const f = this.first.get(s.id);
      if (!f || s.step < f.step) {
        this.first.set(s.id, { step: s.step, at: now });
        continue;
      }
      const rate = (s.step - f.step) / ((now - f.at) / 1000);
      if (rate > 0) out.set(s.id, (s.totalSteps - s.step) / rate);
    }
    return out;
  }
}
