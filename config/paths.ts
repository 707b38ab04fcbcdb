/**
 * Where Refinery keeps things on this machine: the repository root and the state folder
 * (REFINERY_STATE_DIR, default <repo>/.refinery: databases, logs, pid files, scratch, toolchain.json).
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (the folder above config/). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Absolute path of the state folder: $REFINERY_STATE_DIR, else <repo>/.refinery. */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.resolve(env.REFINERY_STATE_DIR || path.join(REPO_ROOT, '.refinery'));
}
