/**
 * Dataset validation and conversion, run before any job starts (invariant 5): every record of a
 * dataset file is checked against its source format, and each problem names the file, the line
 * where the record starts and the field. Valid records become Refinery's canonical rows, which is
 * what a run commits (data.jsonl) and what the jobs read:
 *
 *   chat        {"messages": [{role, content, tool_calls?}], "tools"?: [{type: "function", function}]}
 *   text        {"text": str}
 *   preference  {"prompt": [messages], "chosen": [assistant messages], "rejected": [assistant messages]}
 *   prompts     {"prompt": [messages]}                       (ends with a user turn)
 *   kto         {"prompt": [messages], "completion": [assistant messages], "label": bool}
 *
 * Roles are system, user, assistant and tool; an assistant message that calls tools carries
 * `tool_calls` ([{type: "function", function: {name, arguments: {...}}}]) as transformers' chat
 * templates expect. Sources: Refinery's own formats (chat, alpaca, sharegpt, text, preference,
 * prompts, kto: alpaca and sharegpt become chat) and LLaMA-Factory descriptions (spec/dataset-info.ts).
 * Files are read as streams (spec/json-records.ts): JSONL, JSON arrays, .txt lines.
 * The Python jobs check the canonical rows again when they load (defence in depth).
 */
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { z } from 'zod';
import { formatPath, formatProblem, type InputProblem } from './errors.js';
import { convertLlamaFactoryRecord, RecordProblem, toolCallsOf, toolsOf, type DatasetSource } from './dataset-info.js';
import { layoutOf, MAX_RECORD_BYTES, readRecords, type FileLayout, type ReadCounter } from './json-records.js';
import type { DatasetFormat } from './schema.js';

/** Longer records are refused without parsing (a 100 MB line is a mistake, not a sample). */
export const MAX_LINE_BYTES = MAX_RECORD_BYTES;
const MAX_PROBLEMS = 20;

export interface ToolCall {
  type: 'function';
  function: { name: string; arguments: Record<string, unknown> };
}
export interface Tool {
  type: 'function';
  function: Record<string, unknown>;
}
export interface Message {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
  tool_calls?: ToolCall[];
}
export type CanonicalRow =
  | { messages: Message[]; tools?: Tool[] }
  | { text: string }
  | { prompt: Message[]; chosen: Message[]; rejected: Message[] }
  | { prompt: Message[] }
  | { prompt: Message[]; completion: Message[]; label: boolean };

// --- Refinery's own formats: checked with zod (messages in the record's own terms) ---------------

const Text = z.string().refine((s) => s.trim().length > 0, 'must not be empty');
const ToolCallSchema = z.strictObject({
  type: z.literal('function'),
  function: z.strictObject({ name: Text, arguments: z.record(z.string(), z.unknown()) }),
});
const ChatMessage = z
  .strictObject({ role: z.enum(['system', 'user', 'assistant', 'tool']), content: z.string(), tool_calls: z.array(ToolCallSchema).min(1).optional() })
  .superRefine((m, ctx) => {
    if (m.tool_calls !== undefined && m.role !== 'assistant') ctx.addIssue({ code: 'custom', path: ['tool_calls'], input: m, message: 'only assistant messages call tools' });
    // A tool call's text and a tool's result may be empty; nothing else may.
    if (m.tool_calls === undefined && m.role !== 'tool' && m.content.trim() === '') ctx.addIssue({ code: 'custom', path: ['content'], input: m, message: 'must not be empty' });
  });
const Messages = z.array(ChatMessage).min(1, 'must hold at least one message');
const Completion = z.union([Text, Messages]);
const Tools = z.array(z.strictObject({ type: z.literal('function'), function: z.looseObject({ name: Text }) }));

const SHAREGPT_ROLES = ['human', 'gpt', 'system', 'function_call', 'observation'] as const;
const FORMATS: Record<DatasetFormat, z.ZodType> = {
  chat: z.object({ messages: Messages.refine((m) => m.some((x) => x.role === 'assistant'), 'needs at least one assistant message'), tools: Tools.optional() }),
  alpaca: z.object({
    instruction: Text,
    input: z.string().optional(),
    output: Text,
    system: z.string().optional(),
    history: z.array(z.tuple([Text, Text])).optional(),
  }),
  sharegpt: z.object({
    conversations: z
      .array(z.strictObject({ from: z.enum(SHAREGPT_ROLES), value: z.string() }))
      .min(1)
      .refine((c) => c.some((x) => x.from === 'gpt' || x.from === 'function_call'), 'needs at least one "gpt" turn'),
    system: z.string().optional(),
    tools: z.union([z.string(), z.array(z.unknown())]).optional(),
  }),
  text: z.object({ text: Text }),
  preference: z
    .object({ prompt: Completion.optional(), messages: Messages.optional(), chosen: Completion, rejected: Completion })
    .refine((r) => JSON.stringify(r.chosen) !== JSON.stringify(r.rejected), { message: 'chosen and rejected are identical', path: ['rejected'] }),
  kto: z.object({ prompt: Completion, completion: Completion, label: z.boolean() }),
  prompts: z.union([
    z.object({ prompt: Text }),
    z.object({ prompt: Messages.refine((m) => m[m.length - 1]?.role === 'user', 'must end with a user message') }),
    z.object({ messages: Messages.refine((m) => m[m.length - 1]?.role === 'user', 'must end with a user message') }),
  ]),
};

