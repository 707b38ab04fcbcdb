/**
 * The GGUF check's own process: loads each .gguf of an export in llama.cpp (node-llama-cpp's
 * prebuilt CPU build) and measures it against the Hugging Face model's greedy_reference.json.
 * activities/gguf-check.ts starts it (checkGgufDirectory) and judges the numbers, so that a native
 * crash in llama.cpp kills this process only, not the worker and its other jobs.
 *
 *   node --import <repo>/node_modules/tsx/dist/esm/index.mjs activities/gguf-check-child.ts <input.json> <result.json>
 *
 * input.json: a GgufCheckChildInput; result.json: a GgufCheckChildResult (the measurements, or the
 * error: a GgufCheckError when llama.cpp cannot load a file). On stdout one JSON line
 * {"event":"gguf-check-file","file":...} as it starts on each file; logs go to stderr.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  CONFIDENT_MARGIN,
  GGUF_CHECK_FILE_EVENT,
  generateGreedy,
  GgufCheckError,
  llamaThreadsFor,
  teacherForcedGreedy,
  type GgufCheckChildInput,
  type GgufCheckChildResult,
  type GgufFileCheck,
  type GreedyReference,
} from './gguf-check.js';

type Llama = Awaited<ReturnType<typeof import('node-llama-cpp').getLlama>>;
type LoadedModel = Awaited<ReturnType<Llama['loadModel']>>;

/** Every file of `input.files` in `input.dir`, measured in this process (thresholds: judgeGgufChecks). */
export async function measureGgufFiles(input: GgufCheckChildInput, onFile: (file: string) => void = () => {}): Promise<GgufFileCheck[]> {
  const { dir, files } = input;
  const reference = JSON.parse(await readFile(path.join(dir, 'greedy_reference.json'), 'utf8')) as GreedyReference;
  const { getLlama } = await import('node-llama-cpp');
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' as never });
  const results: GgufFileCheck[] = [];
  // Margins judge only where every prompt carries them with its argmax (one position each).
  const withMargins = reference.prompts.length > 0 && reference.prompts.every((p) => p.argmax_tokens && p.margins?.length === p.argmax_tokens.length);
  for (const file of files) {
    onFile(file);
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
      const vectors = input.tokenizerVectors;
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
  return results;
}

/** The tokens before the first end-of-generation token (llama.cpp's own list: eos, eot, <|im_end|>, ...). */
function untilEog(model: LoadedModel, tokens: number[]): number[] {
  const i = tokens.findIndex((t) => model.isEogToken(t as never));
  return i === -1 ? tokens : tokens.slice(0, i);
}

function sameTokens(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}

async function main(argv: string[]): Promise<number> {
  const [inputFile, resultFile] = argv;
  if (!inputFile || !resultFile) {
    process.stderr.write('usage: gguf-check-child.ts <input.json> <result.json>\n');
    return 2;
  }
  const input = JSON.parse(await readFile(inputFile, 'utf8')) as GgufCheckChildInput;
  let result: GgufCheckChildResult;
  try {
    const checks = await measureGgufFiles(input, (file) => process.stdout.write(`${JSON.stringify({ event: GGUF_CHECK_FILE_EVENT, file })}\n`));
    result = { ok: true, checks };
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err));
    process.stderr.write(`${e.stack ?? e.message}\n`);
    result = { ok: false, error: { name: e instanceof GgufCheckError ? 'GgufCheckError' : e.name, message: e.message, ...(e.stack ? { stack: e.stack } : {}) } };
  }
  await writeFile(resultFile, JSON.stringify(result));
  return 0;
}

// Run as a program (not when imported): exit once the result is written, whatever llama.cpp still holds.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
}
