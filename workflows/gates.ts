/** Metric gates: pure, so the workflow and the tests share them. */
export interface MetricBound {
  metric: string;
  min?: number;
  max?: number;
}

export function evaluateMetricGate(bounds: MetricBound[], metrics: Record<string, number | null>): { passed: boolean; reason: string } {
  const checks: string[] = [];
  for (const b of bounds) {
    // Own keys only: a metric named "constructor" or "toString" must not find Object.prototype's.
    const value = Object.hasOwn(metrics, b.metric) ? metrics[b.metric] : undefined;
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
