/** Metric gates: pure, so the workflow and the tests share them. */
export interface MetricBound {
  metric: string;
  min?: number;
  max?: number;
}

/**
 * Metrics an eval stage reports only when it scored a baseline beside the candidate
 * (jobs/refinery_jobs/eval.py): with `baseline.if_missing: pass` and no baseline yet, bounds on
 * them pass (a first run has nothing to be compared with).
 */
export const RELATIVE_METRICS: ReadonlySet<string> = new Set(['win_rate', 'loss_delta', 'perplexity_ratio', 'reward_delta', 'length_ratio', 'kl']);
export const isRelativeMetric = (name: string) => RELATIVE_METRICS.has(name) || name.startsWith('baseline_');

export function evaluateMetricGate(bounds: MetricBound[], metrics: Record<string, number | null>, options: { withoutBaseline?: boolean } = {}): { passed: boolean; reason: string } {
  const checks: string[] = [];
  for (const b of bounds) {
    // Own keys only: a metric named "constructor" or "toString" must not find Object.prototype's.
    const value = Object.hasOwn(metrics, b.metric) ? metrics[b.metric] : undefined;
    if ((value === undefined || value === null) && options.withoutBaseline && isRelativeMetric(b.metric)) {
      checks.push(`${b.metric}: no baseline yet`);
      continue;
    }
    if (value === undefined || value === null) return { passed: false, reason: `metric "${b.metric}" was not reported` };
    if (b.min !== undefined && value < b.min) return { passed: false, reason: `${b.metric} = ${fmt(value)} is below ${b.min}` };
    if (b.max !== undefined && value > b.max) return { passed: false, reason: `${b.metric} = ${fmt(value)} is above ${b.max}` };
    checks.push(`${b.metric} = ${fmt(value)}`);
  }
  return { passed: true, reason: checks.length ? `passed: ${checks.join(', ')}` : 'passed' };
}

function fmt(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}
