/**
 * Dataset validation, run before any job starts (invariant 5): every line of a JSONL file is
 * checked against its format, and each problem names the file, the line and the field.
 * The Python jobs check again when they load (defence in depth), with the same wording.
 */
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { z } from 'zod';
import { formatPath, type InputProblem } from './errors.js';
import type { DatasetFormat } from './schema.js';

/** Longer lines are refused without parsing (a 100 MB line is a mistake, not a sample). */
export const MAX_LINE_BYTES = 10 * 1024 * 1024;
const MAX_PROBLEMS = 20;

const Text = z.string().refine((s) => s.trim().length > 0, 'must not be empty');
const ChatMessage = z.strictObject({ role: z.enum(['system', 'user', 'assistant']), content: Text });
const Messages = z.array(ChatMessage).min(1, 'must hold at least one message');
const Completion = z.union([Text, Messages]);

const FORMATS: Record<DatasetFormat, z.ZodType> = {
  chat: z.object({ messages: Messages.refine((m) => m.some((x) => x.role === 'assistant'), 'needs at least one assistant message') }),
  alpaca: z.object({
    instruction: Text,
    input: z.string().optional(),
    output: Text,
    system: z.string().optional(),
    history: z.array(z.tuple([Text, Text])).optional(),
  }),
  sharegpt: z.object({
    conversations: z
      .array(z.strictObject({ from: z.enum(['human', 'gpt', 'system']), value: Text }))
      .min(1)
      .refine((c) => c.some((x) => x.from === 'gpt'), 'needs at least one "gpt" turn'),
  }),
  text: z.object({ text: Text }),
  preference: z
    .object({ prompt: Completion.optional(), messages: Messages.optional(), chosen: Completion, rejected: Completion })
    .refine((r) => JSON.stringify(r.chosen) !== JSON.stringify(r.rejected), { message: 'chosen and rejected are identical', path: ['rejected'] }),
  kto: z.object({ prompt: Completion, completion: Completion, label: z.boolean() }),
  prompts: z.union([
    z.object({ prompt: Text }),
    z.object({ messages: Messages.refine((m) => m[m.length - 1]?.role === 'user', 'must end with a user message') }),
  ]),
};

export interface DatasetReport {
  rows: number;
  problems: InputProblem[];
}

export interface ValidateOptions {
  /**
   * Called as the input is read: after each chunk of the stream (≤ 1 MiB for a file) with the valid
   * records and the bytes read so far, and once at the end. A throw from it stops the validation.
   */
  onProgress?: (p: { rows: number; bytesRead: number }) => void;
}

/** Validates a JSONL stream; `displayName` is what the messages call the file. */
export async function validateJsonl(input: Readable, format: DatasetFormat, displayName: string, options: ValidateOptions = {}): Promise<DatasetReport> {
  const schema = FORMATS[format];
  const problems: InputProblem[] = [];
  let rows = 0;
  let lineNo = 0;
  const counter = { bytesRead: 0, reported: -1 };
  const { onProgress } = options;
  const report = () => {
    counter.reported = counter.bytesRead;
    onProgress?.({ rows, bytesRead: counter.bytesRead });
  };
  for await (const { text, oversizedBytes } of readLines(input, counter)) {
    if (onProgress && counter.bytesRead !== counter.reported) report();
    lineNo++;
    const line = (text ?? '').replace(/\r$/, '');
    if (oversizedBytes !== undefined) {
      problems.push({ file: displayName, line: lineNo, message: `line is ${oversizedBytes} bytes, more than the ${MAX_LINE_BYTES} allowed` });
    } else if (line.trim() === '') {
      continue;
    } else {
      let record: unknown;
      try {
        record = JSON.parse(line);
      } catch (err) {
        problems.push({ file: displayName, line: lineNo, message: `invalid JSON (${(err as Error).message})` });
        record = undefined;
      }
      if (record !== undefined) {
        const parsed = schema.safeParse(record, { reportInput: true }); // else issue.input is always undefined
        if (!parsed.success) {
          const issue = deepestIssue(parsed.error.issues);
          problems.push({ file: displayName, line: lineNo, field: formatPath(issue.path) || '(record)', message: issueMessage(issue, format) });
        } else rows++;
      }
    }
    if (problems.length >= MAX_PROBLEMS) break;
  }
  input.destroy();
  if (onProgress) report();
  if (rows === 0 && problems.length === 0) problems.push({ file: displayName, message: 'no records' });
  return { rows, problems };
}

export async function validateJsonlFile(file: string, format: DatasetFormat, displayName = file, options: ValidateOptions = {}): Promise<DatasetReport> {
  return validateJsonl(createReadStream(file, { highWaterMark: 1 << 20 }), format, displayName, options);
}

/** For unions zod reports "no match": point at the branch that got furthest instead. */
function deepestIssue(issues: z.core.$ZodIssue[]): z.core.$ZodIssue {
  const first = issues[0]!;
  if (first.code === 'invalid_union' && first.errors.length > 0) {
    const branches = first.errors.map((errs) => errs[0]).filter((x): x is z.core.$ZodIssue => x !== undefined);
    const best = branches.sort((a, b) => b.path.length - a.path.length)[0];
    if (best) return deepestIssue([{ ...best, path: [...first.path, ...best.path] }]);
  }
  return first;
}

function issueMessage(issue: z.core.$ZodIssue, format: DatasetFormat): string {
  if (issue.code === 'invalid_type' && issue.input === undefined) return `required in ${format} records`;
  if (issue.code === 'invalid_type') return `expected ${issue.expected}`;
  if (issue.code === 'invalid_value') return `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(' | ')}`;
  if (issue.code === 'unrecognized_keys') return `unknown key(s) ${issue.keys.join(', ')}`;
  return issue.message;
}

/**
 * Splits a byte stream into lines without ever holding more than MAX_LINE_BYTES of one line:
 * an oversized line is reported by its length only.
 */
async function* readLines(input: Readable, counter: { bytesRead: number }): AsyncGenerator<{ text?: string; oversizedBytes?: number }> {
  let parts: Buffer[] = [];
  let length = 0;
  let overflowing = false;
  const emit = () => {
    const item = overflowing ? { oversizedBytes: length } : { text: Buffer.concat(parts).toString('utf8') };
    parts = [];
    length = 0;
    overflowing = false;
    return item;
  };
  for await (const chunk of input as AsyncIterable<Buffer>) {
    counter.bytesRead += chunk.length;
    let start = 0;
    for (let nl = chunk.indexOf(0x0a, start); nl !== -1; nl = chunk.indexOf(0x0a, start)) {
      append(chunk.subarray(start, nl));
      yield emit();
      start = nl + 1;
    }
    append(chunk.subarray(start));
  }
  if (length > 0) yield emit();

  function append(piece: Buffer) {
    length += piece.length;
    if (overflowing) return;
    if (length > MAX_LINE_BYTES) {
      overflowing = true;
      parts = [];
    } else if (piece.length > 0) parts.push(Buffer.from(piece));
  }
}
