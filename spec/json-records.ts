/**
 * Reads the records of a dataset file as a stream, in bounded memory, whatever shape the file has:
 *   JSON Lines            one record per line (Refinery's own form, `.jsonl`)
 *   a JSON array          `[ {...}, {...} ]`, LLaMA-Factory's usual `.json` (any layout: one record
 *                         over many lines, many records on one line)
 *   text lines            `.txt`: each non-blank line is one `{"text": line}` record (pretraining)
 * `.json` and `.jsonl` are told apart by their first byte, as HF `datasets`' json loader (which
 * LLaMA-Factory uses) accepts both under either name.
 *
 * Every record comes with the line it starts on, so problems can name file:line. A record longer
 * than MAX_RECORD_BYTES is refused by its length, without holding it: memory stays bounded by
 * that limit plus one read chunk, however large the file.
 */
import type { Readable } from 'node:stream';

/** Longer records (lines, array elements) are refused without parsing (a 100 MB record is a mistake, not a sample). */
export const MAX_RECORD_BYTES = 10 * 1024 * 1024;

/** How a file's bytes hold its records. */
export type FileLayout = 'json' | 'text';

/** One record read, or a problem where one should have been. */
export interface RawRecord {
  /** 1-based line where the record starts. */
  line: number;
  value?: unknown;
  /** What is wrong at that line (invalid JSON, too long, broken array). */
  error?: string;
  /** The rest of the file cannot be read as records (a broken array): nothing follows. */
  fatal?: boolean;
}

/** `.txt` files are text lines; everything else is JSON (lines or an array, by its first byte). */
export function layoutOf(fileName: string): FileLayout {
  return /\.txt$/i.test(fileName) ? 'text' : 'json';
}

export interface ReadCounter {
  bytesRead: number;
  /** Each chunk as read (to hash the source bytes in the same pass). */
  onChunk?: (chunk: Buffer) => void;
}

/** The records of a stream; `counter.bytesRead` advances as chunks are consumed. */
export async function* readRecords(input: Readable, layout: FileLayout, counter: ReadCounter = { bytesRead: 0 }): AsyncGenerator<RawRecord> {
  const chunks = countedChunks(input, counter);
  if (layout === 'text') {
    yield* textLines(chunks);
    return;
  }
  // Peek at the first non-blank byte to choose between an array and JSON Lines.
  // (Chunks may be tiny: gather until the BOM, if any, is whole and a non-blank byte is in sight.)
  let head = Buffer.alloc(0);
  let first = -1;
  while (first === -1 || head.length < 3) {
    const next = await chunks.next();
    if (next.done) break;
    head = Buffer.concat([head, next.value]);
    first = firstNonBlank(stripBom(head));
  }
  const all = prepend(stripBom(head), chunks);
  yield* first === 0x5b /* [ */ ? arrayElements(all) : jsonLines(all);
}

/** JSON Lines: each non-blank line one JSON value. */
async function* jsonLines(chunks: AsyncIterable<Buffer>): AsyncGenerator<RawRecord> {
  for await (const { line, text, oversizedBytes } of lines(chunks)) {
    if (oversizedBytes !== undefined) {
      yield { line, error: `line is ${oversizedBytes} bytes, more than the ${MAX_RECORD_BYTES} allowed` };
      continue;
    }
    const trimmed = text!.replace(/\r$/, '');
    if (trimmed.trim() === '') continue;
    yield parse(trimmed, line);
  }
}

/** Text lines: each non-blank line one `{text}` record (its line ending removed, nothing else). */
async function* textLines(chunks: AsyncIterable<Buffer>): AsyncGenerator<RawRecord> {
  let first = true;
  for await (const { line, text, oversizedBytes } of lines(chunks)) {
    if (oversizedBytes !== undefined) {
      yield { line, error: `line is ${oversizedBytes} bytes, more than the ${MAX_RECORD_BYTES} allowed` };
      continue;
    }
    let t = text!.replace(/\r$/, '');
    if (first && t.charCodeAt(0) === 0xfeff) t = t.slice(1);
    first = false;
    if (t.trim() === '') continue;
    yield { line, value: { text: t } };
  }
}

function parse(text: string, line: number): RawRecord {
  try {
    return { line, value: JSON.parse(text) as unknown };
  } catch (err) {
    return { line, error: `invalid JSON (${(err as Error).message})` };
  }
}

/**
 * Splits a byte stream into lines without ever holding more than MAX_RECORD_BYTES of one line:
 * an oversized line is reported by its length only.
 */
