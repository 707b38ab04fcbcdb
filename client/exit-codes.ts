/**
 * The exit codes of `refinery`, in one place: scripts branch on them, README's "Exit codes" table
 * and `refinery --help` list them from here.
 */
export const EXIT = {
  /** Done; a check found nothing wrong; a watched run completed (or was unchanged). */
  ok: 0,
  /** A check found problems (audit verify, model aliases), a watched run failed, or anything unexpected. */
  problems: 1,
  /** Bad input: a spec, a flag or an argument (nothing was started). */
  badInput: 2,
  /** Temporal or the bucket cannot be reached. */
  unreachable: 3,
  /** No such run, schedule or live worker. */
  notFound: 4,
  /** Interrupted (^C), or a watched run was cancelled. */
  interrupted: 130,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

const MEANINGS: [ExitCode, string][] = [
  [EXIT.ok, 'ok (a watched run completed or was unchanged)'],
  [EXIT.problems, 'a check found problems, a watched run failed, or an unexpected error'],
  [EXIT.badInput, 'bad input: spec, flags or arguments'],
  [EXIT.unreachable, 'cannot reach Temporal or the bucket'],
  [EXIT.notFound, 'no such run, schedule or worker'],
  [EXIT.interrupted, 'interrupted, or a watched run was cancelled'],
];

/** The epilogue of `refinery --help`. */
export function exitCodesHelp(): string {
  return ['', 'Exit codes:', ...MEANINGS.map(([code, meaning]) => `  ${String(code).padEnd(4)}${meaning}`)].join('\n');
}

/** A watched run's exit code from its final state. */
export function exitCodeForRunState(state: string): ExitCode {
  if (state === 'completed' || state === 'unchanged') return EXIT.ok;
  return state === 'cancelled' ? EXIT.interrupted : EXIT.problems;
}
