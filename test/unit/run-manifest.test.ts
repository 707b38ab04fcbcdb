/**
 * run.json's one schema (storage/run-manifest.ts): today's manifest and one written before nightly
 * schedules both parse; the plan passes through whole; a manifest missing its identity does not.
 */
import { describe, expect, it } from 'vitest';
import { RunManifest } from '../../storage/run-manifest.js';

const ref = { prefix: 'refinery/datasets/ab', uri: 's3://refinery/refinery/datasets/ab', manifestSha256: 'c'.repeat(64) };
const base = { runId: 'r1', pipeline: 'demo', requestedBy: 'alice', startedAt: '2026-11-29T10:00:00.000Z', specSha256: 'a'.repeat(64), resumeFrom: null };

describe('run.json schema', () => {
  it("parses today's manifest and keeps every field of the plan", () => {
    const plan = { name: 'demo', specSha256: 'a'.repeat(64), baseModel: '/m', storage: { prefix: 'refinery' }, stages: [{ id: 'sft', kind: 'sft', deps: [], hyper: { lr: 1e-4 }, gpus: 1 }] };
    const today = {
      ...base,
      scheduleId: null,
      fingerprint: 'f'.repeat(64),
      baseModel: { source: '/m', ...ref },
      datasets: { chats: { path: 'demo/chats.jsonl', ...ref, sha256: 'd'.repeat(64), source: '/abs/demo/chats.jsonl' } },
      versions: { code: 'abc', jobs: 'def', node: 'v22' },
      controlHost: 'host',
      plan,
    };
    const parsed = RunManifest.parse(today);
    expect(parsed.plan).toEqual(plan);
    expect(parsed.datasets?.chats?.sha256).toBe('d'.repeat(64));
  });

  it('reads a manifest from before scheduled runs (no scheduleId, fingerprint, dataset path)', () => {
    const old = { ...base, baseModel: { source: '/m', ...ref }, datasets: { chats: { source: 'demo/chats.jsonl', ...ref, sha256: 'd'.repeat(64) } }, plan: { name: 'demo', stages: [{ id: 'sft', kind: 'sft' }] } };
    expect(RunManifest.safeParse(old).success).toBe(true);
    expect(RunManifest.safeParse(base).success).toBe(true);
  });

  it('rejects a manifest without its identity or with fields of the wrong type', () => {
    const { runId: _runId, ...noId } = base;
    expect(RunManifest.safeParse(noId).success).toBe(false);
    expect(RunManifest.safeParse({ ...base, requestedBy: 42 }).success).toBe(false);
    expect(RunManifest.safeParse({ ...base, datasets: { chats: { source: 'x' } } }).success).toBe(false);
  });
});
