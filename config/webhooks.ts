/**
 * Where notifications go (docs/operations.md, "Notifications"): REFINERY_WEBHOOKS names a JSON file
 * on the control worker listing webhooks, each with its format (Slack-compatible or a generic JSON
 * body), the events and pipelines it hears of, and how many attempts a notification gets. Webhook
 * URLs can carry secrets (a Slack webhook's path is its token): they are read here, on the worker,
 * and only ever logged redacted (redactUrl); workflows never see them.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { NOTIFICATION_EVENTS, NOTIFY_MAX_ATTEMPTS, type NotificationEvent } from '../workflows/notification-events.js';
import { StackError } from './errors.js';

/** "*" or exact names. */
const Scope = z.array(z.string().trim().min(1, 'an empty name')).min(1, 'list at least one name, or "*" for all');

const WebhookUrl = z.string().superRefine((text, ctx) => {
  // Messages never repeat the URL: it may be a secret, and errors reach logs and histories.
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    ctx.addIssue({ code: 'custom', message: 'not a URL' });
    return;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') ctx.addIssue({ code: 'custom', message: `an http(s) URL, not ${url.protocol}` });
});

export const Webhook = z.strictObject({
  url: WebhookUrl,
  /** slack: `{ text, blocks }` (Slack incoming webhooks and compatible ones); json: the generic body. */
  format: z.enum(['slack', 'json']).default('json'),
  events: z.array(z.enum(['*', ...NOTIFICATION_EVENTS])).min(1, 'list at least one event, or "*" for all').default(['*']),
  pipelines: Scope.default(['*']),
  /** Attempts a notification to this webhook gets (backoff 1 s doubling, at most 1 min apart). */
  maxAttempts: z.number().int().min(1).max(NOTIFY_MAX_ATTEMPTS).default(NOTIFY_MAX_ATTEMPTS),
});
export type Webhook = z.infer<typeof Webhook>;

export const WebhooksFile = z.strictObject({
  webhooks: z.array(Webhook),
});
export type WebhooksFile = z.infer<typeof WebhooksFile>;

/** The webhooks file REFINERY_WEBHOOKS names, or undefined when it is unset or empty. */
export function webhooksFileFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env.REFINERY_WEBHOOKS?.trim() || undefined;
}

/** Reads and checks a webhooks file; errors name the file and the field, never a URL. */
export function loadWebhooks(file: string): Webhook[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new StackError(`webhooks file ${file} (REFINERY_WEBHOOKS): cannot read it: ${(err as Error).message}`);
  }
  return parseWebhooks(text, file);
}

/** Parses a webhooks file's text; `file` names it in errors. */
export function parseWebhooks(text: string, file: string): Webhook[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    // V8's message quotes the text around the error, which may be a URL: keep only where it is.
    const where = /at position \d+(?: \(line \d+ column \d+\))?/.exec((err as Error).message)?.[0];
    throw new StackError(`webhooks file ${file}: not JSON${where ? ` (${where})` : ''}`);
  }
  const parsed = WebhooksFile.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '') || '(top level)';
    const more = parsed.error.issues.length > 1 ? ` (and ${parsed.error.issues.length - 1} more)` : '';
    throw new StackError(`webhooks file ${file}: ${field}: ${issue.message}${more}`);
  }
  return parsed.data.webhooks;
}

/** The webhooks that hear of `event` in `pipeline`, with their place in the file (0-based). */
export function matchingWebhooks(webhooks: readonly Webhook[], event: NotificationEvent, pipeline: string): { index: number; webhook: Webhook }[] {
  return webhooks
    .map((webhook, index) => ({ index, webhook }))
    .filter(({ webhook: w }) => (w.events.includes('*') || w.events.includes(event)) && (w.pipelines.includes('*') || w.pipelines.includes(pipeline)));
}

/** Scheme and host only: what logs may say of a webhook URL. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}`;
  } catch {
    return '(not a URL)';
  }
}
