/**
 * Watches a job's logged losses (and, where configured, its KL) for divergence: a NaN or infinite
 * loss always; a loss above `lossSpikeFactor` × the median of the last `window` losses, or a `kl`
 * metric above `maxKl`, when the stage asks. It names the first bad step and the last good one
 * before it: a checkpoint is known good only if a loss logged after it was (attempt-policy.ts).
 */
import type { Reading } from '../workflows/types.js';

export interface DivergenceSettings {
  lossSpikeFactor?: number;
  window: number;
  maxKl?: number;
}

export interface Divergence {
  reason: string;
  firstBadStep: number;
  lastGoodStep: number | null;
}

function isFiniteReading(v: Reading | null | undefined): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

export class DivergenceWatch {
  private readonly recent: number[] = [];
  private lastGood: number | null = null;
  diverged: Divergence | undefined;

  constructor(private readonly settings: DivergenceSettings) {}

  /** One logged step; returns the divergence when this step is the one that shows it. */
  observe(step: number, loss: Reading | null | undefined, metrics: Record<string, Reading | null> = {}): Divergence | undefined {
    if (this.diverged) return undefined;
    const bad = this.check(loss, metrics);
    if (bad) {
      this.diverged = { reason: bad, firstBadStep: step, lastGoodStep: this.lastGood };
      return this.diverged;
    }
    if (isFiniteReading(loss)) {
      this.recent.push(loss);
      if (this.recent.length > this.settings.window) this.recent.shift();
      this.lastGood = step;
    }
    return undefined;
  }

  private check(loss: Reading | null | undefined, metrics: Record<string, Reading | null>): string | undefined {
    if (typeof loss === 'string') return `loss is ${loss}`;
    const kl = metrics.kl ?? metrics['objective/kl'];
    if (typeof kl === 'string') return `kl is ${kl}`;
    const { lossSpikeFactor, maxKl, window } = this.settings;
    if (maxKl !== undefined && typeof kl === 'number' && kl > maxKl) return `kl ${kl.toPrecision(4)} is above divergence.max_kl ${maxKl}`;
    if (lossSpikeFactor !== undefined && typeof loss === 'number' && this.recent.length >= window) {
      const median = medianOf(this.recent);
      if (median > 0 && loss > lossSpikeFactor * median) {
        return `loss ${loss.toPrecision(4)} is above ${lossSpikeFactor} x the median ${median.toPrecision(4)} of the last ${window} logged losses (divergence.loss_spike_factor)`;
      }
    }
    return undefined;
  }
}

function medianOf(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
