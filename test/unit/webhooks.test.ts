/**
 * Notifications without a stack: the webhooks file (errors name the file and the field, never a
 * URL), which webhooks hear of an event, the Slack and generic bodies, and the notify activity
 * against a local receiver — what a retry posts again, what counts as final, and that nothing it
 * returns, throws or heartbeats carries a URL.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNotificationActivities, type NotifyFailureDetails } from '../../activities/notify.js';
import { approveCommand, jsonPayload, notificationMessage, slackPayload } from '../../activities/webhook-payloads.js';
import { loadWebhooks, matchingWebhooks, parseWebhooks, redactUrl } from '../../config/webhooks.js';
import type { Notification } from '../../workflows/notification-events.js';
import { startWebhookReceiver, type WebhookReceiver } from '../helpers/webhook-receiver.js';

const FILE = '/etc/refinery/webhooks.json';
const SECRET = 'https://hooks.slack.com/services/T000/B000/SECRET-TOKEN-123';
const parse = (json: unknown) => () => parseWebhooks(typeof json === 'string' ? json : JSON.stringify(json), FILE);

describe('the webhooks file', () => {
  it('fills in the defaults: generic JSON, every event, every pipeline, 10 attempts', () => {
    expect(parseWebhooks(JSON.stringify({ webhooks: [{ url: 'https://example.com/hook' }] }), FILE)).toEqual([
      { url: 'https://example.com/hook', format: 'json', events: ['*'], pipelines: ['*'], maxAttempts: 10 },
    ]);
    expect(parseWebhooks('{"webhooks": []}', FILE)).toEqual([]);
  });

  it('names the file and the field, and never repeats a URL', () => {
    expect(parse({ webhooks: [{ url: 'https://a/x', events: ['run-done'] }] })).toThrow(/^webhooks file \/etc\/refinery\/webhooks\.json: webhooks\[0\]\.events\[0\]: /);
    expect(parse({ webhooks: [{ url: 'https://a/x', format: 'teams' }] })).toThrow(/webhooks\[0\]\.format: /);
    expect(parse({ webhooks: [{ url: 'https://a/x', events: [] }] })).toThrow(/webhooks\[0\]\.events: list at least one event, or "\*" for all/);
    expect(parse({ webhooks: [{ url: 'https://a/x', pipelines: [' '] }] })).toThrow(/webhooks\[0\]\.pipelines\[0\]: an empty name/);
    expect(parse({ webhooks: [{ url: 'https://a/x', maxAttempts: 11 }] })).toThrow(/webhooks\[0\]\.maxAttempts: /);
    expect(parse({ webhooks: [{ url: 'https://a/x', secret: 'x' }] })).toThrow(/webhooks\[0\]: .*secret/);
    expect(parse({ hooks: [] })).toThrow(/webhooks file \/etc\/refinery\/webhooks\.json: /);
    expect(parse({ webhooks: [{ url: 'ftp://files.example.com/SECRET-TOKEN-123' }] })).toThrow(/^webhooks file \/etc\/refinery\/webhooks\.json: webhooks\[0\]\.url: an http\(s\) URL, not ftp:$/);
    expect(parse({ webhooks: [{ url: 'SECRET-TOKEN-123' }] })).toThrow(/webhooks\[0\]\.url: not a URL$/);
    // V8 quotes the text near a JSON error; the message keeps only the position.
    const broken = `{"webhooks": [{"url": "${SECRET}" "format": "slack"}]}`;
    expect(parse(broken)).toThrow(/^webhooks file \/etc\/refinery\/webhooks\.json: not JSON \(at position \d+/);
    for (const bad of [broken, { webhooks: [{ url: `ftp://x/${SECRET}` }] }, { webhooks: [{ url: SECRET, format: 'x' }] }]) {
      expect(() => parse(bad)()).toThrow();
      try {
        parse(bad)();
      } catch (err) {
        expect((err as Error).message).not.toContain('SECRET-TOKEN-123');
      }
    }
  });

  it('says when it cannot read the file', () => {
    expect(() => loadWebhooks('/nonexistent/webhooks.json')).toThrow(/^webhooks file \/nonexistent\/webhooks\.json \(REFINERY_WEBHOOKS\): cannot read it: /);
  });

  it('matches webhooks by event and pipeline, "*" for all', () => {
    const hooks = parseWebhooks(
      JSON.stringify({
        webhooks: [
          { url: 'https://a/1', events: ['run-failed', 'stage-failed'] },
          { url: 'https://a/2', pipelines: ['nightly'] },
          { url: 'https://a/3', events: ['*'], pipelines: ['demo', 'nightly'] },
        ],
      }),
      FILE,
    );
    expect(matchingWebhooks(hooks, 'run-failed', 'demo').map((m) => m.index)).toEqual([0, 2]);
    expect(matchingWebhooks(hooks, 'run-completed', 'nightly').map((m) => m.index)).toEqual([1, 2]);
    expect(matchingWebhooks(hooks, 'approval-waiting', 'other')).toEqual([]);
  });

  it('redacts a URL to its scheme and host', () => {
    expect(redactUrl(SECRET)).toBe('https://hooks.slack.com');
    expect(redactUrl('http://user:pw@127.0.0.1:8080/hooks/SECRET?token=x')).toBe('http://127.0.0.1:8080');
    expect(redactUrl('nope')).toBe('(not a URL)');
  });
});

const base = { runId: 'nightly-20261201', pipeline: 'nightly', at: '2026-12-01T03:00:00.000Z' };
const note = (over: Partial<Notification> & Pick<Notification, 'event'>): Notification => ({ eventId: `${base.runId}:${over.event}:${over.stage ?? '-'}:1`, state: 'completed', ...base, ...over });

describe('the bodies', () => {
  it('says what happened in one line, for every event', () => {
    expect(notificationMessage(note({ event: 'run-completed' }))).toBe('Run nightly-20261201 (nightly) completed');
    expect(notificationMessage(note({ event: 'run-failed', state: 'failed', error: 'stage "sft" failed' }))).toBe('Run nightly-20261201 (nightly) failed: stage "sft" failed');
    expect(notificationMessage(note({ event: 'run-cancelled', state: 'cancelled' }))).toBe('Run nightly-20261201 (nightly) was cancelled');
    expect(notificationMessage(note({ event: 'run-unchanged', state: 'unchanged', unchangedSince: 'nightly-20261130' }))).toBe('Run nightly-20261201 (nightly) trained nothing: inputs unchanged since run nightly-20261130');
    expect(notificationMessage(note({ event: 'stage-failed', stage: 'sft', state: 'failed', error: 'exit 1' }))).toBe('Stage "sft" of run nightly-20261201 (nightly) failed: exit 1');
    expect(notificationMessage(note({ event: 'approval-waiting', stage: 'gguf', state: 'awaiting-approval', approvalDeadline: '2026-12-02T03:00:00.000Z' }))).toBe(
      'Stage "gguf" of run nightly-20261201 (nightly) is waiting for approval until 2026-12-02T03:00:00.000Z',
    );
    const promoted = { model: 'nightly', alias: 'production', target: 's3://refinery/x/output', changed: true };
    expect(notificationMessage(note({ event: 'promoted', stage: 'sft', state: 'promoted', promoted }))).toBe('Run nightly-20261201 (nightly) promoted stage "sft" to nightly@production');
    expect(notificationMessage(note({ event: 'promoted', stage: 'sft', state: 'promoted', promoted: { ...promoted, changed: false } }))).toMatch(/nightly@production already pointed at stage "sft"'s output/);
    expect(notificationMessage(note({ event: 'promote-stopped', stage: 'sft', state: 'stopped', promote: { model: 'nightly', alias: 'production' }, gate: 'stage "eval": failed: accuracy 0.5 < 0.8' }))).toBe(
      'Run nightly-20261201 (nightly) did not promote to nightly@production: stage "eval": failed: accuracy 0.5 < 0.8',
    );
  });

  it('generic JSON: the facts, the message, and the approve command at a gate', () => {
    const n = note({ event: 'approval-waiting', stage: 'gguf', state: 'awaiting-approval', gate: 'passed: accuracy = 1', approvalDeadline: '2026-12-02T03:00:00.000Z' });
    expect(jsonPayload(n)).toEqual({
      version: 1,
      event: 'approval-waiting',
      eventId: 'nightly-20261201:approval-waiting:gguf:1',
      runId: 'nightly-20261201',
      pipeline: 'nightly',
      stage: 'gguf',
      state: 'awaiting-approval',
      message: notificationMessage(n),
      at: '2026-12-01T03:00:00.000Z',
      gate: 'passed: accuracy = 1',
      approveCommand: 'refinery approve nightly-20261201 --stage gguf --by YOU --reason "..."',
      approvalDeadline: '2026-12-02T03:00:00.000Z',
    });
    expect(jsonPayload(note({ event: 'run-completed' }))).toEqual({ version: 1, event: 'run-completed', eventId: 'nightly-20261201:run-completed:-:1', runId: base.runId, pipeline: 'nightly', stage: null, state: 'completed', message: 'Run nightly-20261201 (nightly) completed', at: base.at });
  });

  it('Slack: text for the notification, blocks with run, pipeline, state, stage, error and the approve command; mrkdwn escaped', () => {
    const failed = slackPayload(note({ event: 'stage-failed', stage: 'sft', state: 'failed', error: 'loss <nan> & worse' }));
    expect(failed.text).toBe('Stage "sft" of run nightly-20261201 (nightly) failed: loss &lt;nan&gt; &amp; worse');
    const text = JSON.stringify(failed.blocks);
    for (const part of ['*Run*\\n`nightly-20261201`', '*Pipeline*\\nnightly', '*State*\\nfailed', '*Stage*\\nsft', '*Error*\\n```loss &lt;nan&gt; &amp; worse```', 'event nightly-20261201:stage-failed:sft:1']) {
      expect(text).toContain(part);
    }
    const waiting = slackPayload(note({ event: 'approval-waiting', stage: 'gguf', state: 'awaiting-approval' }));
    expect(JSON.stringify(waiting.blocks)).toContain(JSON.stringify(`*To approve*\n\`\`\`${approveCommand(base.runId, 'gguf')}\`\`\``).slice(1, -1));
    expect(waiting.blocks[0]).toEqual({ type: 'section', text: { type: 'mrkdwn', text: '*Stage "gguf" of run nightly-20261201 (nightly) is waiting for approval*' } });
    const long = slackPayload(note({ event: 'run-failed', state: 'failed', error: 'x'.repeat(10_000) }));
    for (const b of long.blocks) expect(JSON.stringify(b).length).toBeLessThan(3100);
  });
});

describe('the notify activity', () => {
  let receiver: WebhookReceiver;
  let dir: string;
  beforeAll(async () => {
    receiver = await startWebhookReceiver({ '/down/SECRET-TOKEN-123': { status: 503 }, '/gone': { status: 404 }, '/flaky': { failFirst: 1 } });
    dir = await mkdtemp(path.join(tmpdir(), 'refinery-webhooks-'));
  });
  afterAll(async () => {
    await receiver?.close();
  });

  async function activityWith(webhooks: unknown[]): Promise<ReturnType<typeof createNotificationActivities>> {
    const file = path.join(dir, `webhooks-${Math.random().toString(36).slice(2)}.json`);
    await writeFile(file, JSON.stringify({ webhooks }));
    const lines: string[] = [];
    return Object.assign(createNotificationActivities({ webhooksFile: file, log: (l) => lines.push(l), requestTimeoutMs: 2000 }), { lines });
  }

  /** Runs one attempt; returns its result or failure and what it heartbeated. */
  async function attempt(acts: ReturnType<typeof createNotificationActivities>, n: Notification, info: { attempt: number; heartbeatDetails?: unknown }) {
    const env = new MockActivityEnvironment(info);
    let heartbeat: unknown;
    env.on('heartbeat', (d: unknown) => (heartbeat = d));
    try {
      return { result: await env.run(acts.notify, n), heartbeat };
    } catch (err) {
      return { failure: err as ApplicationFailure, heartbeat };
    }
  }

  it('posts to every matching webhook with the event id, sends nothing when none matches', async () => {
    const acts = await activityWith([
      { url: receiver.url('/slack'), format: 'slack', pipelines: ['nightly'] },
      { url: receiver.url('/json'), events: ['run-completed'] },
      { url: receiver.url('/other'), pipelines: ['other'] },
    ]);
    const n = note({ event: 'run-completed', eventId: 'r1:run-completed:-:1' });
    const { result } = await attempt(acts, n, { attempt: 1 });
    expect(result).toEqual({ webhooks: 2, delivered: 2, statusCodes: [200, 200], attempt: 1 });
    expect(receiver.to('/slack').map((r) => [r.eventId, r.event, r.contentType, r.body.text])).toEqual([['r1:run-completed:-:1', 'run-completed', 'application/json', notificationMessage(n)]]);
    expect(receiver.to('/json').map((r) => r.body)).toEqual([jsonPayload(n)]);
    expect(receiver.to('/other')).toEqual([]);
    expect((await attempt(acts, note({ event: 'stage-failed', stage: 's' }), { attempt: 1 })).result).toMatchObject({ webhooks: 1 });
    expect((await attempt(acts, { ...n, event: 'promoted', pipeline: 'third' }, { attempt: 1 })).result).toEqual({ webhooks: 0, delivered: 0, statusCodes: [], attempt: 1 });
  });

  it('retries only what was not delivered; a webhook at its maxAttempts, or one that answers 4xx, is final', async () => {
    const acts = await activityWith([
      { url: receiver.url('/ok-retry') },
      { url: receiver.url('/flaky') },
      { url: receiver.url('/down/SECRET-TOKEN-123'), maxAttempts: 2 },
      { url: receiver.url('/gone') },
    ]);
    const n = note({ event: 'run-failed', eventId: 'r2:run-failed:-:1' });
    const first = await attempt(acts, n, { attempt: 1 });
    expect(first.failure).toBeInstanceOf(ApplicationFailure);
    expect(first.failure!.type).toBe('NotificationFailed');
    expect(first.failure!.nonRetryable).toBe(false);
    expect(first.failure!.message).toBe('3 of 4 webhook(s) not delivered: webhook 2 (json): HTTP 500; webhook 3 (json): HTTP 503; webhook 4 (json): HTTP 404');
    expect(first.failure!.details![0]).toEqual({ webhooks: 4, delivered: 1, statusCodes: [200, 500, 503, 404], attempt: 1, problems: expect.any(Array) } satisfies NotifyFailureDetails);

    const second = await attempt(acts, n, { attempt: 2, heartbeatDetails: first.heartbeat });
    // The 503 webhook's own attempts (2) are spent and the 404 is final: no retry is left.
    expect(second.failure!.nonRetryable).toBe(true);
    expect(second.failure!.details![0]).toMatchObject({ webhooks: 4, delivered: 2, statusCodes: [200, 200, 503, 404], attempt: 2 });
    expect(receiver.to('/ok-retry')).toHaveLength(1);
    expect(receiver.to('/flaky').map((r) => r.status)).toEqual([500, 200]);
    expect(receiver.to('/down/SECRET-TOKEN-123')).toHaveLength(2);
    expect(receiver.to('/gone')).toHaveLength(1);
    expect(new Set(receiver.requests.filter((r) => r.body.eventId === n.eventId).map((r) => r.eventId))).toEqual(new Set([n.eventId]));

    // Nothing that leaves the activity carries a URL; the log shows scheme and host only.
    const out = JSON.stringify([first.failure!.message, first.failure!.details, first.heartbeat, second.failure!.message, second.failure!.details, second.heartbeat]);
    expect(out).not.toContain('SECRET-TOKEN-123');
    expect(out).not.toContain('127.0.0.1');
    const lines = (acts as unknown as { lines: string[] }).lines;
    expect(lines.join('\n')).not.toContain('SECRET-TOKEN-123');
    expect(lines.some((l) => l.includes(`webhook 3 (json, ${redactUrl(receiver.url('/'))}) attempt 2: HTTP 503`))).toBe(true);
  });

  it('a receiver that does not answer, and a broken file: failures without the URL', async () => {
    const acts = await activityWith([{ url: 'http://127.0.0.1:1/hooks/SECRET-TOKEN-123' }]);
    const { failure } = await attempt(acts, note({ event: 'run-completed' }), { attempt: 1 });
    expect(failure!.message).toMatch(/^1 of 1 webhook\(s\) not delivered: webhook 1 \(json\): no answer \(/);
    expect(failure!.message).not.toContain('SECRET');

    const file = path.join(dir, 'broken.json');
    await writeFile(file, JSON.stringify({ webhooks: [{ url: `${SECRET}`, format: 'email' }] }));
    const broken = createNotificationActivities({ webhooksFile: file, log: () => undefined });
    const b = await attempt(broken, note({ event: 'run-completed' }), { attempt: 1 });
    expect(b.failure!.type).toBe('WebhooksFileError');
    expect(b.failure!.nonRetryable).toBe(true);
    expect(b.failure!.message).toMatch(/webhooks\[0\]\.format: /);
    expect(b.failure!.message).not.toContain('SECRET');
    // No file configured: nothing to send.
    expect((await attempt(createNotificationActivities({ webhooksFile: undefined }), note({ event: 'run-completed' }), { attempt: 1 })).result).toMatchObject({ webhooks: 0 });
  });
});
