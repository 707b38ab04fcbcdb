/**
 * Checks a GGUF export the only way that counts: llama.cpp (node-llama-cpp's prebuilt CPU build)
 * loads the file and generates. The gguf job writes the Hugging Face model's greedy tokens for a
 * few check prompts (greedy_reference.json); for f16 llama.cpp must produce exactly those tokens.
 * Quantized files must load and, fed the prompt and the reference tokens one by one (teacher
 * forcing, so one early difference does not decide the rest), pick a token among the HF model's 5
 * likeliest at MIN_TOKEN_AGREEMENT of the positions: a broken quantization (wrong scales, a
 * corrupted tensor) predicts noise and fails, an honest one keeps its choices among HF's. Given llama.cpp's tokenizer test vectors for the model's vocab
 * (`tokenizerVectors`), the file's tokenizer must reproduce every one of them.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';

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

/** Loads every .gguf in `dir` and compares greedy generations with the reference. */
export async function checkGgufDirectory(dir: string, options: { tokenizerVectors?: TokenizerVector[] } = {}): Promise<GgufFileCheck[]> {
  const reference = JSON.parse(await readFile(path.join(dir, 'greedy_reference.json'), 'utf8')) as GreedyReference;
  const files = (await readdir(dir)).filter((f) => f.endsWith('.gguf')).sort();
  if (files.length === 0) throw new GgufCheckError(`no .gguf file in ${dir}`);
  const { getLlama } = await import('node-llama-cpp');
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' as never });
  const results: GgufFileCheck[] = [];
  // Margins judge only where every prompt carries them with its argmax (one position each).
  const withMargins = reference.prompts.length > 0 && reference.prompts.every((p) => p.argmax_tokens && p.margins?.length === p.argmax_tokens.length);
  for (const file of files) {
    const type = /model-(.+)\.gguf$/.exec(file)?.[1] ?? file;
    const threads = await llamaThreadsFor(path.join(dir, file));
    const model = await llama.loadModel({ modelPath: path.join(dir, file) }).catch((err: unknown) => {
      throw new GgufCheckError(`llama.cpp could not load ${file}: ${(err as Error).message}`);
    });
    try {
      let greedy = 0;
      let tokenizer = 0;
      let agreed = 0;
      let inTop = 0;
      let predicted = 0;
      let confident = 0;
      let confidentAgreed = 0;
      let sample = '';
      for (const p of reference.prompts) {
        const ours = model.tokenize(p.text, false).map(Number);
        const withBos = model.tokens.bos !== null && p.prompt_tokens[0] === Number(model.tokens.bos) ? [Number(model.tokens.bos), ...ours] : ours;
        if (sameTokens(withBos, p.prompt_tokens)) tokenizer++;
        const generated = await generateGreedy(model, p.prompt_tokens, reference.max_new_tokens, { threads });
        // llama.cpp stops at end-of-generation without yielding it; HF's output includes the token it
        // stopped at (any of its generation_config eos ids: eos, the template's end of turn).
        const expected = untilEog(model, p.greedy_tokens);
        if (sameTokens(untilEog(model, generated), expected)) greedy++;
        // Every position of prompt + continuation where the export carries HF's argmax, else the continuation.
        const [sequence, targets] = p.argmax_tokens
          ? [[...p.prompt_tokens, ...p.greedy_tokens].slice(0, p.argmax_tokens.length), p.argmax_tokens]
          : [[...p.prompt_tokens, ...expected].slice(0, -1), expected];
        const from = p.argmax_tokens ? 0 : p.prompt_tokens.length - 1;
        const forced = await teacherForcedGreedy(model, sequence, from, { threads });
        agreed += forced.filter((t, i) => t === targets[i]).length;
        inTop += forced.filter((t, i) => (p.top_tokens?.[i] ?? [targets[i]]).includes(t)).length;
        predicted += targets.length;
        if (withMargins) {
          forced.forEach((t, i) => {
            if ((p.margins?.[i] ?? 0) >= CONFIDENT_MARGIN) {
              confident++;
              if (t === targets[i]) confidentAgreed++;
            }
          });
        }
        sample ||= model.detokenize(generated as never[]);
      }
      const vectors = options.tokenizerVectors;
      results.push({
        file,
        type,
        loaded: true,
        greedyMatch: greedy / reference.prompts.length,
        tokenizerMatch: tokenizer / reference.prompts.length,
        tokenAgreement: predicted === 0 ? 1 : agreed / predicted,
        top5Agreement: predicted === 0 ? 1 : inTop / predicted,
        ...(withMargins ? { confidentAgreement: confident === 0 ? 0 : confidentAgreed / confident, confidentPositions: confident } : {}),
        ...(vectors ? { vectorMatch: vectors.filter((v) => sameTokens(model.tokenize(v.text, false).map(Number), v.ids)).length / vectors.length } : {}),
        sample,
      });
    } finally {
      await model.dispose();
    }
  }
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
  return results;
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

/** The tokens before the first end-of-generation token (llama.cpp's own list: eos, eot, <|im_end|>, ...). */
function untilEog(model: LoadedModel, tokens: number[]): number[] {
  const i = tokens.findIndex((t) => model.isEogToken(t as never));
  return i === -1 ? tokens : tokens.slice(0, i);
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

function sameTokens(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}
