/**
 * Scheduled retraining, the pure parts: which object an s3:// dataset prefix resolves to, the run
 * fingerprint that decides "unchanged", and the checks on `schedule create` options.
 */
import { describe, expect, it } from 'vitest';
import { isDatasetPrefix, pickNewestObject, runFingerprint, type FingerprintInputs } from '../../activities/scheduled-inputs.js';
import { checkCreateOptions, overlapPolicy, scheduleTiming, validateCron } from '../../client/commands/schedule.js';
import { layout, segment } from '../../storage/layout.js';

const at = (iso: string) => new Date(iso);

describe('newest object under a dataset prefix', () => {
  it('only s3:// paths ending in "/" are prefixes', () => {
    expect(isDatasetPrefix('s3://b/data/')).toBe(true);
    expect(isDatasetPrefix('s3://b/data/sft.jsonl')).toBe(false);
    expect(isDatasetPrefix('/local/data/')).toBe(false);
  });

  it('picks the latest LastModified, whatever the listing order', () => {
    const objects = [
      { key: 'd/c.jsonl', size: 1, lastModified: at('2026-11-02T02:00:00Z') },
      { key: 'd/a.jsonl', size: 1, lastModified: at('2026-11-03T02:00:00Z') },
      { key: 'd/b.jsonl', size: 1, lastModified: at('2026-11-01T02:00:00Z') },
    ];
    expect(pickNewestObject(objects)?.key).toBe('d/a.jsonl');
    expect(pickNewestObject([...objects].reverse())?.key).toBe('d/a.jsonl');
  });

  it('breaks a LastModified tie by the greater key, independent of order', () => {
    const t = at('2026-11-03T02:00:00Z');
    const objects = [
      { key: 'd/day-1.jsonl', size: 1, lastModified: t },
      { key: 'd/day-2.jsonl', size: 1, lastModified: t },
      { key: 'd/day-10.jsonl', size: 1, lastModified: t },
    ];
    expect(pickNewestObject(objects)?.key).toBe('d/day-2.jsonl');
    expect(pickNewestObject([...objects].reverse())?.key).toBe('d/day-2.jsonl');
  });

  it('looks into sub-folders but ignores folder markers, hidden and marker files', () => {
    const objects = [
      { key: 'd/2026-11-01/data.jsonl', size: 1, lastModified: at('2026-11-01T00:00:00Z') },
      { key: 'd/2026-11-02/', size: 0, lastModified: at('2026-11-05T00:00:00Z') },
      { key: 'd/2026-11-02/_SUCCESS', size: 0, lastModified: at('2026-11-05T00:00:00Z') },
      { key: 'd/.upload.part', size: 9, lastModified: at('2026-11-05T00:00:00Z') },
    ];
    expect(pickNewestObject(objects)?.key).toBe('d/2026-11-01/data.jsonl');
  });

  it('is undefined for an empty prefix (prepareRun then fails with an input error)', () => {
    expect(pickNewestObject([])).toBeUndefined();
    expect(pickNewestObject([{ key: 'd/', size: 0 }])).toBeUndefined();
  });
});

describe('run fingerprint', () => {
  const base: FingerprintInputs = { specSha256: 's'.repeat(64), baseModelManifestSha256: 'm'.repeat(64), datasetSha256: { chats: 'a', prefs: 'b' }, jobsVersion: 'jobs-1' };

  it('is a sha256, stable, and independent of dataset order', () => {
    const fp = runFingerprint(base);
    expect(fp).toMatch(/^[0-9a-f]{64}$/);
    expect(runFingerprint({ ...base })).toBe(fp);
    expect(runFingerprint({ ...base, datasetSha256: { prefs: 'b', chats: 'a' } })).toBe(fp);
  });

  it('changes with the spec, the base model, any dataset and the job code', () => {
    const fp = runFingerprint(base);
    const variants = [
      { ...base, specSha256: 't'.repeat(64) },
      { ...base, baseModelManifestSha256: 'n'.repeat(64) },
      { ...base, datasetSha256: { chats: 'a2', prefs: 'b' } },
      { ...base, datasetSha256: { chats: 'a' } },
      { ...base, jobsVersion: 'jobs-2' },
    ];
    const fps = variants.map(runFingerprint);
    for (const v of fps) expect(v).not.toBe(fp);
    expect(new Set(fps).size).toBe(fps.length);
  });
});

