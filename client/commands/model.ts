/**
 * `refinery model push DIR --name NAME` and `refinery model list`: base models stored in the bucket
 * from wherever they are on disk (storage/models.ts), so that a spec's `base_model: NAME` runs on a
 * cluster whose workers share no disk with the CLI.
 */
import { hostname } from 'node:os';
import path from 'node:path';
import { stat } from 'node:fs/promises';
import { isModelName, listModels, nameModel, pushModelDirectory, type ModelRecord, type PushPhase } from '../../storage/models.js';
import { ObjectStore } from '../../storage/object-store.js';
import { CliError } from '../errors.js';
import { whoAmI } from './run.js';
import { EXIT } from '../exit-codes.js';

export interface PushOptions {
  name: string;
  /** The storage prefix of the specs that will use it (their `storage.prefix`, default "refinery"). */
  prefix: string;
  by?: string;
  store?: ObjectStore;
  onProgress?: (p: PushPhase) => void;
  signal?: AbortSignal;
}

export interface PushResult extends ModelRecord {
  alreadyCommitted: boolean;
  skippedFiles: number;
  seconds: number;
}

export async function pushModel(dir: string, options: PushOptions): Promise<PushResult> {
  if (!isModelName(options.name)) throw new CliError(`model name "${options.name}" is not valid`, 'use letters, digits, ".", "_" and "-" (no "/"), at most 100 characters', EXIT.badInput);
  if (!(await stat(dir).then((s) => s.isDirectory()).catch(() => false))) throw new CliError(`${dir} is not a directory`, 'push a Hugging Face model directory (config.json, *.safetensors, tokenizer files)', EXIT.badInput);
  const store = options.store ?? new ObjectStore();
  await store.ensureBucket();
  const started = Date.now();
  const pushed = await pushModelDirectory(store, { dir, prefix: options.prefix, ...(options.onProgress ? { onProgress: options.onProgress } : {}), ...(options.signal ? { signal: options.signal } : {}) });
  const record = await nameModel(store, options.prefix, options.name, pushed, { by: whoAmI(options.by), source: `${hostname()}:${path.resolve(dir)}` });
  return { ...record, alreadyCommitted: pushed.alreadyCommitted, skippedFiles: pushed.skippedFiles, seconds: (Date.now() - started) / 1000 };
}

export async function listPushedModels(options: { prefix: string; store?: ObjectStore }): Promise<ModelRecord[]> {
  return listModels(options.store ?? new ObjectStore(), options.prefix);
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(v >= 100 ? 0 : 1)} ${units[u]}`;
}

/**
 * A push's progress as one line: a bar over the bytes of the current phase (hashing, then
 * uploading), the rate, and the files the bucket already had. Redrawn in place on a terminal;
 * elsewhere (CI logs) printed every few seconds.
 */
export function progressPrinter(out: NodeJS.WriteStream, name: string): { update: (p: PushPhase) => void; done: () => void } {
  const tty = Boolean(out.isTTY);
  let last = 0;
  let phaseStart = { phase: '', at: Date.now() };
  let line = '';
  const update = (p: PushPhase) => {
    const now = Date.now();
    if (p.phase !== phaseStart.phase) phaseStart = { phase: p.phase, at: now };
    const finished = p.bytesDone >= p.bytes && p.filesDone >= p.files;
    if (now - last < (tty ? 200 : 5000) && !finished) return;
    last = now;
    const frac = p.bytes > 0 ? Math.min(1, p.bytesDone / p.bytes) : 1;
    const width = 24;
    const bar = '█'.repeat(Math.round(frac * width)).padEnd(width, '░');
    const rate = p.bytesDone / Math.max(0.001, (now - phaseStart.at) / 1000);
    const skipped = p.phase === 'uploading' && p.skippedFiles > 0 ? `, ${p.skippedFiles} already stored` : '';
    line = `${name}: ${p.phase.padEnd(9)} ${bar} ${(frac * 100).toFixed(0).padStart(3)}%  ${formatBytes(p.bytesDone)} / ${formatBytes(p.bytes)}  ${formatBytes(rate)}/s  ${p.filesDone}/${p.files} files${skipped}`;
    out.write(tty ? `\r${line}\x1b[K` : `${line}\n`);
  };
  return { update, done: () => tty && line && out.write('\n') };
}