type Rec = Record<string, unknown>;
const asMessages = (v: unknown): Message[] => v as Message[];
const userTurn = (content: string): Message[] => [{ role: 'user', content }];
const answer = (v: unknown): Message[] => (typeof v === 'string' ? [{ role: 'assistant', content: v }] : asMessages(v));

/** A zod-valid record of a Refinery format as a canonical row; throws RecordProblem for what zod cannot say. */
function nativeToCanonical(format: DatasetFormat, r: Rec): CanonicalRow {
  switch (format) {
    case 'chat':
      return r.tools !== undefined ? { messages: asMessages(r.messages), tools: r.tools as Tool[] } : { messages: asMessages(r.messages) };
    case 'alpaca': {
      // The same messages as jobs/refinery_jobs/data.py `_alpaca` (runs before canonical rows read it so).
      const msgs: Message[] = [];
      if (typeof r.system === 'string' && r.system.trim() !== '') msgs.push({ role: 'system', content: r.system });
      for (const [q, a] of (r.history as [string, string][] | undefined) ?? []) msgs.push({ role: 'user', content: q }, { role: 'assistant', content: a });
      const extra = typeof r.input === 'string' ? r.input : '';
      msgs.push({ role: 'user', content: extra.trim() ? `${r.instruction as string}\n\n${extra}` : (r.instruction as string) }, { role: 'assistant', content: r.output as string });
      return { messages: msgs };
    }
    case 'sharegpt':
      return sharegptToCanonical(r);
    case 'text':
      return { text: r.text as string };
    case 'preference':
      return { prompt: promptOf(r), chosen: assistantOnly(answer(r.chosen), 'chosen'), rejected: assistantOnly(answer(r.rejected), 'rejected') };
    case 'prompts':
      return { prompt: promptOf(r) };
    case 'kto':
      return { prompt: promptOf(r), completion: assistantOnly(answer(r.completion), 'completion'), label: r.label as boolean };
  }
}

function promptOf(r: Rec): Message[] {
  if (typeof r.prompt === 'string') return userTurn(r.prompt);
  const msgs = r.prompt !== undefined ? asMessages(r.prompt) : r.messages !== undefined ? asMessages(r.messages) : undefined;
  const field = r.prompt !== undefined ? 'prompt' : 'messages';
  if (!msgs) throw new RecordProblem('prompt', 'required (give "prompt" or "messages")');
  const last = msgs[msgs.length - 1]!;
  if (last.role !== 'user') throw new RecordProblem(`${field}[${msgs.length - 1}].role`, `the prompt must end with a user turn, got ${JSON.stringify(last.role)}`);
  return msgs;
}

function assistantOnly(msgs: Message[], field: string): Message[] {
  const i = msgs.findIndex((m) => m.role !== 'assistant');
  if (i !== -1) throw new RecordProblem(`${field}[${i}].role`, `an answer holds assistant messages only, got ${JSON.stringify(msgs[i]!.role)}`);
  return msgs;
}

/** Refinery's sharegpt: human/gpt/system turns as before, and LLaMA-Factory's function_call/observation turns. */
function sharegptToCanonical(r: Rec): CanonicalRow {
  const turns = r.conversations as { from: (typeof SHAREGPT_ROLES)[number]; value: string }[];
  const msgs: Message[] = typeof r.system === 'string' && r.system.trim() !== '' ? [{ role: 'system', content: r.system }] : [];
  turns.forEach((t, i) => {
    const field = `conversations[${i}]`;
    if (t.from === 'system' && msgs.length > 0) throw new RecordProblem(`${field}.from`, '"system" is only allowed as the first turn');
    if (t.from === 'function_call') msgs.push({ role: 'assistant', content: '', tool_calls: toolCallsOf(t.value, `${field}.value`) });
    else if (t.from === 'observation') msgs.push({ role: 'tool', content: t.value });
    else if (t.value.trim() === '') throw new RecordProblem(`${field}.value`, 'must not be empty');
    else msgs.push({ role: t.from === 'human' ? 'user' : t.from === 'gpt' ? 'assistant' : 'system', content: t.value });
  });
  const tools = toolsOf(r.tools, 'tools');
  return tools ? { messages: msgs, tools } : { messages: msgs };
}

