/**
 * What a run cost: per stage and in total, wall time, attempts, the attempts' own time and GPU
 * time held (GPUs × attempt time). Pure, from the run's status: computed when the run ends, kept in
 * status.json and in the trail's `run-cost` event. Attempt times come from each attempt's own
 * records (first record to `attempt-ended`; a lost attempt to its last record).
 */
import type { Cost, PipelineStatus, StageStatus } from './types.js';

const seconds = (from: string | null | undefined, to: string | null | undefined): number | null => {
  if (!from || !to) return null;
  const d = (Date.parse(to) - Date.parse(from)) / 1000;
  return Number.isFinite(d) && d >= 0 ? d : null;
};

const round = (x: number) => Math.round(x * 1000) / 1000;

export function stageCost(s: StageStatus): Cost {
  const ran = (s.attempts ?? []).filter((a) => a.outcome !== 'reused');
  const attemptSeconds = ran.reduce((sum, a) => sum + (seconds(a.startedAt, a.endedAt) ?? 0), 0);
  const wall = seconds(s.startedAt, s.endedAt);
  return { wallSeconds: wall === null ? null : round(wall), attempts: ran.length, attemptSeconds: round(attemptSeconds), gpuSeconds: round((s.gpus ?? 0) * attemptSeconds) };
}

/** Sets each stage's cost and the run's (its wall time up to `now`). */
export function applyCosts(status: PipelineStatus, now: Date): void {
  for (const s of status.stages) s.cost = stageCost(s);
  const costs = status.stages.map((s) => s.cost!);
  const wall = seconds(status.startedAt, now.toISOString());
  status.cost = {
    wallSeconds: wall === null ? null : round(wall),
    attempts: costs.reduce((n, c) => n + c.attempts, 0),
    attemptSeconds: round(costs.reduce((n, c) => n + c.attemptSeconds, 0)),
    gpuSeconds: round(costs.reduce((n, c) => n + c.gpuSeconds, 0)),
  };
}
