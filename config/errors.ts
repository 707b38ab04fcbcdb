/**
 * The error every expected configuration or local-stack failure throws (a missing or malformed
 * toolchain.json, a bad stack variable, a taken port, a missing binary): `message` is one line that
 * says what to do about it. It keeps the name it had when only the stack manager threw it: the
 * stack CLI (infra/stack/cli.ts) and `refinery` (client/cli.ts, by name) print it as one line.
 */
export class StackError extends Error {
  override readonly name = 'StackError';
}
