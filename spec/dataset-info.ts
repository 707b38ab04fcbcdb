/**
 * LLaMA-Factory's dataset descriptions: a `dataset_info.json` entry (or the same keys inline in a
 * spec) resolved to the attributes LLaMA-Factory's loader uses, and its records converted to
 * Refinery's canonical rows with the same semantics as LLaMA-Factory 0.9.5
 * (src/llamafactory/data/parser.py `DatasetAttr.join`, converter.py `AlpacaDatasetConverter`,
 * `SharegptDatasetConverter`). Where LLaMA-Factory skips a malformed record with a warning,
 * Refinery refuses it with file:line:field: a silently dropped example is a bug found late.
 *
 * Refused by name: entries that name a hub dataset (Refinery reads local files only), multimodal
 * ones (Refinery trains on text), and keys whose meaning Refinery does not reproduce.
 */
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Dataset as SpecDataset, DatasetFormat, LlamaFactoryColumns, LlamaFactoryTags } from './dataset-spec.js';
import type { CanonicalRow, Message, Tool, ToolCall } from './datasets.js';
import { layoutOf } from './json-records.js';
import type { PlannedDataset } from './plan-types.js';

export type ColumnName = keyof LlamaFactoryColumns;
export type TagName = keyof LlamaFactoryTags;

/** What LLaMA-Factory's loader knows of a dataset, resolved (defaults applied as `DatasetAttr.join` does). */
export interface LlamaFactoryAttrs {
  formatting: 'alpaca' | 'sharegpt';
  ranking: boolean;
  /** Only the columns that are set: with `columns` given, the others are unset (not defaulted). */
  columns: Partial<Record<ColumnName, string>>;
  /** Likewise: with `tags` given, the tags it does not name are unset. */
  tags: Partial<Record<TagName, string>>;
}

/** How a planned dataset's file is read (spec/plan-types.ts `PlannedDataset.source`). */
export type DatasetSource =
  | { kind: 'refinery'; format: DatasetFormat }
  | { kind: 'llama-factory'; attrs: LlamaFactoryAttrs; datasetInfo?: string; entry?: string };

const DEFAULT_COLUMNS: Partial<Record<ColumnName, string>> = { prompt: 'instruction', query: 'input', response: 'output', messages: 'conversations' };
const DEFAULT_TAGS: Record<TagName, string> = {
  role_tag: 'from',
  content_tag: 'value',
  user_tag: 'human',
  assistant_tag: 'gpt',
  observation_tag: 'observation',
  function_tag: 'function_call',
  system_tag: 'system',
};
const HUB_KEYS = ['hf_hub_url', 'ms_hub_url', 'om_hub_url', 'script_url', 'cloud_file_name'] as const;
const MEDIA_COLUMNS = ['images', 'videos', 'audios'] as const;
/** Entry keys Refinery reads; `subset`, `split` and `folder` only matter to hub datasets. */
const ENTRY_KEYS = new Set(['file_name', 'formatting', 'ranking', 'columns', 'tags', 'subset', 'split', 'folder', ...HUB_KEYS]);

/** A problem with the description itself; `at` is the spec key it belongs to. */
export interface DescriptionProblem {
  at: string[];
  message: string;
}

/**
 * Attributes from LLaMA-Factory keys, or why they cannot be used. `keys` is an entry of
 * dataset_info.json or a spec dataset (the same keys).
 */
export function llamaFactoryAttrs(keys: Record<string, unknown>): { attrs: LlamaFactoryAttrs } | { problem: DescriptionProblem } {
  const formatting = keys.formatting ?? 'alpaca';
  if (formatting !== 'alpaca' && formatting !== 'sharegpt') {
    return { problem: { at: ['formatting'], message: `formatting ${JSON.stringify(formatting)} is not supported (alpaca | sharegpt; write "openai" data as sharegpt with tags role_tag: role, content_tag: content, user_tag: user, assistant_tag: assistant)` } };
  }
  if (keys.ranking !== undefined && typeof keys.ranking !== 'boolean') return { problem: { at: ['ranking'], message: 'expected true or false' } };
  const columns = keys.columns === undefined ? { ...DEFAULT_COLUMNS } : stringRecord(keys.columns);
  if (!columns) return { problem: { at: ['columns'], message: 'expected an object of column names' } };
  const media = MEDIA_COLUMNS.filter((c) => columns[c] !== undefined);
  if (media.length > 0) return { problem: { at: ['columns', media[0]!], message: `a multimodal dataset (${media.join(", ")} ${media.length > 1 ? "columns" : "column"}); Refinery trains on text only` } };
  const tags = keys.tags === undefined ? { ...DEFAULT_TAGS } : stringRecord(keys.tags);
  if (!tags) return { problem: { at: ['tags'], message: 'expected an object of tags' } };
  return { attrs: { formatting, ranking: keys.ranking === true, columns, tags } };
}

