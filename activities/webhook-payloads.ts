/**
 * The bodies `notify` posts (docs/operations.md, "Notifications"): a generic JSON body, and a
 * Slack-compatible one (`text` for the notification itself, `blocks` for the message). Pure
 * functions of the workflow's facts, so the wording can change without touching workflow code.
 */
import type { Notification } from '../workflows/notification-events.js';

/** What to run to pass an approval gate (YOU and the reason are the approver's to fill in). */
export function approveCommand(runId: string, stage: string): string {
  return `refinery approve ${runId} --stage ${stage} --by YOU --reason "..."`;
}

/** One line saying what happened. */
export function notificationMessage(n: Notification): string {
  const run = `run ${n.runId} (${n.pipeline})`;
  const stage = `stage "${n.stage ?? '?'}" of ${run}`;
  switch (n.event) {
    case 'run-completed':
      return `Run ${n.runId} (${n.pipeline}) completed`;
    case 'run-failed':
      return `Run ${n.runId} (${n.pipeline}) failed: ${n.error ?? 'unknown error'}`;
    case 'run-cancelled':
      return `Run ${n.runId} (${n.pipeline}) was cancelled`;
    case 'run-unchanged':
      return `Run ${n.runId} (${n.pipeline}) trained nothing: inputs unchanged since run ${n.unchangedSince ?? '?'}`;
    case 'stage-failed':
      return `Stage "${n.stage ?? '?'}" of ${run} failed: ${n.error ?? 'unknown error'}`;
    case 'approval-waiting':
      return `${capitalize(stage)} is waiting for approval${n.approvalDeadline ? ` until ${n.approvalDeadline}` : ''}`;
    case 'promoted': {
      const p = n.promoted;
      if (!p) return `Run ${n.runId} (${n.pipeline}) promoted stage "${n.stage ?? '?'}"`;
      return p.changed
        ? `Run ${n.runId} (${n.pipeline}) promoted stage "${n.stage ?? '?'}" to ${p.model}@${p.alias}`
        : `Run ${n.runId} (${n.pipeline}): ${p.model}@${p.alias} already pointed at stage "${n.stage ?? '?'}"'s output`;
    }
    case 'promote-stopped': {
      const target = n.promote ? ` to ${n.promote.model}@${n.promote.alias}` : '';
      return `Run ${n.runId} (${n.pipeline}) did not promote${target}: ${n.gate ?? n.error ?? 'the run did not complete'}`;
    }
  }
}

/** The generic body: the facts, the message line, and for an approval gate the command to pass it. */
export function jsonPayload(n: Notification): Record<string, unknown> {
  return {
    version: 1,
    event: n.event,
    eventId: n.eventId,
    runId: n.runId,
    pipeline: n.pipeline,
    stage: n.stage ?? null,
    state: n.state,
    message: notificationMessage(n),
    at: n.at,
    ...(n.error !== undefined ? { error: n.error } : {}),
    ...(n.gate !== undefined ? { gate: n.gate } : {}),
    ...(n.event === 'approval-waiting' && n.stage ? { approveCommand: approveCommand(n.runId, n.stage) } : {}),
    ...(n.approvalDeadline !== undefined ? { approvalDeadline: n.approvalDeadline } : {}),
    ...(n.promoted !== undefined ? { promoted: n.promoted } : {}),
    ...(n.promote !== undefined ? { promote: n.promote } : {}),
    ...(n.unchangedSince !== undefined ? { unchangedSince: n.unchangedSince } : {}),
  };
}

/** Slack caps a section's text at 3,000 characters. */
const SLACK_TEXT_MAX = 2800;

/** Slack's mrkdwn: &, < and > must be escaped; long text is cut. */
function mrkdwn(text: string): string {
  const cut = text.length > SLACK_TEXT_MAX ? `${text.slice(0, SLACK_TEXT_MAX)}…` : text;
  return cut.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

const section = (text: string) => ({ type: 'section', text: { type: 'mrkdwn', text } });

/** Slack incoming-webhook body: `text` is what the notification shows, `blocks` the message. */
export function slackPayload(n: Notification): { text: string; blocks: Record<string, unknown>[] } {
  const message = notificationMessage(n);
  const fields = [
    `*Run*\n\`${mrkdwn(n.runId)}\``,
    `*Pipeline*\n${mrkdwn(n.pipeline)}`,
    `*State*\n${mrkdwn(n.state)}`,
    ...(n.stage ? [`*Stage*\n${mrkdwn(n.stage)}`] : []),
  ].map((text) => ({ type: 'mrkdwn', text }));
  const blocks: Record<string, unknown>[] = [section(`*${mrkdwn(message)}*`), { type: 'section', fields }];
  if (n.error) blocks.push(section(`*Error*\n\`\`\`${mrkdwn(n.error)}\`\`\``));
  if (n.gate) blocks.push(section(`*Gate*\n${mrkdwn(n.gate)}`));
  if (n.event === 'approval-waiting' && n.stage) blocks.push(section(`*To approve*\n\`\`\`${mrkdwn(approveCommand(n.runId, n.stage))}\`\`\``));
  if (n.promoted) blocks.push(section(`*Promoted*\n${mrkdwn(`${n.promoted.model}@${n.promoted.alias} -> ${n.promoted.target}`)}`));
  blocks.push({ type: 'context', elements: [{ type: 'mrkdwn', text: mrkdwn(`refinery ${n.event} · ${n.at} · event ${n.eventId}`) }] });
  return { text: mrkdwn(message), blocks };
}

function capitalize(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}
