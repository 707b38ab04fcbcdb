/**
 * Checks a GGUF export the only way that counts: llama.cpp (node-llama-cpp's prebuilt CPU build)
 * loads the file and generates. The gguf job writes the Hugging Face model's greedy tokens for a
 * few check prompts (greedy_reference.json); for f16 llama.cpp must produce exactly those tokens.
 * Quantized files must load and generate; their agreement is reported, not required.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';

export interface GreedyReference {
  max_new_tokens: number;
  prompts: { text: string; prompt_tokens: number[]; greedy_tokens: number[] }[];
}

export interface GgufFileCheck {
  file: string;
  type: string;
  loaded: boolean;
  /** Fraction of check prompts whose greedy continuation equals the HF model's. */
  greedyMatch: number;
  /** llama.cpp's tokenization of the prompt text equals the HF tokenizer's. */
  tokenizerMatch: number;
  sample: string;
}

export class GgufCheckError extends Error {
  override name = 'GgufCheckError';
}

/** Loads every .gguf in `dir` and compares greedy generations with the reference. */
export async function checkGgufDirectory(dir: string): Promise<GgufFileCheck[]> {
  const reference = JSON.parse(await readFile(path.join(dir, 'greedy_reference.json'), 'utf8')) as GreedyReference;
  const files = (await readdir(dir)).filter((f) => f.endsWith('.gguf')).sort();
  if (files.length === 0) throw new GgufCheckError(`no .gguf file in ${dir}`);
  const { getLlama } = await import('node-llama-cpp');
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' as never });
  const results: GgufFileCheck[] = [];
  for (const file of files) {
    const type = /model-(.+)\.gguf$/.exec(file)?.[1] ?? file;
    const threads = await llamaThreadsFor(path.join(dir, file));
    const model = await llama.loadModel({ modelPath: path.join(dir, file) }).catch((err: unknown) => {
      throw new GgufCheckError(`llama.cpp could not load ${file}: ${(err as Error).message}`);
    });
    try {
      let greedy = 0;
      let tokenizer = 0;
      let sample = '';
      for (const p of reference.prompts) {
        const ours = model.tokenize(p.text, false).map(Number);
        const withBos = model.tokens.bos !== null && p.prompt_tokens[0] === Number(model.tokens.bos) ? [Number(model.tokens.bos), ...ours] : ours;
        if (sameTokens(withBos, p.prompt_tokens)) tokenizer++;
        const generated = await generateGreedy(model, p.prompt_tokens, reference.max_new_tokens, { threads });
        // llama.cpp stops at end-of-generation without yielding it; HF's output includes the EOS.
        const eos = model.tokens.eos === null ? undefined : Number(model.tokens.eos);
        if (sameTokens(withoutEos(generated, eos), withoutEos(p.greedy_tokens, eos))) greedy++;
        sample ||= model.detokenize(generated as never[]);
      }
      results.push({
        file,
        type,
        loaded: true,
        greedyMatch: greedy / reference.prompts.length,
        tokenizerMatch: tokenizer / reference.prompts.length,
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
  return results;
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
 * Threads for a check: one for a small model. On a small model llama.cpp's threads spend far more
 * time synchronising than computing (measured on the demo model: 250 ms a token with the default,
 * under 1 ms with one thread); a large one gets the machine.
 */
export async function llamaThreadsFor(file: string): Promise<number> {
  const { size } = await stat(file);
  return size < 512 * 1024 ** 2 ? 1 : availableParallelism();
}

function withoutEos(tokens: number[], eos: number | undefined): number[] {
  const i = eos === undefined ? -1 : tokens.indexOf(eos);
  return i === -1 ? tokens : tokens.slice(0, i);
}

function sameTokens(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}
