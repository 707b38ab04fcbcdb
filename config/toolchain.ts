/**
 * The one reader of `<state dir>/toolchain.json`, where infra/bootstrap.sh records the binaries it
 * installed: the Temporal CLI and test server, MinIO, the jobs' Python, and llama.cpp's tools.
 *
 * Two ways to read it, for two kinds of caller:
 * - `readToolchain()`: the stack manager, which needs the servers' binaries; a missing or
 *   incomplete file is a `StackError` that says to run bootstrap.
 * - `recordedToolchain()`: worker settings (config/worker.ts) that fall back to it for one path
 *   each; a missing file is `undefined`, not an error.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { StackError } from './errors.js';
import { stateDir } from './paths.js';

/** What every toolchain error says to do. */
export const BOOTSTRAP_FIX = 'run bash infra/bootstrap.sh';

export interface Toolchain {
  temporal: string;
  temporalTestServer: string;
  minio: string;
  python: string;
}

const ToolchainSchema = z.object({
  temporal: z.string().min(1),
  temporalTestServer: z.string().min(1),
  minio: z.string().min(1),
  python: z.string().min(1),
});

/** `<REFINERY_STATE_DIR or <repo>/.refinery>/toolchain.json`, where infra/bootstrap.sh writes it. */
export function defaultToolchainPath(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(stateDir(env), 'toolchain.json');
}

/**
 * Reads the binary paths written by infra/bootstrap.sh. Only parses: each start function checks
 * that its own binary exists, so a missing Python env does not stop the servers.
 * @throws StackError if the file is missing or malformed ("run bash infra/bootstrap.sh").
 */
export function readToolchain(file: string = defaultToolchainPath()): Toolchain {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new StackError(`toolchain file ${file} not found; ${BOOTSTRAP_FIX}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new StackError(`toolchain file ${file} is not valid JSON; ${BOOTSTRAP_FIX} to rewrite it`);
  }
  const parsed = ToolchainSchema.safeParse(json);
  if (!parsed.success) {
    throw new StackError(`toolchain file ${file} lacks ${parsed.error.issues[0]?.path.join('.') ?? 'a field'}; ${BOOTSTRAP_FIX} to rewrite it`);
  }
  return parsed.data;
}

/**
 * Everything infra/bootstrap.sh recorded, unchecked, or undefined before it has run.
 * @throws SyntaxError if the file is not JSON.
 */
export function recordedToolchain(env: NodeJS.ProcessEnv = process.env): Record<string, unknown> | undefined {
  const file = defaultToolchainPath(env);
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>) : undefined;
}