describe('schedule create options', () => {
  it.each(['0 2 * * *', '*/15 1-5 * JAN-MAR mon-fri', '0 0 1,15 * 0', '30 3 * * 1-5/2', '@daily', '@hourly'])('accepts cron %j', (cron) => {
    expect(() => validateCron(cron)).not.toThrow();
  });

  it.each([
    ['0 2 * *', /expected 5 fields, found 4/],
    ['0 25 * * *', /hour "25" is not in 0-23/],
    ['60 2 * * *', /minute "60" is not in 0-59/],
    ['0 2 0 * *', /day of month "0" is not in 1-31/],
    ['0 2 * FOO *', /month "FOO" is not in 1-12/],
    ['0 5-2 * * *', /range "5-2" runs backwards/],
    ['*/0 2 * * *', /step "0" must be at least 1/],
    ['@nightly', /unknown macro/],
  ])('refuses cron %j in one line naming the field', (cron, message) => {
    expect(() => validateCron(cron)).toThrow(message);
  });

  it('turns --cron/--timezone or --every into a schedule spec, and wants exactly one of them', () => {
    expect(scheduleTiming({ cron: ' 0  2 * * * ', timezone: 'Europe/Berlin' })).toEqual({ spec: { cronExpressions: ['0 2 * * *'], timezone: 'Europe/Berlin' }, when: 'cron 0 2 * * * (Europe/Berlin)' });
    expect(scheduleTiming({ cron: '0 2 * * *' }).spec.timezone).toBe('UTC');
    expect(scheduleTiming({ every: '2s' })).toEqual({ spec: { intervals: [{ every: 2000 }] }, when: 'every 2s' });
    expect(() => scheduleTiming({})).toThrow(/either --cron or --every/);
    expect(() => scheduleTiming({ cron: '0 2 * * *', every: '1h' })).toThrow(/either --cron or --every/);
    expect(() => scheduleTiming({ every: 'often' })).toThrow(/--every "often" is not a duration/);
    expect(() => scheduleTiming({ every: '500ms' })).toThrow(/shorter than a second/);
    expect(() => scheduleTiming({ cron: '0 2 * * *', timezone: 'Mars/Olympus' })).toThrow(/not a known time zone/);
  });

  it('knows three overlap policies, skip by default', () => {
    expect(overlapPolicy()).toBe('SKIP');
    expect(overlapPolicy('buffer-one')).toBe('BUFFER_ONE');
    expect(overlapPolicy('cancel-other')).toBe('CANCEL_OTHER');
    expect(() => overlapPolicy('allow-all')).toThrow(/not one of skip, buffer-one, cancel-other/);
    expect(() => overlapPolicy('toString')).toThrow(/not one of/);
    expect(() => checkCreateOptions({ every: '1h', catchupWindow: '5s' })).toThrow(/shorter than 10s/);
  });
});

describe('storage layout for scheduled runs', () => {
  it('takes the workflow ids Temporal gives scheduled runs as run ids', () => {
    expect(segment('nightly-2026-11-29T02:00:00Z')).toBe('nightly-2026-11-29T02:00:00Z');
    expect(layout.run('p', 'nightly-2026-11-29T02:00:00Z')).toBe('p/runs/nightly-2026-11-29T02:00:00Z');
    expect(layout.lastSuccess('p', 'demo-rlhf')).toBe('p/pipelines/demo-rlhf/last-success.json');
    expect(() => layout.lastSuccess('p', '../x')).toThrow(/unsafe/);
  });
});