/** The prompts of a chat row: its messages up to the last assistant turn (what ppo/grpo complete). */
function promptsFromChat(row: { messages: Message[] }): CanonicalRow {
  const last = row.messages.map((m) => m.role).lastIndexOf('assistant');
  const prompt = row.messages.slice(0, last);
  if (prompt.length === 0 || prompt[prompt.length - 1]!.role !== 'user') throw new RecordProblem(undefined, 'no user turn before the last answer: nothing to use as a prompt');
  return { prompt };
}

/** What a planned dataset reads (its `source`), or a plan from before sources: records in `format`. */
export interface DatasetReading {
  format: DatasetFormat;
  source?: DatasetSource;
}

/** One record converted: the canonical row, or the problem (field in the record's own terms). */
export type Converter = (record: unknown) => CanonicalRow;

/** The record converter of a dataset: its source format to its canonical format; throws RecordProblem. */
export function converterFor(ds: DatasetReading): Converter {
  const source: DatasetSource = ds.source ?? { kind: 'refinery', format: ds.format };
  const toTarget = (row: CanonicalRow) => (ds.format === 'prompts' && 'messages' in row ? promptsFromChat(row) : row);
  if (source.kind === 'llama-factory') {
    const { attrs } = source;
    return (record) => toTarget(convertLlamaFactoryRecord(record, attrs));
  }
  const schema = FORMATS[source.format];
  return (record) => {
    const parsed = schema.safeParse(record, { reportInput: true }); // else issue.input is always undefined
    if (!parsed.success) {
      const issue = deepestIssue(parsed.error.issues);
      const hint = llamaFactoryHint(source.format, record);
      throw new RecordProblem(formatPath(issue.path) || '(record)', issueMessage(issue, source.format) + (hint ? ` (${hint})` : ''));
    }
    return toTarget(nativeToCanonical(source.format, parsed.data as Rec));
  };
}

/** For a record in one of LLaMA-Factory's shapes that Refinery's own formats do not take: how to name it instead. */
function llamaFactoryHint(format: DatasetFormat, record: unknown): string | undefined {
  if (typeof record !== 'object' || record === null) return undefined;
  const r = record as Rec;
  const isTurn = (v: unknown) => typeof v === 'object' && v !== null && 'from' in v && 'value' in v;
  const how = 'name it by its dataset_info.json entry ({dataset_info, name}) or describe it with LLaMA-Factory keys';
  if (format === 'preference' && Array.isArray(r.conversations) && (isTurn(r.chosen) || isTurn(r.rejected))) {
    return `LLaMA-Factory sharegpt pairs: ${how}, formatting: sharegpt, ranking: true, columns: {messages: conversations, chosen: chosen, rejected: rejected}`;
  }
  if (format === 'kto' && Array.isArray(r.messages) && typeof r.label === 'boolean') {
    return `LLaMA-Factory KTO data: ${how}, formatting: sharegpt, columns: {messages: messages, kto_tag: label}, tags: {role_tag: role, content_tag: content, user_tag: user, assistant_tag: assistant}`;
  }
  return undefined;
}

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
  /** Each valid record's canonical row, in file order (awaited: a slow writer slows the reading). */
  onRow?: (row: CanonicalRow, line: number) => void | Promise<void>;
  /** Each chunk of the source's bytes, as read (to hash the source in the same pass). */
  onBytes?: (chunk: Buffer) => void;
}

/** One record read: its canonical row, or the problem with it (`fatal`: nothing can be read after it). */
export type ReadItem = { line: number; row: CanonicalRow } | { problem: InputProblem; fatal?: boolean };

/** The records of a dataset stream converted to canonical rows, in file order, with their problems. */
export async function* canonicalRecords(input: Readable, layout: FileLayout, ds: DatasetReading, displayName: string, counter: ReadCounter = { bytesRead: 0 }): AsyncGenerator<ReadItem> {
  const convert = converterFor(ds);
  for await (const record of readRecords(input, layout, counter)) {
    if (record.error !== undefined) {
      yield { problem: { file: displayName, line: record.line, message: record.error }, fatal: record.fatal };
      continue;
    }
    try {
      yield { line: record.line, row: convert(record.value) };
    } catch (err) {
      if (!(err instanceof RecordProblem)) throw err;
      yield { problem: { file: displayName, line: record.line, ...(err.field !== undefined ? { field: err.field } : {}), message: err.message } };
    }
  }
}

/**
 * Validates (and converts) a dataset stream. `layout` says how records are laid out (.txt: text
 * lines; else JSONL or a JSON array); `displayName` is what the messages call the file.
 */
