/**
 * `run --watch` off a terminal (CI logs, nohup): instead of the whole table every second, one line
 * per change worth reading — the run's and each stage's state, every few percent of progress, a new
 * attempt, a gate or a note. Pure: the caller polls and writes the lines.
 */
import type { PipelineStatus, StageStatus } from '../workflows/types.js';
import { formatSeconds } from './render.js';

export interface ChangeLinesOptions {
  /** A progress line each time a running stage crosses another multiple of this many percent. */
  percentStep?: number;
}

interface SeenStage {
  state: string;
  attempt: number;
  /** The last multiple of percentStep reported (-1: none yet). */
  percent: number;
  remark: string;
}

const firstLine = (s: string) => s.split('\n')[0]!;

/** Turns successive statuses of one run into the lines that say what changed. */
export class ChangeLines {
  private readonly percentStep: number;
  private runLine = '';
  private readonly stages = new Map<string, SeenStage>();

  constructor(options: ChangeLinesOptions = {}) {
    this.percentStep = options.percentStep ?? 5;
  }

  update(status: PipelineStatus, etas: Map<string, number | undefined> = new Map()): string[] {
    const lines: string[] = [];
    const runLine = `run ${status.runId} (${status.pipeline}): ${status.state}${status.error ? ` — ${firstLine(status.error)}` : ''}`;
    if (runLine !== this.runLine) lines.push(runLine);
    this.runLine = runLine;
    for (const s of status.stages) lines.push(...this.stageLines(s, etas.get(s.id)));
    return lines;
  }

  private stageLines(s: StageStatus, etaSeconds: number | undefined): string[] {
    const seen = this.stages.get(s.id);
    const percent = s.totalSteps ? Math.floor((Math.min(1, s.step / s.totalSteps) * 100) / this.percentStep) * this.percentStep : -1;
    const remark = [s.gate && `gate: ${s.gate}`, s.baseline && `baseline ${s.baseline}`, s.note, s.error && firstLine(s.error)].filter(Boolean).join('  ');
    this.stages.set(s.id, { state: s.state, attempt: s.attempt, percent, remark });
    const lines: string[] = [];
    if (!seen || seen.state !== s.state) {
      // A new state says everything at once: where it got to, the attempt, why it stopped.
      lines.push(`${s.id}: ${s.state}${progress(s)}${s.attempt > 1 ? `  attempt ${s.attempt}` : ''}${remark ? `  ${remark}` : ''}`);
      return lines;
    }
    if (s.attempt !== seen.attempt) lines.push(`${s.id}: attempt ${s.attempt}${s.resumedFromStep ? ` (resumed@${s.resumedFromStep})` : ''}${s.error ? ` — ${firstLine(s.error)}` : ''}`);
    else if (remark !== seen.remark && remark) lines.push(`${s.id}: ${remark}`);
    if (s.state === 'running' && percent > seen.percent && percent > 0) {
      lines.push(`${s.id}: ${percent}%${progress(s)}${etaSeconds !== undefined && percent < 100 ? `  ETA ${formatSeconds(etaSeconds)}` : ''}`);
    }
    return lines;
  }
}

function progress(s: StageStatus): string {
  const steps = s.totalSteps ? `  ${s.step}/${s.totalSteps}` : '';
  const loss = s.loss !== null && s.loss !== undefined ? `  loss ${typeof s.loss === 'number' ? s.loss.toFixed(4) : s.loss}` : '';
  return steps + loss;
}
