// The TypeScript side of the job contract (activities/job-contract.ts) against jobs/CONTRACT.md:
// every documented event parses, anything else is an Error, and exit codes map as documented.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { classifyExit, EVENTS_FD, EXIT, JOB_CONTRACT_VERSION, JobEvent, parseJobEvent } from '../../activities/job-contract.js';

const CONTRACT = readFileSync(new URL('../../jobs/CONTRACT.md', import.meta.url), 'utf8');

/** The rows of the markdown table that follows `heading`. */
function tableAfter(heading: string): string[][] {
  const start = CONTRACT.indexOf(heading);
  expect(start, heading).toBeGreaterThanOrEqual(0);
  const rows: string[][] = [];
  for (const line of CONTRACT.slice(start).split('\n').slice(1)) {
    if (line.startsWith('|')) rows.push(line.split('|').slice(1, -1).map((c) => c.trim()));
    else if (rows.length > 0) break;
  }
  return rows.slice(2); // header and separator
}

describe('CONTRACT.md and the code agree', () => {
  it('version and events channel', () => {
    expect(CONTRACT).toMatch(new RegExp(`^# The job contract, version ${JOB_CONTRACT_VERSION}$`, 'm'));
    expect(CONTRACT).toContain(`(an integer, \`${EVENTS_FD}\`)`);
  });

  it('the documented events are exactly the events the schema knows', () => {
    const documented = tableAfter('## 3. Events').map((r) => r[0]!.replace(/`/g, ''));
    const known = JobEvent.options.map((o) => o.shape.event.value);
    expect(documented.sort()).toEqual([...known].sort());
  });

  it('the documented exit codes are the ones classifyExit knows', () => {
    const rows = tableAfter('## 5. Exit codes');
    const codes = Object.fromEntries(rows.filter((r) => /^\d+$/.test(r[0]!)).map((r) => [Number(r[0]), r[2]]));
    expect(codes).toEqual({ [EXIT.ok]: '—', [EXIT.config]: 'never', [EXIT.data]: 'never', [EXIT.unsupported]: 'never', [EXIT.oom]: expect.stringMatching(/half the per-device batch/) });
  });
});

describe('parseJobEvent accepts every documented event', () => {
  it.each([
    ['started', { event: 'started', total_steps: 40, resumed_from_step: null, device: 'cuda:0' }],
    ['started, resumed, unknown total', { event: 'started', total_steps: null, resumed_from_step: 20, device: 'cpu' }],
    ['started, bare', { event: 'started' }],
    ['progress', { event: 'progress', step: 10, total_steps: 40, loss: 1.25, metrics: { lr: 0.0001, grad_norm: null } }],
    ['progress, no loss', { event: 'progress', step: 0, total_steps: 40, loss: null }],
    ['checkpoint', { event: 'checkpoint', step: 20, path: '/scratch/checkpoints/checkpoint-20' }],
    ['metrics', { event: 'metrics', metrics: { eval_loss: 0.5, reward_margin: null }, step: 40 }],
    ['metrics, no step', { event: 'metrics', metrics: {} }],
    ['done', { event: 'done', metrics: { train_loss: 0.9 } }],
    ['done, no metrics', { event: 'done' }],
    ['error', { event: 'error', category: 'data', message: 'bad line', file: 'train.jsonl', line: 3, field: 'messages[0].role' }],
    ['error, runtime', { event: 'error', category: 'runtime', message: 'CUDA out of memory' }],
    ['error, config', { event: 'error', category: 'config', message: 'no such field' }],
    ['error, unsupported', { event: 'error', category: 'unsupported', message: 'qlora needs CUDA' }],
  ])('%s', (_name, event) => {
    const parsed = parseJobEvent(JSON.stringify(event));
    expect(parsed).not.toBeInstanceOf(Error);
    expect(parsed).toEqual(event);
  });

  it('extra fields are tolerated (forward compatible) and stripped', () => {
    expect(parseJobEvent('{"event": "done", "metrics": {}, "elapsed_s": 12}')).toEqual({ event: 'done', metrics: {} });
  });

  it('surrounding whitespace and a trailing CR are fine', () => {
    expect(parseJobEvent('  {"event": "done"}\r')).toEqual({ event: 'done' });
  });
});

describe('parseJobEvent refuses what breaks the contract', () => {
  it.each([
    ['not JSON', 'Epoch 1/3: 100%|#####|', /not JSON/],
    ['truncated JSON', '{"event": "progress", "step": 1', /not JSON/],
    ['NaN loss (Python json.dumps default)', '{"event": "progress", "step": 1, "loss": NaN}', /not JSON/],
    ['a JSON array', '[1, 2]', /does not follow the contract/],
    ['JSON null', 'null', /does not follow the contract/],
    ['a number', '42', /does not follow the contract/],
    ['no event field', '{"step": 1}', /does not follow the contract/],
    ['unknown event', '{"event": "finished"}', /does not follow the contract/],
    ['progress without step', '{"event": "progress", "total_steps": 40}', /does not follow the contract/],
    ['negative step', '{"event": "progress", "step": -1}', /does not follow the contract/],
    ['fractional step', '{"event": "progress", "step": 1.5}', /does not follow the contract/],
    ['string loss', '{"event": "progress", "step": 1, "loss": "0.5"}', /does not follow the contract/],
    ['checkpoint without path', '{"event": "checkpoint", "step": 1}', /does not follow the contract/],
    ['checkpoint with empty path', '{"event": "checkpoint", "step": 1, "path": ""}', /does not follow the contract/],
    ['metrics that are not numbers', '{"event": "metrics", "metrics": {"acc": "high"}}', /does not follow the contract/],
    ['metrics missing', '{"event": "metrics"}', /does not follow the contract/],
    ['unknown error category', '{"event": "error", "category": "disk", "message": "x"}', /does not follow the contract/],
    ['error without message', '{"event": "error", "category": "data"}', /does not follow the contract/],
  ])('%s', (_name, line, message) => {
    const parsed = parseJobEvent(line);
    expect(parsed).toBeInstanceOf(Error);
    expect((parsed as Error).message).toMatch(message);
    expect((parsed as Error).message).toContain(line.slice(0, 50));
  });

  it('quotes at most 200 characters of the offending line', () => {
    const line = `not json ${'x'.repeat(10_000)}`;
    const parsed = parseJobEvent(line) as Error;
    expect(parsed).toBeInstanceOf(Error);
    expect(parsed.message.length).toBeLessThan(300);
    const bad = parseJobEvent(JSON.stringify({ event: 'nope', pad: 'y'.repeat(10_000) })) as Error;
    expect(bad).toBeInstanceOf(Error);
    expect(bad.message.length).toBeLessThan(400);
  });

  it.each(['', ' ', '\t', '\r', '   \r'])('a blank line (%j) is ignored', (line) => {
    expect(parseJobEvent(line)).toBeUndefined();
  });
});

describe('classifyExit', () => {
  it.each([
    [0, true, 'ok'],
    [0, false, 'crash'],
    [2, false, 'config'],
    [2, true, 'config'],
    [3, false, 'data'],
    [4, false, 'unsupported'],
    [1, false, 'crash'],
    [1, true, 'crash'],
    [137, false, 'crash'],
    [139, false, 'crash'],
    [-1, false, 'crash'],
    [undefined, false, 'crash'],
    [undefined, true, 'crash'],
  ] as const)('exit %s, done=%s → %s', (code, sawDone, expected) => {
    expect(classifyExit(code, sawDone)).toBe(expected);
  });

  it('EXIT matches the documented codes', () => {
    expect(EXIT).toEqual({ ok: 0, config: 2, data: 3, unsupported: 4, oom: 5 });
  });
});