function stringRecord(v: unknown): Record<string, string> | undefined {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(v)) {
    if (typeof x !== 'string') return undefined;
    out[k] = x;
  }
  return out;
}

/** The canonical format LLaMA-Factory attributes yield (what a job reads). */
export function canonicalFormatOf(attrs: LlamaFactoryAttrs): DatasetFormat {
  if (attrs.columns.kto_tag !== undefined) return 'kto';
  if (attrs.ranking) return 'preference';
  // LLaMA-Factory's pretraining data: alpaca with a prompt column and no response (`columns: {prompt: text}`).
  if (attrs.formatting === 'alpaca' && attrs.columns.response === undefined) return 'text';
  return 'chat';
}

export type DatasetInfo = Record<string, Record<string, unknown>>;

/** dataset_info.json is a small index (LLaMA-Factory's is 18 kB): read whole, but not without bound. */
const MAX_DATASET_INFO_BYTES = 16 * 1024 * 1024;

/** Reads and parses a dataset_info.json; throws an Error whose message says what is wrong. */
export function readDatasetInfo(file: string): DatasetInfo {
  const size = statSync(file).size;
  if (size > MAX_DATASET_INFO_BYTES) throw new Error(`${size} bytes, more than the ${MAX_DATASET_INFO_BYTES} a dataset_info.json may have`);
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`invalid JSON (${(err as Error).message})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new Error('expected an object of dataset entries');
  for (const [name, entry] of Object.entries(json)) {
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new Error(`entry "${name}" is not an object`);
  }
  return json as DatasetInfo;
}

/** An entry of dataset_info.json resolved to a local file and its attributes, or refused by name. */
export type ResolvedEntry = { file: string; attrs: LlamaFactoryAttrs } | { refused: string };

/** `infoLabel` is how messages name the dataset_info.json (as the spec writes it). */
export function resolveEntry(info: DatasetInfo, infoFile: string, name: string, infoLabel = path.basename(infoFile)): ResolvedEntry {
  const entry = Object.hasOwn(info, name) ? info[name] : undefined;
  if (!entry) {
    const names = Object.keys(info);
    return { refused: `${infoLabel}: no entry "${name}" (${names.length} entries${names.length ? `: ${names.slice(0, 8).join(', ')}${names.length > 8 ? ', ...' : ''}` : ''})` };
  }
  const hub = HUB_KEYS.filter((k) => entry[k] !== undefined);
  if (hub.length > 0) return { refused: `${infoLabel}: entry "${name}" names a hub dataset (${hub.join(', ')}); Refinery reads local files only` };
  if (typeof entry.file_name !== 'string' || entry.file_name === '') return { refused: `${infoLabel}: entry "${name}" has no file_name` };
  const unknown = Object.keys(entry).filter((k) => !ENTRY_KEYS.has(k));
  if (unknown.length > 0) return { refused: `${infoLabel}: entry "${name}": ${unknown.join(', ')} not supported by Refinery` };
  const resolved = llamaFactoryAttrs(entry);
  if ('problem' in resolved) return { refused: `${infoLabel}: entry "${name}": ${[...resolved.problem.at].join('.')}: ${resolved.problem.message}` };
  const file = path.resolve(path.dirname(infoFile), entry.file_name);
  if (file !== path.dirname(infoFile) && !file.startsWith(path.dirname(infoFile) + path.sep)) {
    return { refused: `${infoLabel}: entry "${name}": file_name must stay inside the dataset_info.json folder` };
  }
  if (statSync(file, { throwIfNoEntry: false })?.isDirectory()) return { refused: `${infoLabel}: entry "${name}": file_name ${entry.file_name} is a folder; Refinery reads one file per dataset` };
  return { file, attrs: resolved.attrs };
}

/** A record problem: the field (in the source's own terms) and what is wrong with it. */
export class RecordProblem extends Error {
  constructor(
    readonly field: string | undefined,
    message: string,
  ) {
    super(message);
  }
}

const fail = (field: string | undefined, message: string): never => {
  throw new RecordProblem(field, message);
};

const typeName = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

function text(v: unknown, field: string, { allowEmpty = false } = {}): string {
  if (v === undefined || v === null) return fail(field, 'required');
  if (typeof v !== 'string') return fail(field, `expected string, got ${typeName(v)}`);
  if (!allowEmpty && v.trim() === '') return fail(field, 'must not be empty');
  return v;
}

/** An optional string column: absent, null and "" are none (LLaMA-Factory's `_system: ""`). */
function optionalText(v: unknown, field: string): string | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  return text(v, field);
}

/**
 * A function_call turn's content as canonical tool calls. LLaMA-Factory writes it as JSON: one
 * `{"name", "arguments"}` object or an array of them; `arguments` may itself be a JSON string.
 */
export function toolCallsOf(content: unknown, field: string): ToolCall[] {
  const raw = text(content, field);
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    return fail(field, 'a function call holds JSON: {"name": ..., "arguments": {...}} or an array of them');
  }
  const calls = Array.isArray(parsed) ? parsed : [parsed];
  if (calls.length === 0) return fail(field, 'an empty array of function calls');
  return calls.map((c, i) => {
    const at = Array.isArray(parsed) ? `${field}[${i}]` : field;
    if (typeof c !== 'object' || c === null || Array.isArray(c)) return fail(at, `expected a {"name", "arguments"} object, got ${typeName(c)}`);
    const call = c as Record<string, unknown>;
    const name = call.name;
    if (typeof name !== 'string' || name.trim() === '') return fail(at, 'a function call needs a "name"');
    let args: unknown = call.arguments ?? {};
    if (typeof args === 'string') {
      try {
        args = JSON.parse(args) as unknown;
      } catch {
        return fail(at, '"arguments" is a string that is not JSON');
      }
    }
    if (typeof args !== 'object' || args === null || Array.isArray(args)) return fail(at, `"arguments" must be an object, got ${typeName(args)}`);
    return { type: 'function', function: { name, arguments: args as Record<string, unknown> } };
  });
}

/**
 * A `tools` column as canonical function schemas ([{type: "function", function: {...}}]), as
 * transformers' chat templates take them. LLaMA-Factory stores a JSON string of bare schemas;
 * "" and "[]" mean none.
 */
export function toolsOf(value: unknown, field: string): Tool[] | undefined {
  if (value === undefined || value === null || value === '') return undefined;
  let list: unknown = value;
  if (typeof value === 'string') {
    try {
      list = JSON.parse(value) as unknown;
    } catch {
      return fail(field, 'expected a JSON array of function schemas');
    }
  }
  if (typeof list === 'object' && list !== null && !Array.isArray(list)) list = [list];
  if (!Array.isArray(list)) return fail(field, `expected an array of function schemas, got ${typeName(list)}`);
  if (list.length === 0) return undefined;
  return list.map((t, i) => {
    if (typeof t !== 'object' || t === null || Array.isArray(t)) return fail(`${field}[${i}]`, `expected a function schema object, got ${typeName(t)}`);
    const tool = t as Record<string, unknown>;
    const fn = tool.type === 'function' && typeof tool.function === 'object' && tool.function !== null ? (tool.function as Record<string, unknown>) : tool;
    if (typeof fn.name !== 'string' || fn.name.trim() === '') return fail(`${field}[${i}]`, 'a function schema needs a "name"');
    return { type: 'function', function: fn };
  });
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** One LLaMA-Factory record as a canonical row (in the attributes' canonical format); throws RecordProblem. */
export function convertLlamaFactoryRecord(record: unknown, attrs: LlamaFactoryAttrs): CanonicalRow {
  if (!isObject(record)) return fail(undefined, `expected object, got ${typeName(record)}`);
  return attrs.formatting === 'alpaca' ? alpaca(record, attrs) : sharegpt(record, attrs);
}

function alpaca(r: Record<string, unknown>, a: LlamaFactoryAttrs): CanonicalRow {
  const c = a.columns;
  const msgs: Message[] = [];
  const system = c.system !== undefined ? optionalText(r[c.system], c.system) : undefined;
  if (system !== undefined) msgs.push({ role: 'system', content: system });
  if (c.history !== undefined && Array.isArray(r[c.history])) {
    (r[c.history] as unknown[]).forEach((pair, i) => {
      if (!Array.isArray(pair) || pair.length !== 2) fail(`${c.history}[${i}]`, 'expected a [question, answer] pair');
      const [q, answer] = pair as unknown[];
      msgs.push({ role: 'user', content: text(q, `${c.history}[${i}][0]`) }, { role: 'assistant', content: text(answer, `${c.history}[${i}][1]`) });
    });
  }
  // "instruction\ninput", each part only when non-empty, as LLaMA-Factory joins them.
  const parts = [c.prompt, c.query].flatMap((col) => (col !== undefined && r[col] !== undefined && r[col] !== null && r[col] !== '' ? [text(r[col], col, { allowEmpty: true })] : []));
  const prompt = parts.join('\n');
  if (prompt.trim() === '') fail(c.prompt ?? c.query, 'must not be empty');
  const format = canonicalFormatOf(a);
  if (format === 'text') return { text: prompt };
  const prompted: Message[] = [...msgs, { role: 'user', content: prompt }];
  const response = (col: string | undefined, what: string) => (col === undefined ? fail(undefined, `columns.${what} is not set`) : text(r[col], col));
  if (format === 'kto') {
    const label = r[c.kto_tag!];
    if (typeof label !== 'boolean') fail(c.kto_tag, `expected true or false, got ${typeName(label)}`);
    return { prompt: prompted, completion: [{ role: 'assistant', content: response(c.response, 'response') }], label: label as boolean };
  }
  if (format === 'preference') {
    const chosen = response(c.chosen, 'chosen');
    const rejected = response(c.rejected, 'rejected');
    if (chosen === rejected) fail(c.rejected, 'chosen and rejected are identical');
    return { prompt: prompted, chosen: [{ role: 'assistant', content: chosen }], rejected: [{ role: 'assistant', content: rejected }] };
  }
  const tools = c.tools !== undefined ? toolsOf(r[c.tools], c.tools) : undefined;
  return { messages: [...prompted, { role: 'assistant', content: response(c.response, 'response') }], ...(tools ? { tools } : {}) };
}

function sharegpt(r: Record<string, unknown>, a: LlamaFactoryAttrs): CanonicalRow {
  const c = a.columns;
  const t = a.tags;
  const key = c.messages ?? fail(undefined, 'columns.messages is not set');
  const turns = r[key];
  if (turns === undefined || turns === null) fail(key, 'required');
  if (!Array.isArray(turns)) fail(key, `expected array, got ${typeName(turns)}`);
  const list = turns as unknown[];
  const roleTag = t.role_tag ?? fail(undefined, 'tags.role_tag is not set');
  const contentTag = t.content_tag ?? fail(undefined, 'tags.content_tag is not set');
  const turnAt = (i: number) => {
    const turn = list[i];
    if (!isObject(turn)) fail(`${key}[${i}]`, `expected an object with ${roleTag} and ${contentTag}, got ${typeName(turn)}`);
    return turn as Record<string, unknown>;
  };

  let start = 0;
  let system: string | undefined;
  if (t.system_tag !== undefined && list.length > 0 && turnAt(0)[roleTag] === t.system_tag) {
    system = text(turnAt(0)[contentTag], `${key}[0].${contentTag}`, { allowEmpty: true });
    start = 1;
  } else if (c.system !== undefined) system = optionalText(r[c.system], c.system);

  // Turns alternate: user or observation, then assistant or function_call (LLaMA-Factory's accept_tags).
  const asking = [t.user_tag, t.observation_tag].filter((x): x is string => x !== undefined);
  const answering = [t.assistant_tag, t.function_tag].filter((x): x is string => x !== undefined);
  const message = (turn: Record<string, unknown>, field: string, allowed: string[]): Message => {
    const role = turn[roleTag];
    if (typeof role !== 'string' || !allowed.includes(role)) {
      fail(`${field}.${roleTag}`, `expected ${allowed.map((x) => JSON.stringify(x)).join(' | ')} here (turns alternate ${JSON.stringify(asking.join('/'))} and ${JSON.stringify(answering.join('/'))}), got ${JSON.stringify(role)}`);
    }
    const content = turn[contentTag];
    if (role === t.function_tag) return { role: 'assistant', content: '', tool_calls: toolCallsOf(content, `${field}.${contentTag}`) };
    if (role === t.observation_tag) return { role: 'tool', content: text(content, `${field}.${contentTag}`, { allowEmpty: true }) };
    return { role: role === t.user_tag ? 'user' : 'assistant', content: text(content, `${field}.${contentTag}`) };
  };
  const msgs: Message[] = system !== undefined && system !== '' ? [{ role: 'system', content: system }] : [];
  for (let i = start; i < list.length; i++) msgs.push(message(turnAt(i), `${key}[${i}]`, (i - start) % 2 === 0 ? asking : answering));
  const count = list.length - start;
  if (count === 0) fail(key, system !== undefined ? 'only a system turn' : 'must hold at least one turn');
  if (a.ranking && count % 2 === 0) fail(key, `a ranking conversation ends with a ${JSON.stringify(asking.join('/'))} turn (chosen and rejected answer it), got ${count} turns`);
  if (!a.ranking && count % 2 !== 0) fail(key, `must end with a ${JSON.stringify(answering.join('/'))} turn (the answer to learn), got ${count} turns`);

  const format = canonicalFormatOf(a);
  if (format === 'kto') {
    const label = r[c.kto_tag!];
    if (typeof label !== 'boolean') fail(c.kto_tag, `expected true or false, got ${typeName(label)}`);
    return { prompt: msgs.slice(0, -1), completion: msgs.slice(-1), label: label as boolean };
  }
  if (format === 'preference') {
    const answer = (col: string | undefined, what: string) => {
      if (col === undefined) return fail(undefined, `columns.${what} is not set`);
      const v = r[col];
      if (!isObject(v)) return fail(col, `expected an object with ${roleTag} and ${contentTag}, got ${typeName(v)}`);
      return message(v, col, answering);
    };
    const chosen = answer(c.chosen, 'chosen');
    const rejected = answer(c.rejected, 'rejected');
    if (JSON.stringify(chosen) === JSON.stringify(rejected)) fail(c.rejected, 'chosen and rejected are identical');
    return { prompt: msgs, chosen: [chosen], rejected: [rejected] };
  }
  const tools = c.tools !== undefined ? toolsOf(r[c.tools], c.tools) : undefined;
  return { messages: msgs, ...(tools ? { tools } : {}) };
}

// --- Planning: a spec dataset to the plan's PlannedDataset ----------------------------------------

const LLAMA_FACTORY_KEYS = ['formatting', 'ranking', 'columns', 'tags'] as const;

/**
 * A spec dataset as the plan records it: the source file, how to read it, and the canonical format
 * the job reads. `resolve` makes a spec path absolute; `problem` reports at a key of the dataset.
 * Reads the dataset_info.json it names (small, local): the plan then carries the entry's
 * attributes, and the run needs only the data file.
 */
export function planDataset(
  name: string,
  d: SpecDataset,
  resolve: (p: string) => string,
  problem: (at: (string | number)[], message: string) => void,
): Omit<PlannedDataset, 'mix'> | undefined {
  let file: string;
  let source: DatasetSource;
  if (d.dataset_info !== undefined) {
    const infoFile = resolve(d.dataset_info);
    if (infoFile.startsWith('s3://')) return void problem(['dataset_info'], 'a local dataset_info.json (its files are read relative to it)');
    let info: DatasetInfo;
    try {
      info = readDatasetInfo(infoFile);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return void problem(['dataset_info'], `${d.dataset_info}: ${code === 'ENOENT' ? 'does not exist' : (err as Error).message}`);
    }
    const entry = resolveEntry(info, infoFile, d.name!, d.dataset_info);
    if ('refused' in entry) return void problem(['name'], entry.refused);
    file = entry.file;
    source = { kind: 'llama-factory', attrs: entry.attrs, datasetInfo: infoFile, entry: d.name! };
  } else if (LLAMA_FACTORY_KEYS.some((k) => d[k] !== undefined)) {
    const resolved = llamaFactoryAttrs(d);
    if ('problem' in resolved) return void problem(resolved.problem.at, resolved.problem.message);
    file = resolve(d.path!);
    source = { kind: 'llama-factory', attrs: resolved.attrs };
  } else {
    file = resolve(d.path!);
    source = { kind: 'refinery', format: d.format! };
  }
  const canonical = source.kind === 'refinery' ? CANONICAL_FORMATS[source.format] : canonicalFormatOf(source.attrs);
  let format = canonical;
  if (source.kind === 'llama-factory' && d.format !== undefined && d.format !== canonical) {
    // A chat dataset can also feed ppo/grpo: its prompts.
    if (canonical === 'chat' && d.format === 'prompts') format = 'prompts';
    else return void problem(['format'], `this ${d.dataset_info !== undefined ? 'entry' : 'file'} reads as ${canonical} data; format may be "${canonical}"${canonical === 'chat' ? ' or "prompts"' : ''}`);
  }
  if (layoutOf(file) === 'text' && canonical !== 'text') {
    return void problem([d.dataset_info !== undefined ? 'name' : 'format'], `${path.basename(file)} is a .txt file: one text per line, read as text data (format: text, or columns: {prompt: text})`);
  }
  return { name, path: file, format, source, ...(d.val_size !== undefined ? { valSize: d.val_size } : {}) };
}

/** The canonical format each Refinery format becomes (alpaca and sharegpt: chat). */
const CANONICAL_FORMATS: Record<DatasetFormat, DatasetFormat> = { chat: 'chat', alpaca: 'chat', sharegpt: 'chat', text: 'text', preference: 'preference', prompts: 'prompts', kto: 'kto' };
