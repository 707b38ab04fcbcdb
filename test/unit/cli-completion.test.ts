// `refinery completion bash|zsh` (client/completion.ts), the help examples (client/help-examples.ts)
// and the exit codes errors map to (client/errors.ts, client/exit-codes.ts).
import { spawnSync } from 'node:child_process';
import { Command, CommanderError } from 'commander';
import { describe, expect, it } from 'vitest';
import { completionScript, completionTree } from '../../client/completion.js';
import { CliError, describeError } from '../../client/errors.js';
import { EXIT, exitCodeForRunState, exitCodesHelp } from '../../client/exit-codes.js';
import { addHelpExamples, commandPaths } from '../../client/help-examples.js';
import { InputError } from '../../spec/errors.js';

function program(): Command {
  const p = new Command('refinery');
  p.command('status').argument('<runId>').option('--json', 'machine-readable output');
  p.command('stack').argument('<action>');
  const worker = p.command('worker').option('--queue <q...>', 'queues');
  worker.command('drain').option('--host <host>', 'a host').option('--no-wait', "don't wait");
  const audit = p.command('audit').option('--prefix <p>', "the run's: prefix");
  audit.command('verify').configureHelp({ showGlobalOptions: true });
  return p;
}

/** What bash completes for the words typed so far (the last one: the word under the cursor). */
function bashComplete(script: string, words: string[]): string[] {
  const r = spawnSync('bash', ['-c', `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _refinery; echo "\${COMPREPLY[*]}"`], { encoding: 'utf8' });
  expect(r.stderr).toBe('');
  return r.stdout.trim().split(/\s+/).filter(Boolean);
}

const hasZsh = spawnSync('zsh', ['--version']).status === 0;

describe('completion', () => {
  it('walks the program: subcommands, own options, and the parent options a command shows', () => {
    const tree = completionTree(program());
    expect(tree.map((n) => n.path)).toEqual(['refinery', 'refinery status', 'refinery stack', 'refinery worker', 'refinery worker drain', 'refinery audit', 'refinery audit verify']);
    expect(tree.find((n) => n.path === 'refinery worker drain')!.options.map((o) => o.flag)).toEqual(['--host', '--no-wait', '--help']);
    expect(tree.find((n) => n.path === 'refinery audit verify')!.options.map((o) => o.flag)).toEqual(['--prefix', '--help']);
  });

  it('the bash script parses and completes commands, subcommands and options', () => {
    const script = completionScript(program(), 'bash');
    expect(spawnSync('bash', ['-n'], { input: script }).status).toBe(0);
    expect(bashComplete(script, ['refinery', 'sta'])).toEqual(['status', 'stack']);
    expect(bashComplete(script, ['refinery', 'worker', ''])).toEqual(['drain', '--queue', '--help']);
    expect(bashComplete(script, ['refinery', 'worker', '--queue', 'q1', 'drain', '--'])).toEqual(['--host', '--no-wait', '--help']);
    expect(bashComplete(script, ['refinery', 'status', 'run-1', '--j'])).toEqual(['--json']);
    expect(bashComplete(script, ['refinery', 'status', 'ru'])).toEqual([]); // a run id or a file: bash's default
  });

  it.skipIf(!hasZsh)('the zsh script parses', () => {
    expect(spawnSync('zsh', ['-n'], { input: completionScript(program(), 'zsh') }).status).toBe(0);
  });

  it('the zsh script describes each item and escapes quotes and colons', () => {
    const script = completionScript(program(), 'zsh');
    expect(script).toMatch(/^#compdef refinery$/m);
    expect(script).toContain(`'--prefix:the run'\\''s: prefix'`);
    expect(script).toContain("'drain:'");
  });
});

describe('help examples', () => {
  it('go after the help of the commands that have them', () => {
    const p = program();
    addHelpExamples(p, { 'worker drain': ['refinery worker drain --host gpu-7'] });
    expect(commandPaths(p).map((c) => c.path)).toContain('worker drain');
    const drain = commandPaths(p).find((c) => c.path === 'worker drain')!.command;
    let help = '';
    drain.configureOutput({ writeOut: (s) => (help += s) });
    drain.outputHelp();
    expect(help).toMatch(/Examples:\n {2}\$ refinery worker drain --host gpu-7\n$/);
  });
});

describe('exit codes', () => {
  it('each kind of failure maps to its documented code', () => {
    expect(describeError(new InputError([{ file: 'a.yaml', line: 3, message: 'bad' }]))).toEqual({ error: 'a.yaml:3: bad', exitCode: EXIT.badInput });
    expect(describeError(new CliError('no run "x"', 'see "refinery list"', EXIT.notFound))).toEqual({ error: 'no run "x"', hint: 'see "refinery list"', exitCode: 4 });
    expect(describeError(new CommanderError(1, 'commander.unknownCommand', "error: unknown command 'x'"))).toMatchObject({ error: "unknown command 'x'", exitCode: 2 });
    expect(describeError(new CommanderError(0, 'commander.helpDisplayed', '(outputHelp)')).exitCode).toBe(0);
    expect(describeError(Object.assign(new Error('workflow not found'), { name: 'WorkflowNotFoundError' })).exitCode).toBe(EXIT.notFound);
    expect(describeError(Object.assign(new Error('14 UNAVAILABLE'), { code: 14 })).exitCode).toBe(EXIT.unreachable);
    expect(describeError(new Error('boom'))).toEqual({ error: 'boom', exitCode: 1 });
  });

  it('a watched run: completed or unchanged 0, cancelled 130, failed 1; --help lists them all', () => {
    expect(['completed', 'unchanged', 'cancelled', 'failed'].map(exitCodeForRunState)).toEqual([0, 0, 130, 1]);
    for (const code of Object.values(EXIT)) expect(exitCodesHelp()).toMatch(new RegExp(`^ {2}${code} +\\S`, 'm'));
  });
});
