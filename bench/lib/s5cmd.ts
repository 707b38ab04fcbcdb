/**
 * s5cmd v2.3.0, the peer for checkpoint transfers: installed with `go install` into
 * ~/.cache/refinery/s5cmd-v2.3.0/ when missing. Where the module proxy refuses the version list
 * that `go install pkg@version` asks for (some mirrors do), the same tagged module is downloaded
 * with `go mod download` and built from its own go.mod/go.sum (same sources, same version).
 */
import { existsSync } from 'node:fs';
import { chmod, cp, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { log } from './common.js';

export const S5CMD_VERSION = 'v2.3.0';
const MODULE = 'github.com/peak/s5cmd/v2';

export function s5cmdPath(): string {
  return path.join(homedir(), '.cache', 'refinery', `s5cmd-${S5CMD_VERSION}`, 's5cmd');
}

export async function ensureS5cmd(): Promise<string> {
  const bin = s5cmdPath();
  if (existsSync(bin)) return bin;
  const dir = path.dirname(bin);
  await mkdir(dir, { recursive: true });
  log(`installing s5cmd ${S5CMD_VERSION} into ${dir}`);
  const ldflags = `-X=${MODULE}/version.Version=${S5CMD_VERSION} -X=${MODULE}/version.GitCommit=release`;
  const install = await execa('go', ['install', `-ldflags=${ldflags}`, `${MODULE}@${S5CMD_VERSION}`], { env: { ...process.env, GOBIN: dir }, reject: false });
  if (install.exitCode === 0 && existsSync(bin)) return bin;
  log(`go install failed (${install.stderr.trim().split('\n').at(-1)}); building the downloaded module instead`);
  const dl = await execa('go', ['mod', 'download', '-json', `${MODULE}@${S5CMD_VERSION}`], { env: { ...process.env, GOFLAGS: '-mod=mod' } });
  const { Dir } = JSON.parse(dl.stdout) as { Dir: string };
  const src = await mkdtemp(path.join(tmpdir(), 's5cmd-src-'));
  try {
    await cp(Dir, src, { recursive: true });
    await execa('chmod', ['-R', 'u+w', src]);
    // The module zip carries only part of vendor/: resolve dependencies from go.sum instead.
    await rm(path.join(src, 'vendor'), { recursive: true, force: true });
    await execa('go', ['build', '-mod=mod', `-ldflags=${ldflags}`, '-o', bin, '.'], { cwd: src });
    await chmod(bin, 0o755);
  } finally {
    await rm(src, { recursive: true, force: true });
  }
  return bin;
}
