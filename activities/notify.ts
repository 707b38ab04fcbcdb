/**
 * notify, on the control worker: posts one notification to every webhook of the worker's webhooks
 * file (REFINERY_WEBHOOKS, config/webhooks.ts) that hears of its event and pipeline. The file is
 * read on every call, so a changed file counts at once without a restart. URLs stay here: what
 * this activity returns or fails with (both reach the history) names webhooks by their place in
 * the file, and logs show scheme and host only.
 *
 * Retried by Temporal (workflows/activities.ts). A webhook that already answered 2xx is not posted
 * to again: each attempt heartbeats what every webhook answered, and the next attempt reads it
 * back. Every request carries the same event id (body and X-Refinery-Event-Id), so a receiver can
 * drop the duplicate a lost answer still causes.
 */
import { createHash } from 'node:crypto';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { loadWebhooks, matchingWebhooks, redactUrl, type Webhook } from '../config/webhooks.js';
import type { Notification, NotifyResult } from '../workflows/notification-events.js';
import { jsonPayload, slackPayload } from './webhook-payloads.js';

export interface NotificationDeps {
  webhooksFile: string | undefined;
  /** Where each delivery is logged (URLs redacted). */
  log?: (line: string) => void;
  /** How long one request may take (default 10 s). */
  requestTimeoutMs?: number;
}

/** What a webhook answered so far, carried from attempt to attempt in heartbeat details. */
interface Answer {
  status: number | null;
  /** 2xx, or a failure a retry cannot fix (a 4xx other than 408/425/429, a redirect, its own attempts spent). */
  final: boolean;
  delivered: boolean;
  problem?: string;
}
type Answers = Record<string, Answer>;

/** What the failure carries (details[0]) for the workflow's `notification-failed` audit event. */
export interface NotifyFailureDetails extends NotifyResult {
  problems: string[];
}

export function createNotificationActivities(deps: NotificationDeps) {
  const log = deps.log ?? ((line: string) => console.log(line));
  const timeoutMs = deps.requestTimeoutMs ?? 10_000;
  return {
    async notify(n: Notification): Promise<NotifyResult> {
      const ctx = Context.current();
      const attempt = ctx.info.attempt;
      let webhooks: Webhook[];
      try {
        webhooks = deps.webhooksFile ? loadWebhooks(deps.webhooksFile) : [];
      } catch (err) {
        // Names the file and the field, never a URL; fixing the file needs a new event.
        throw ApplicationFailure.nonRetryable((err as Error).message, 'WebhooksFileError');
      }
      const matched = matchingWebhooks(webhooks, n.event, n.pipeline);
      if (matched.length === 0) return { webhooks: 0, delivered: 0, statusCodes: [], attempt };

      const before = answersOf(ctx.info.heartbeatDetails);
      const answers: Answers = {};
      await Promise.all(
        matched.map(async ({ index, webhook }) => {
          const key = webhookKey(index, webhook);
          const earlier = before[key];
          if (earlier?.final) {
            answers[key] = earlier;
            return;
          }
          const answer = await post(webhook, n, timeoutMs);
          if (!answer.delivered && attempt >= webhook.maxAttempts) answer.final = true;
          answers[key] = answer;
          log(`[notify] ${n.event} ${n.eventId}: webhook ${index + 1} (${webhook.format}, ${redactUrl(webhook.url)}) attempt ${attempt}: ${answer.delivered ? `delivered, HTTP ${answer.status}` : answer.problem}`);
        }),
      );
      const ordered = matched.map(({ index, webhook }) => ({ index, webhook, answer: answers[webhookKey(index, webhook)]! }));
      const result: NotifyResult = {
        webhooks: matched.length,
        delivered: ordered.filter((o) => o.answer.delivered).length,
        statusCodes: ordered.map((o) => o.answer.status),
        attempt,
      };
      if (result.delivered === result.webhooks) return result;

      ctx.heartbeat({ answers } satisfies { answers: Answers });
      const failed = ordered.filter((o) => !o.answer.delivered);
      const problems = failed.map((o) => `webhook ${o.index + 1} (${o.webhook.format}): ${o.answer.problem}`);
      const details: NotifyFailureDetails = { ...result, problems };
      throw ApplicationFailure.create({
        message: `${failed.length} of ${result.webhooks} webhook(s) not delivered: ${problems.join('; ')}`,
        type: 'NotificationFailed',
        nonRetryable: failed.every((o) => o.answer.final),
        details: [details],
      });
    },
  };
}

/**
 * A webhook's identity across attempts: its place and a short hash of its URL (so an edited file
 * does not mark another webhook delivered). Heartbeat details can reach the history (a timeout's
 * failure carries them): a hash, never the URL.
 */
function webhookKey(index: number, webhook: Webhook): string {
  return `${index}:${createHash('sha256').update(webhook.url).digest('hex').slice(0, 16)}`;
}

function answersOf(details: unknown): Answers {
  const answers = (details as { answers?: unknown } | undefined)?.answers;
  return answers && typeof answers === 'object' ? (answers as Answers) : {};
}

/** A 4xx other than these means the request itself is refused: sending it again will not help. */
const RETRYABLE_4XX = new Set([408, 425, 429]);

async function post(webhook: Webhook, n: Notification, timeoutMs: number): Promise<Answer> {
  const body = webhook.format === 'slack' ? slackPayload(n) : jsonPayload(n);
  let status: number;
  try {
    const res = await fetch(webhook.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'user-agent': 'refinery-notify', 'x-refinery-event': n.event, 'x-refinery-event-id': n.eventId },
      body: JSON.stringify(body),
      // A redirect is not followed: the body (and what it says of the run) stays with the configured host.
      redirect: 'manual',
      signal: AbortSignal.timeout(timeoutMs),
    });
    status = res.status;
    await res.arrayBuffer().catch(() => undefined); // free the connection
  } catch (err) {
    return { status: null, delivered: false, final: false, problem: networkProblem(err, timeoutMs) };
  }
  if (status >= 200 && status < 300) return { status, delivered: true, final: true };
  const final = (status >= 300 && status < 400) || (status >= 400 && status < 500 && !RETRYABLE_4XX.has(status));
  return { status, delivered: false, final, problem: `HTTP ${status}` };
}

/** Why a request got no answer, without the URL (fetch's own messages may carry it). */
function networkProblem(err: unknown, timeoutMs: number): string {
  const e = err as { name?: string; cause?: { code?: unknown; name?: string } };
  if (e.name === 'TimeoutError' || e.cause?.name === 'TimeoutError') return `no answer within ${Math.round(timeoutMs / 1000)} s`;
  const code = typeof e.cause?.code === 'string' ? e.cause.code : undefined;
  return `no answer (${code ?? e.name ?? 'network error'})`;
}