export async function validateRecords(input: Readable, layout: FileLayout, ds: DatasetReading, displayName: string, options: ValidateOptions = {}): Promise<DatasetReport> {
  const problems: InputProblem[] = [];
  let rows = 0;
  const counter: ReadCounter = { bytesRead: 0, ...(options.onBytes ? { onChunk: options.onBytes } : {}) };
  let reported = -1;
  const { onProgress, onRow } = options;
  const report = () => {
    reported = counter.bytesRead;
    onProgress?.({ rows, bytesRead: counter.bytesRead });
  };
  try {
    for await (const item of canonicalRecords(input, layout, ds, displayName, counter)) {
      if (onProgress && counter.bytesRead !== reported) report();
      if ('problem' in item) problems.push(item.problem);
      else {
        rows++;
        if (onRow) await onRow(item.row, item.line);
      }
      if (problems.length >= MAX_PROBLEMS || ('fatal' in item && item.fatal)) break;
    }
  } finally {
    input.destroy();
  }
  if (onProgress) report();
  if (rows === 0 && problems.length === 0) problems.push({ file: displayName, message: 'no records' });
  return { rows, problems };
}

/** The canonical rows of a dataset file already validated (a problem now means the file changed under us). */
export async function* rowsOfFile(file: string, ds: DatasetReading): AsyncGenerator<CanonicalRow> {
  for await (const item of canonicalRecords(createReadStream(file, { highWaterMark: 1 << 20 }), layoutOf(file), ds, file)) {
    if ('problem' in item) throw new Error(`${file} changed while it was read: ${formatProblem(item.problem)}`);
    yield item.row;
  }
}

/** Validates (and converts) a dataset file; its name says its layout (.txt: text lines). */
export async function validateDatasetFile(file: string, ds: DatasetReading, displayName = file, options: ValidateOptions = {}): Promise<DatasetReport> {
  return validateRecords(createReadStream(file, { highWaterMark: 1 << 20 }), layoutOf(file), ds, displayName, options);
}

/** Validates a JSONL (or JSON array) stream of records in one of Refinery's formats. */
export async function validateJsonl(input: Readable, format: DatasetFormat, displayName: string, options: ValidateOptions = {}): Promise<DatasetReport> {
  return validateRecords(input, 'json', { format, source: { kind: 'refinery', format } }, displayName, options);
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

// --- Mixing a general dataset into a user's (the cloud platforms' mixed training) ------------------

/** A small seeded PRNG (mulberry32): the same seed gives the same mix on every machine. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * How many times each general row is taken to mix `ratio` general rows per user row:
 * round(ratio x userRows) in all, each row at most once while the general dataset lasts (a seeded
 * sample without replacement), every row once more per full pass beyond it. 4 bytes per general row.
 */
export function mixCounts(userRows: number, generalRows: number, ratio: number, seed: number): Uint32Array {
  const take = Math.round(ratio * userRows);
  const counts = new Uint32Array(generalRows).fill(Math.floor(take / generalRows));
  const rest = take % generalRows;
  // Partial Fisher-Yates over the indices: the first `rest` of a seeded permutation.
  const order = new Uint32Array(generalRows);
  for (let i = 0; i < generalRows; i++) order[i] = i;
  const random = seededRandom(seed);
  for (let i = 0; i < rest; i++) {
    const j = i + Math.floor(random() * (generalRows - i));
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
    counts[order[i]!]!++;
  }
  return counts;
}

/**
 * The user's rows and the taken general rows interleaved at random (seeded), each side in its own
 * order: with u user rows and g general rows left, the next is a general one with probability
 * g / (u + g). Both sides are streamed: memory is the counts, not the rows.
 */
export async function* mixRows(user: AsyncIterable<CanonicalRow>, userRows: number, general: AsyncIterable<CanonicalRow>, counts: Uint32Array, seed: number): AsyncGenerator<CanonicalRow> {
  const random = seededRandom(seed ^ 0x9e3779b9);
  const users = user[Symbol.asyncIterator]();
  const generals = general[Symbol.asyncIterator]();
  let u = userRows;
  let g = counts.reduce((a, b) => a + b, 0);
  let index = -1;
  let current: CanonicalRow | undefined;
  let repeats = 0;
  const nextGeneral = async (): Promise<CanonicalRow> => {
    while (repeats === 0) {
      const next = await generals.next();
      if (next.done) throw new Error('the general dataset has fewer rows than counted');
      index++;
      current = next.value;
      repeats = counts[index]!;
    }
    repeats--;
    return current!;
  };
  try {
    while (u + g > 0) {
      if (random() * (u + g) < g) {
        g--;
        yield await nextGeneral();
      } else {
        u--;
        const next = await users.next();
        if (next.done) throw new Error('the dataset has fewer rows than counted');
        yield next.value;
      }
    }
  } finally {
    await users.return?.(undefined);
    await generals.return?.(undefined);
  }
}
