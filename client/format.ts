/** Number and metric formatting shared by `audit` (one line per event) and `report` (metrics tables). */

/** The metrics a reader looks at first (losses, rewards, accuracy), then the rest, `n` in all. */
export function keyMetrics(metrics: Record<string, number | null>, n: number): [string, number | null][] {
  const rank = (k: string) => {
    const i = [/^final_loss$/, /^train_loss$/, /^eval_loss$/, /reward_mean$/, /accuracy$/, /loss$/, /reward/, /kl$/, /match$/].findIndex((re) => re.test(k));
    return i < 0 ? 99 : i;
  };
  return Object.entries(metrics)
    .sort(([a], [b]) => rank(a) - rank(b))
    .slice(0, n);
}

export function formatNumber(v: number | null | undefined): string {
  if (v === null || v === undefined) return '—';
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(3) : String(Number(v.toPrecision(5)));
}

/** The first 12 characters of a hash, for one-line output. */
export const shortHash = (h: unknown): string => (typeof h === 'string' ? h.slice(0, 12) : String(h));
