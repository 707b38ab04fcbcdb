/** One problem with user input, located precisely enough to fix without guessing. */
export interface InputProblem {
  file: string;
  line?: number;
  /** Path inside the document, e.g. `stages[2].hyper.learning_rate`, or a field of a record. */
  field?: string;
  message: string;
}

export function formatProblem(p: InputProblem): string {
  const where = p.line !== undefined ? `${p.file}:${p.line}` : p.file;
  return p.field ? `${where}: ${p.field}: ${p.message}` : `${where}: ${p.message}`;
}

/**
 * Bad spec or bad data. Never retried: the workflow maps it to a non-retryable failure and the
 * CLI prints each problem on one line.
 */
export class InputError extends Error {
  constructor(readonly problems: InputProblem[]) {
    super(problems.map(formatProblem).join('\n'));
    this.name = 'InputError';
  }
}

/** `stages[2].hyper.learning_rate` from zod's path array. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else out += out ? `.${String(key)}` : String(key);
  }
  return out;
}
