/**
 * Checks a GGUF export the only way that counts: llama.cpp (node-llama-cpp's prebuilt CPU build)
 * loads the file and generates. The gguf job writes the Hugging Face model's greedy tokens for a
 * few check prompts (greedy_reference.json); for f16 llama.cpp must produce exactly those tokens.
 * Quantized files must load and, fed the prompt and the reference tokens one by one (teacher
 * forcing, so one early difference does not decide the rest), pick a token among the HF model's 5
 * likeliest at MIN_TOKEN_AGREEMENT of the positions: a broken quantization (wrong scales, a
 * corrupted tensor) predicts noise and fails, an honest one keeps its choices among HF's. Given llama.cpp's tokenizer test vectors for the model's vocab
 * (`tokenizerVectors`), the file's tokenizer must reproduce every one of them.
 *
 * llama.cpp runs in a process of its own (activities/gguf-check-child.ts measures, this module
 * judges): a native crash while loading or generating fails that check, never the worker.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { cancellationSignal } from '@temporalio/activity';
import { execa } from 'execa';
import { SECRET_ENV } from './job-process.js';

export interface GreedyReference {
  max_new_tokens: number;
  /** argmax_tokens[i]: the HF model's greedy prediction of token i+1 of prompt + greedy tokens (absent in older exports). */
  /** top_tokens[i]: its 5 likeliest tokens there (absent in older exports). */
  /** margins[i]: its top-1 minus top-2 logit there, in nats (absent in older exports). */
  prompts: { text: string; prompt_tokens: number[]; greedy_tokens: number[]; argmax_tokens?: number[]; top_tokens?: number[][]; margins?: number[] }[];
}

export interface GgufFileCheck {
  file: string;
  type: string;
  loaded: boolean;
  /** Fraction of check prompts whose greedy continuation equals the HF model's. */
  greedyMatch: number;
  /** llama.cpp's tokenization of the prompt text equals the HF tokenizer's. */
  tokenizerMatch: number;
  /** Fraction of the reference's positions where the file's greedy token is HF's (teacher forcing). */
  tokenAgreement: number;
  /** Fraction of those positions where the file's greedy token is among HF's 5 likeliest (equals tokenAgreement for older references). */
  top5Agreement: number;
  /** Fraction of the confident positions (HF margin ≥ CONFIDENT_MARGIN) where the file's greedy token is HF's (absent for references without margins). */
  confidentAgreement?: number;
  /** How many such positions the reference has (absent for references without margins). */
  confidentPositions?: number;
  /** Fraction of the given tokenizer test vectors whose ids llama.cpp reproduces (absent without vectors). */
  vectorMatch?: number;
  sample: string;
}

/** One of llama.cpp's tokenizer test vectors (models/ggml-vocab-*.gguf.inp / .out). */
export interface TokenizerVector {
  text: string;
  ids: number[];
}

/**
 * The least agreement a quantized file must reach (types not listed: reported only), fed the check
 * prompts and the HF model's greedy continuation (teacher forcing). With a reference that carries
 * margins (the HF model's top-1 minus top-2 logit at each position): the share of the confident
 * positions (margin ≥ CONFIDENT_MARGIN; when the reference has at least MIN_CONFIDENT_POSITIONS
 * of them) where the file's greedy token is exactly HF's. Near-ties flipping
 * under rounding is expected; flipping a confident choice is what a broken quantization does.
 * A flatter reference, or one without margins (older exports): the share of all positions where
 * it is among HF's 5 likeliest. tokenAgreement / top5Agreement are reported over all positions either way.
 * Measured after sft → dpo → merge on the families' tiny models (jobs/tests/test_families.py,
 * 3 check prompts × 12 tokens, 48–51 positions): the tiny models' logits are nearly flat, no
 * position reaches 1 nat (largest margin: 0.40–0.55, gemma 0.11). At 0.25 nats: qwen2 31, llama3
 * 24, mistral 20, phi3 12 confident positions, q8_0 and q4_0 1.000 there (exact over all positions:
 * q4_0 0.92–0.98), random-byte matrices 0.000. Gemma 4's
 * tiny model has none after 2 sft steps (its q4_0 fails the top-5 rule, 0.46); after 30 it has 11,
 * and q8_0 and q4_0 agree at all of them (docs/models.md). The demo's DPO variant (the tiny Llama
 * after sft 200 → dpo, llama-quantize's q4_0): 34 of 36 (0.944), hence q4_0's 0.9.
 */