async function* lines(chunks: AsyncIterable<Buffer>): AsyncGenerator<{ line: number; text?: string; oversizedBytes?: number }> {
  let parts: Buffer[] = [];
  let length = 0;
  let overflowing = false;
  let line = 0;
  const emit = () => {
    line++;
    const item = overflowing ? { line, oversizedBytes: length } : { line, text: Buffer.concat(parts).toString('utf8') };
    parts = [];
    length = 0;
    overflowing = false;
    return item;
  };
  const append = (piece: Buffer) => {
    length += piece.length;
    if (overflowing) return;
    if (length > MAX_RECORD_BYTES) {
      overflowing = true;
      parts = [];
    } else if (piece.length > 0) parts.push(Buffer.from(piece));
  };
  for await (const chunk of chunks) {
    let start = 0;
    for (let nl = chunk.indexOf(0x0a, start); nl !== -1; nl = chunk.indexOf(0x0a, start)) {
      append(chunk.subarray(start, nl));
      yield emit();
      start = nl + 1;
    }
    append(chunk.subarray(start));
  }
  if (length > 0) yield emit();
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const NEWLINE = 0x0a;
const COMMA = 0x2c;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const isBlank = (b: number) => b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;

/**
 * The elements of one top-level JSON array, each parsed on its own. A byte scanner tracks only
 * what delimits elements (nesting depth, strings, escapes): the bytes of the current element are
 * kept until it closes (or dropped once it passes MAX_RECORD_BYTES), and JSON.parse sees one
 * element at a time.
 */
async function* arrayElements(chunks: AsyncIterable<Buffer>): AsyncGenerator<RawRecord> {
  type State = 'open' | 'before' | 'first' | 'element' | 'after' | 'closed';
  let state: State = 'open';
  let line = 1;
  // The element being read.
  let startLine = 0;
  let depth = 0; // 0 inside a scalar (number, true, false, null) or a top-level string
  let scalar = false;
  let inString = false;
  let escaped = false;
  let parts: Buffer[] = [];
  let size = 0;
  let lastEnd = 0; // line of the end of the previous element, for messages

  const done = (): RawRecord => {
    const record: RawRecord =
      size > MAX_RECORD_BYTES
        ? { line: startLine, error: `record is ${size} bytes, more than the ${MAX_RECORD_BYTES} allowed` }
        : parse(Buffer.concat(parts).toString('utf8'), startLine);
    parts = [];
    size = 0;
    lastEnd = line;
    state = 'after';
    return record;
  };
  const keep = (chunk: Buffer, from: number, to: number) => {
    size += to - from;
    if (size > MAX_RECORD_BYTES) parts = [];
    else if (to > from) parts.push(Buffer.from(chunk.subarray(from, to)));
  };
  const broken = (message: string): RawRecord => ({ line, error: message, fatal: true });

  for await (const chunk of chunks) {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (state === 'element') {
        // Scan to the end of the element or of the chunk, keeping its bytes.
        const from = i;
        let end = -1;
        for (; i < n; i++) {
          const b = chunk[i]!;
          if (b === NEWLINE) line++;
          if (inString) {
            if (escaped) escaped = false;
            else if (b === BACKSLASH) escaped = true;
            else if (b === QUOTE) {
              inString = false;
              if (depth === 0 && !scalar) {
                end = i + 1;
                break;
              }
            }
          } else if (scalar) {
            if (isBlank(b) || b === COMMA || b === CLOSE_BRACKET) {
              end = i; // the delimiter is not part of the element
              break;
            }
          } else if (b === QUOTE) inString = true;
          else if (b === OPEN_BRACE || b === OPEN_BRACKET) depth++;
          else if (b === CLOSE_BRACE || b === CLOSE_BRACKET) {
            depth--;
            if (depth === 0) {
              end = i + 1;
              break;
            }
          }
        }
        if (end === -1) {
          keep(chunk, from, n);
          break;
        }
        keep(chunk, from, end);
        // A scalar's delimiter is looked at again in state "after"; a NEWLINE delimiter was counted.
        if (scalar && chunk[end] === NEWLINE) line--;
        i = end;
        yield done();
        continue;
      }
      const b = chunk[i]!;
      if (isBlank(b)) {
        if (b === NEWLINE) line++;
        i++;
        continue;
      }
      switch (state as State) {
        case 'open':
          if (b !== OPEN_BRACKET) {
            yield broken(`expected a JSON array ("[") or JSON Lines, got ${show(b)}`);
            return;
          }
          state = 'first';
          i++;
          continue;
        case 'first':
        case 'before':
          if (b === CLOSE_BRACKET && state === 'first') {
            state = 'closed';
            i++;
            continue;
          }
          if (b === CLOSE_BRACKET || b === COMMA) {
            yield broken(`expected a record after the "," that follows the record ending on line ${lastEnd}, got ${show(b)}`);
            return;
          }
          startLine = line;
          depth = 0;
          scalar = b !== OPEN_BRACE && b !== OPEN_BRACKET && b !== QUOTE;
          inString = false;
          escaped = false;
          state = 'element';
          continue; // the element loop reads its first byte
        case 'after':
          if (b === COMMA) state = 'before';
          else if (b === CLOSE_BRACKET) state = 'closed';
          else {
            yield broken(`expected "," or "]" after the record that starts on line ${startLine}, got ${show(b)}`);
            return;
          }
          i++;
          continue;
        case 'closed':
          yield broken(`unexpected ${show(b)} after the end of the JSON array`);
          return;
      }
    }
  }
  if (state === 'element' && scalar && !inString) yield done();
  if (state !== 'closed') yield broken(state === 'element' ? `the record that starts on line ${startLine} is not closed at the end of the file` : 'the JSON array is not closed ("]") at the end of the file');
}

function show(b: number): string {
  return b >= 0x20 && b < 0x7f ? JSON.stringify(String.fromCharCode(b)) : `byte 0x${b.toString(16).padStart(2, '0')}`;
}

function firstNonBlank(buf: Buffer): number {
  for (const b of buf) if (!isBlank(b)) return b;
  return -1;
}

function stripBom(buf: Buffer): Buffer {
  return buf.length >= 3 && buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf ? buf.subarray(3) : buf;
}

async function* countedChunks(input: Readable, counter: ReadCounter): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of input as AsyncIterable<Buffer | string>) {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      counter.bytesRead += buf.length;
      counter.onChunk?.(buf);
      yield buf;
    }
  } finally {
    input.destroy();
  }
}

async function* prepend(head: Buffer, rest: AsyncGenerator<Buffer>): AsyncGenerator<Buffer> {
  try {
    yield head;
    for (;;) {
      const next = await rest.next();
      if (next.done) return;
      yield next.value;
    }
  } finally {
    await rest.return(undefined);
  }
}
