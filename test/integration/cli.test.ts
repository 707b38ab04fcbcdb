/**
 * Every CLI command through the real binary: --help works, and bad input gives one clear error line
 * (with a hint where there is one) and a non-zero exit, never a stack trace.
 */
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../config/paths.js';
import { testStackEnv } from '../helpers/env.js';

const BIN = path.join(REPO_ROOT, 'bin', 'refinery');

function refinery(args: string[]) {
  return execa(BIN, args, {
    reject: false,
    env: {
      ...testStackEnv(),
    },
  });
}

const COMMANDS = ['validate', 'run', 'status', 'list', 'retry', 'cancel', 'approve', 'reject', 'keygen', 'worker', 'codec-server', 'stack', 'make-tiny-model', 'gguf-generate', 'audit', 'report', 'logs', 'schedule', 'workers', 'model', 'promote', 'rollback', 'completion'];

describe('refinery CLI', () => {
  it.each(COMMANDS)('%s --help describes the command, with examples', async (cmd) => {
    const r = await refinery([cmd, '--help']);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`Usage: refinery ${cmd}`));
    expect(r.stdout).toMatch(new RegExp(`\nExamples:\n {2}\\$ (\\S+=\\S+ )?(source <\\()?refinery ${cmd}`));
  });

  it('--help lists the exit codes', async () => {
    const r = await refinery(['--help']);
    expect(r.stdout).toMatch(/\nExit codes:\n {2}0 .*\n {2}1 .*\n {2}2 .*\n {2}3 .*\n {2}4 .*\n {2}130 /);
  });

  const bad: [string, string[], RegExp][] = [
    ['validate: missing spec', ['validate', 'nope.yaml'], /^error: nope\.yaml: cannot read the spec: ENOENT$/m],
    ['run: missing spec', ['run', 'nope.yaml'], /^error: nope\.yaml: cannot read the spec/m],
    ['run: invalid demo id', ['run', path.join(REPO_ROOT, 'demo', 'pipeline.yaml'), '--id', 'Bad Id!'], /^error: /m],
    ['status: unknown run', ['status', 'no-such-run'], /^error: no run "no-such-run"/m],
    ['list: bad date', ['list', '--since', 'yesterday-ish'], /^error: --since "yesterday-ish" is not a date/m],
    ['retry: unknown run', ['retry', 'no-such-run', '--from-stage', 'sft'], /^error: cannot read run "no-such-run"/m],
    ['approve: missing flags', ['approve', 'x'], /required option/],
    ['approve: unknown run', ['approve', 'no-such-run', '--stage', 's', '--by', 'me', '--reason', 'r'], /^error: cannot approve/m],
    ['audit: unknown run', ['audit', 'no-such-run'], /^error: /m],
    ['audit verify: unsafe id', ['audit', 'verify', '../etc'], /^error: /m],
    ['report: unknown run', ['report', 'no-such-run'], /^error: /m],
    ['logs: unknown run', ['logs', 'no-such-run'], /^error: /m],
    ['schedule: bad cron', ['schedule', 'create', path.join(REPO_ROOT, 'demo', 'pipeline.yaml'), '--cron', 'every night'], /^error: /m],
    ['schedule: unknown id', ['schedule', 'describe', 'no-such-schedule'], /^error: /m],
    ['unknown command', ['frobnicate'], /unknown command/],
  ];
  it.each(bad)('%s: one clear error, non-zero exit, no stack trace', async (_name, args, message) => {
    const r = await refinery(args);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/\n\s+at .+:\d+:\d+/); // no stack frames
  });
});