export const MIN_TOKEN_AGREEMENT: Readonly<Record<string, number>> = { q8_0: 0.98, q4_0: 0.9 };

/** The HF top-1 minus top-2 logit (nats) from which a position counts as confident (see MIN_TOKEN_AGREEMENT). */
export const CONFIDENT_MARGIN = 0.25;
/** The fewest confident positions a reference with margins must have for a quantized file to be judged. */
export const MIN_CONFIDENT_POSITIONS = 10;

export class GgufCheckError extends Error {
  override name = 'GgufCheckError';
}

/** How long the check's process may run before it is killed (a hung llama.cpp fails the check, not the worker's slot). */
export const GGUF_CHECK_TIMEOUT_MS = 60 * 60_000;

/** The process that checks a GGUF export (activities/gguf-check-child.ts) died or was killed. */
export class GgufCheckProcessError extends Error {
  override name = 'GgufCheckProcessError';
  constructor(
    message: string,
    /** The .gguf file it was checking when it died (absent: it died before the first). */
    readonly file: string | undefined,
    /** The signal that killed it (SIGSEGV, SIGABRT, ...), or undefined when it exited. */
    readonly signal: string | undefined,
    readonly exitCode: number | undefined,
  ) {
    super(message);
  }
}

export interface GgufCheckOptions {
  tokenizerVectors?: TokenizerVector[];
  /** Kills the check's process and rejects with the signal's reason. Default: the calling Temporal activity's cancellation, if called in one. */
  signal?: AbortSignal;
  /** Default GGUF_CHECK_TIMEOUT_MS. */
  timeoutMs?: number;
  /** The check's process has started (its pid). */
  onSpawn?: (pid: number) => void;
  /** The check's process starts on `file` (a name in `dir`). */
  onFile?: (file: string, pid: number) => void;
}

/** What the check's process is given (a JSON file, argv[2]); it writes a GgufCheckChildResult to argv[3]. */
export interface GgufCheckChildInput {
  dir: string;
  files: string[];
  tokenizerVectors?: TokenizerVector[];
}

export type GgufCheckChildResult = { ok: true; checks: GgufFileCheck[] } | { ok: false; error: { name: string; message: string; stack?: string } };

/** The line the check's process writes on stdout as it starts on a file (its logs go to stderr). */
export const GGUF_CHECK_FILE_EVENT = 'gguf-check-file';

const CHILD_ENTRY = path.join(path.dirname(fileURLToPath(import.meta.url)), 'gguf-check-child.ts');
const TSX_LOADER = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'node_modules', 'tsx', 'dist', 'esm', 'index.mjs');
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));

/**
 * Loads every .gguf in `dir` in llama.cpp and compares greedy generations with the reference. The
 * llama.cpp work runs in a process of its own (activities/gguf-check-child.ts): a native crash
 * there (segfault, abort) rejects this check with a GgufCheckProcessError naming the file and the
 * signal, and the worker with its other jobs lives on. The thresholds are judged here, on the
 * numbers the process measured.
 */
export async function checkGgufDirectory(dir: string, options: GgufCheckOptions = {}): Promise<GgufFileCheck[]> {
  const reference = JSON.parse(await readFile(path.join(dir, 'greedy_reference.json'), 'utf8')) as GreedyReference;
  const files = (await readdir(dir)).filter((f) => f.endsWith('.gguf')).sort();
  if (files.length === 0) throw new GgufCheckError(`no .gguf file in ${dir}`);
  const results = await measureInChildProcess({ dir, files, ...(options.tokenizerVectors ? { tokenizerVectors: options.tokenizerVectors } : {}) }, options);
  judgeGgufChecks(results, reference);
  return results;
}

