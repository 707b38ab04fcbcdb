/** An error the CLI prints as one line (plus a hint) and turns into an exit code. */
export class CliError extends Error {
  constructor(message: string, readonly hint?: string, readonly exitCode = 1) {
    super(message);
    this.name = 'CliError';
  }
}
