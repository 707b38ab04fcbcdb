/**
 * Reads a pipeline spec (YAML or JSON) and checks it against the schema, reporting every problem
 * with its file, line and path in the document.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { isMap, isNode, isPair, isScalar, LineCounter, parseDocument, type Document } from 'yaml';
import type { z } from 'zod';
import { formatPath, InputError, type InputProblem } from './errors.js';
import { PipelineSpec } from './schema.js';
import { HYPER_ALIASES } from './stage-params.js';

export interface LoadedSpec {
  spec: PipelineSpec;
  /** Absolute path of the spec file; relative dataset paths resolve against its folder. */
  file: string;
  text: string;
  sha256: string;
  /** Line of a document path such as ['stages', 2, 'dataset'], for later semantic checks. */
  lineOf(pathInDoc: readonly PropertyKey[]): number | undefined;
}

export async function loadSpecFile(file: string): Promise<LoadedSpec> {
  const abs = path.resolve(file);
  let text: string;
  try {
    text = await readFile(abs, 'utf8');
  } catch (err) {
    throw new InputError([{ file, message: `cannot read the spec: ${(err as NodeJS.ErrnoException).code ?? String(err)}` }]);
  }
  return parseSpec(text, abs, file);
}

/** `displayName` is what error messages show (the path as the user typed it). */
export function parseSpec(text: string, abs: string, displayName = abs): LoadedSpec {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false });
  if (doc.errors.length > 0) {
    throw new InputError(
      doc.errors.map((e) => ({
        file: displayName,
        // linePos is only filled in with prettyErrors; pos (offsets) always is.
        line: e.linePos?.[0]?.line ?? lineCounter.linePos(e.pos[0]).line,
        message: `invalid YAML: ${e.message.split('\n')[0]}`,
      })),
    );
  }
  const lineOf = (p: readonly PropertyKey[]) => lineOfPath(doc, lineCounter, p);
  // reportInput: without it zod leaves `input` out of every issue, and describeIssue would call a
  // value of the wrong type "required".
  const parsed = PipelineSpec.safeParse(doc.toJS(), { reportInput: true });
  if (!parsed.success) {
    throw new InputError(parsed.error.issues.map((issue) => problemFromIssue(issue, displayName, lineOf)));
  }
  return {
    spec: parsed.data,
    file: abs,
    text,
    sha256: createHash('sha256').update(text).digest('hex'),
    lineOf,
  };
}

function problemFromIssue(
  issue: z.core.$ZodIssue,
  file: string,
  lineOf: (p: readonly PropertyKey[]) => number | undefined,
): InputProblem {
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0] ?? '';
    const at = [...issue.path, key];
    return {
      file,
      line: lineOf(at),
      field: formatPath(at),
      message: `unknown key${issue.keys.length > 1 ? `s ${issue.keys.map((k) => `"${k}"`).join(', ')}` : ''}${aliasHint(issue.path, issue.keys)}`,
    };
  }
  return { file, line: lineOf(issue.path), field: formatPath(issue.path) || '(document)', message: describeIssue(issue) };
}

/** TrainingArguments names where Refinery has its own: say which. */
function aliasHint(at: readonly PropertyKey[], keys: readonly string[]): string {
  if (at[at.length - 1] !== 'hyper') return '';
  const hints = keys.filter((k) => Object.hasOwn(HYPER_ALIASES, k)).map((k) => `TrainingArguments' ${k}: Refinery's is ${HYPER_ALIASES[k]}`);
  return hints.length > 0 ? ` (${hints.join('; ')})` : '';
}

function describeIssue(issue: z.core.$ZodIssue): string {
  if (issue.code === 'invalid_type') {
    return issue.input === undefined ? `required, expected ${issue.expected}` : `expected ${issue.expected}`;
  }
  if (issue.code === 'invalid_value') return `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(' | ')}`;
  if (issue.code === 'invalid_union') return 'does not match any allowed form';
  return issue.message;
}

/** The line of the deepest node that exists along `p` (a missing key points at its parent). */
function lineOfPath(doc: Document, lc: LineCounter, p: readonly PropertyKey[]): number | undefined {
  let node: unknown = doc.contents;
  let line = offsetLine(lc, node);
  for (const key of p) {
    if (!isNode(node)) break;
    if (isMap(node)) {
      const pair = node.items.find((it) => isPair(it) && isScalar(it.key) && it.key.value === key);
      if (!pair) break;
      line = offsetLine(lc, pair.key) ?? line;
      node = pair.value;
      if (isNode(node) && !isMap(node) && !('items' in node)) line = offsetLine(lc, node) ?? line;
    } else if ('items' in node && Array.isArray(node.items) && typeof key === 'number') {
      node = node.items[key];
      line = offsetLine(lc, node) ?? line;
    } else break;
  }
  return line;
}

function offsetLine(lc: LineCounter, node: unknown): number | undefined {
  if (isNode(node) && node.range) return lc.linePos(node.range[0]).line;
  return undefined;
}