/** Throws a GgufCheckError when a file's measurements miss what its type must reach (f16 exact, MIN_TOKEN_AGREEMENT, tokenizer vectors). */
export function judgeGgufChecks(results: GgufFileCheck[], reference: GreedyReference): void {
  const f16 = results.find((r) => r.type === 'f16' || r.type === 'f32');
  if (f16 && f16.greedyMatch < 1) {
    throw new GgufCheckError(`${f16.file}: llama.cpp's greedy tokens differ from the Hugging Face model's on ${Math.round((1 - f16.greedyMatch) * reference.prompts.length)} of ${reference.prompts.length} check prompts`);
  }
  for (const r of results) {
    const min = MIN_TOKEN_AGREEMENT[r.type];
    // Judged on the confident positions when the reference has enough of them; a flatter reference
    // (or one without margins) by the top-5 rule over all positions.
    const confident = r.confidentAgreement !== undefined && (r.confidentPositions ?? 0) >= MIN_CONFIDENT_POSITIONS;
    if (min !== undefined && confident && r.confidentAgreement! < min) {
      throw new GgufCheckError(`${r.file}: llama.cpp's greedy token is the Hugging Face model's at ${r.confidentAgreement!.toFixed(3)} of the ${r.confidentPositions} check positions where that model is confident (margin ≥ ${CONFIDENT_MARGIN} nats), below the ${min} a ${r.type} export must reach (a broken quantization?)`);
    } else if (min !== undefined && !confident && r.top5Agreement < min) {
      const flat = r.confidentPositions !== undefined ? ` (only ${r.confidentPositions} positions have a top-1 margin of ${CONFIDENT_MARGIN} nats, fewer than the ${MIN_CONFIDENT_POSITIONS} the confident rule needs)` : '';
      throw new GgufCheckError(`${r.file}: llama.cpp's greedy token is among the Hugging Face model's 5 likeliest at ${r.top5Agreement.toFixed(3)} of the check positions${flat}, below the ${min} a ${r.type} export must reach (a broken quantization?)`);
    }
    if (r.vectorMatch !== undefined && r.vectorMatch < 1) {
      throw new GgufCheckError(`${r.file}: llama.cpp's tokenizer reproduces ${r.vectorMatch.toFixed(3)} of llama.cpp's own tokenizer test vectors for this vocab, not all`);
    }
  }
}

/**
 * Runs activities/gguf-check-child.ts (node + tsx, as bin/refinery runs the CLI) on `input`: its
 * measurements, or the GgufCheckError it raised; its death (a signal, an exit code without a
 * result, the timeout) is a GgufCheckProcessError. With setpriv the kernel kills it should the
 * worker die first.
 */
async function measureInChildProcess(input: GgufCheckChildInput, options: GgufCheckOptions): Promise<GgufFileCheck[]> {
  const signal = options.signal ?? activityCancellation();
  signal?.throwIfAborted();
  const timeoutMs = options.timeoutMs ?? GGUF_CHECK_TIMEOUT_MS;
  const work = await mkdtemp(path.join(tmpdir(), 'refinery-gguf-check-'));
  try {
    const inputFile = path.join(work, 'input.json');
    const resultFile = path.join(work, 'result.json');
    await writeFile(inputFile, JSON.stringify(input));
    const node = [process.execPath, '--import', TSX_LOADER, CHILD_ENTRY, inputFile, resultFile];
    const argv = SETPRIV && process.platform === 'linux' ? [SETPRIV, '--pdeathsig', 'SIGKILL', '--', ...node] : node;
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !SECRET_ENV.test(k)));
    const child = execa(argv[0]!, argv.slice(1), {
      cwd: work,
      env,
      extendEnv: false,
      stdin: 'ignore',
      stdout: 'pipe',
      stderr: 'pipe',
      buffer: { stdout: false },
      stripFinalNewline: false,
      reject: false,
      timeout: timeoutMs,
      forceKillAfterDelay: 5_000,
      ...(signal ? { cancelSignal: signal } : {}),
    });
    const pid = child.pid;
    if (pid !== undefined) options.onSpawn?.(pid);
    let current: string | undefined;
    const lines = createInterface({ input: child.stdout, crlfDelay: Infinity });
    lines.on('line', (line) => {
      let event: { event?: unknown; file?: unknown };
      try {
        event = JSON.parse(line) as typeof event;
      } catch {
        return; // not ours (a library writing on stdout)
      }
      if (event?.event === GGUF_CHECK_FILE_EVENT && typeof event.file === 'string') {
        current = event.file;
        if (pid !== undefined) options.onFile?.(event.file, pid);
      }
    });
    const result = await child;
    lines.close();
    if (result.isCanceled && signal?.aborted) {
      throw signal.reason instanceof Error ? signal.reason : new Error(`GGUF check of ${input.dir} cancelled`);
    }
    const what = current ? path.join(input.dir, current) : `${input.dir} (before its first file)`;
    const stderrTail = tail(typeof result.stderr === 'string' ? result.stderr : '', 2000);
    const logs = stderrTail ? `; its last output: ${stderrTail}` : '';
    if (result.timedOut) {
      throw new GgufCheckProcessError(`the GGUF check's process timed out after ${Number((timeoutMs / 1000).toFixed(1))} s checking ${what} and was killed${logs}`, current, result.signal, result.exitCode);
    }
    if (result.signal) {
      throw new GgufCheckProcessError(`the GGUF check's process died checking ${what}: killed by ${result.signal}${logs}`, current, result.signal, undefined);
    }
    const written = await readFile(resultFile, 'utf8').then((text) => JSON.parse(text) as GgufCheckChildResult).catch(() => undefined);
    if (result.exitCode !== 0 || !written) {
      throw new GgufCheckProcessError(`the GGUF check's process died checking ${what}: exited with code ${result.exitCode}${written ? '' : ' without a result'}${logs}`, current, undefined, result.exitCode);
    }
    if (!written.ok) {
      if (written.error.name === 'GgufCheckError') throw new GgufCheckError(written.error.message);
      throw new Error(`the GGUF check of ${input.dir} failed in its process: ${written.error.stack ?? written.error.message}`);
    }
    return written.checks;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** The calling Temporal activity's cancellation signal; undefined outside an activity. */
function activityCancellation(): AbortSignal | undefined {
  try {
    return cancellationSignal();
  } catch {
    return undefined;
  }
}

function tail(text: string, chars: number): string {
  const trimmed = text.trim();
  return trimmed.length <= chars ? trimmed : `…${trimmed.slice(-chars)}`;
}

/** llama.cpp's tokenizer test vectors: `<vocab>.gguf.inp` (texts between "__ggml_vocab_test__" lines) and `.out` (ids, one line per text). */
export async function readTokenizerVectors(vocabFile: string): Promise<TokenizerVector[]> {
  const texts = (await readFile(`${vocabFile}.inp`, 'utf8')).split('\n__ggml_vocab_test__\n');
  const last = texts.length - 1;
  texts[last] = texts[last]!.replace(/\n?__ggml_vocab_test__\n?$/, '');
  if (texts[last] === '') texts.pop();
  const ids = (await readFile(`${vocabFile}.out`, 'utf8')).split('\n');
  return texts.map((text, i) => ({ text, ids: (ids[i] ?? '').split(' ').filter(Boolean).map(Number) }));
}

type LoadedModel = Awaited<ReturnType<Awaited<ReturnType<typeof import('node-llama-cpp').getLlama>>['loadModel']>>;

/** Greedy tokens after `prompt`, up to `n`, ending before end-of-generation. */
export async function generateGreedy(model: LoadedModel, prompt: number[], n: number, options: { threads?: number } = {}): Promise<number[]> {
  const context = await model.createContext({ contextSize: Math.max(256, prompt.length + n + 8), ...(options.threads ? { threads: options.threads } : {}) });
  try {
    const sequence = context.getSequence();
    const out: number[] = [];
    const eos = model.tokens.eos === null ? undefined : Number(model.tokens.eos);
    for await (const token of sequence.evaluate(prompt as never[], { temperature: 0 })) {
      out.push(Number(token));
      if (Number(token) === eos || out.length >= n) break;
    }
    return out;
  } finally {
    await context.dispose();
  }
}

/**
 * The file's greedy prediction after each prefix of `tokens` that ends at position `from` or later:
 * element i is what it predicts for tokens[from + i + 1] (teacher forcing: it is fed the given tokens).
 */
export async function teacherForcedGreedy(model: LoadedModel, tokens: number[], from: number, options: { threads?: number } = {}): Promise<number[]> {
  if (tokens.length === 0 || from >= tokens.length) return [];
  const context = await model.createContext({ contextSize: Math.max(256, tokens.length + 8), ...(options.threads ? { threads: options.threads } : {}) });
  try {
    const items = tokens.map((t, i) => (i >= from ? ([t, { generateNext: { token: true, options: { temperature: 0 } } }] as const) : t));
    const out = await context.getSequence().controlledEvaluate(items as never);
    return out.slice(from).map((o) => Number(o?.next?.token ?? -1));
  } finally {
    await context.dispose();
  }
}

/**
 * Threads for a check: one for a small model. On a small model llama.cpp's threads spend far more
 * time synchronising than computing (measured on the demo model: 250 ms a token with the default,
 * under 1 ms with one thread); a large one gets the machine.
 */
export async function llamaThreadsFor(file: string): Promise<number> {
  const { size } = await stat(file);
  return size < 512 * 1024 ** 2 ? 1 : availableParallelism();
}
