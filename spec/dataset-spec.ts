/**
 * Datasets as a spec names them: the part of the pipeline spec (spec/schema.ts) that says where
 * training data is and how to read it. Three ways to say it:
 *   { path, format }                         a file in one of Refinery's formats (JSONL, a JSON array, .txt for text)
 *   { path, formatting, columns, tags, ... } a file described with LLaMA-Factory's dataset_info keys
 *   { dataset_info, name }                   an entry of a LLaMA-Factory dataset_info.json
 * Record validation and the canonical form are in spec/datasets.ts; dataset_info in spec/dataset-info.ts.
 */
import { z } from 'zod';

export const DatasetFormat = z.enum(['chat', 'alpaca', 'sharegpt', 'text', 'preference', 'prompts', 'kto']);
export type DatasetFormat = z.infer<typeof DatasetFormat>;

/** A local path (relative to the spec file) or an s3:// URI; no "..", no shell in sight. */
export const DataPath = z
  .string()
  .min(1)
  .refine((p) => !p.split(/[\\/]/).includes('..'), 'a path without ".." segments')
  .refine((p) => !/[\0\n\r]/.test(p), 'a path without control characters');

const Column = z.string().min(1);
/** LLaMA-Factory's `columns` (data/README.md there): which field of a record holds what. */
export const LlamaFactoryColumns = z.strictObject({
  prompt: Column.optional().describe('alpaca: the instruction (default "instruction"); pretraining: the text'),
  query: Column.optional().describe('alpaca: the input appended to the instruction (default "input")'),
  response: Column.optional().describe('alpaca: the answer (default "output")'),
  history: Column.optional().describe('alpaca: earlier [question, answer] pairs'),
  messages: Column.optional().describe('sharegpt: the turns (default "conversations")'),
  system: Column.optional().describe('the system prompt'),
  tools: Column.optional().describe('the function schemas a tool-call conversation may use (a JSON string or an array)'),
  chosen: Column.optional().describe('ranking: the preferred answer'),
  rejected: Column.optional().describe('ranking: the dispreferred answer'),
  kto_tag: Column.optional().describe('KTO: the boolean label of the answer'),
  images: Column.optional().describe('multimodal: refused (Refinery trains on text)'),
  videos: Column.optional().describe('multimodal: refused'),
  audios: Column.optional().describe('multimodal: refused'),
});
export type LlamaFactoryColumns = z.infer<typeof LlamaFactoryColumns>;

/** LLaMA-Factory's sharegpt `tags`: the keys and values that mark each turn's role. */
export const LlamaFactoryTags = z.strictObject({
  role_tag: Column.optional().describe('key of a turn\'s role (default "from")'),
  content_tag: Column.optional().describe('key of a turn\'s text (default "value")'),
  user_tag: Column.optional().describe('default "human"'),
  assistant_tag: Column.optional().describe('default "gpt"'),
  observation_tag: Column.optional().describe('a tool\'s result (default "observation")'),
  function_tag: Column.optional().describe('an assistant tool call, JSON {"name", "arguments"} (default "function_call")'),
  system_tag: Column.optional().describe('default "system"'),
});
export type LlamaFactoryTags = z.infer<typeof LlamaFactoryTags>;

/** Mixing a general dataset into this one, as the cloud platforms' mixed training does. */
export const DatasetMix = z.strictObject({
  dataset: z.string().min(1).describe('a name from `datasets`: the general data to mix in (same canonical format)'),
  ratio: z.number().gt(0).max(100).describe('rows of the general dataset per row of this one (0.2: 20 general rows per 100); sampled without replacement while it lasts'),
  seed: z.number().int().min(0).optional().describe('seed of the sampling and the interleaving (default 42)'),
});
export type DatasetMix = z.infer<typeof DatasetMix>;

const LLAMA_FACTORY_KEYS = ['formatting', 'ranking', 'columns', 'tags'] as const;

export const Dataset = z
  .strictObject({
    path: DataPath.optional().describe('the data file: JSONL, a JSON array, or .txt (one text per line); local path (relative to the spec), s3://bucket/key, or s3://bucket/prefix/ (the newest object under it, chosen when a run starts)'),
    format: DatasetFormat.optional().describe('record format (docs/data.md); required with `path` unless LLaMA-Factory keys describe the file; with them or with `dataset_info`, what the stage reads ("prompts" takes the prompts of a chat dataset)'),
    dataset_info: DataPath.optional().describe('a LLaMA-Factory dataset_info.json (local); with `name`, its entry to read (files relative to it)'),
    name: z.string().min(1).optional().describe('the entry of `dataset_info`'),
    formatting: z.enum(['alpaca', 'sharegpt']).optional().describe('LLaMA-Factory formatting of the file (default alpaca when other LLaMA-Factory keys are given)'),
    ranking: z.boolean().optional().describe('LLaMA-Factory: preference pairs (chosen/rejected)'),
    columns: LlamaFactoryColumns.optional(),
    tags: LlamaFactoryTags.optional(),
    val_size: z
      .number()
      .gt(0)
      .refine((v) => v < 1 || Number.isInteger(v), 'a fraction below 1 or a whole number of rows')
      .optional()
      .describe('hold out an eval set, as LLaMA-Factory\'s val_size: a fraction (< 1) or a row count (>= 1), chosen by the seed'),
    mix: DatasetMix.optional(),
  })
  .superRefine((d, ctx) => {
    const issue = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: [path], input: d, message });
    const lf = LLAMA_FACTORY_KEYS.filter((k) => d[k] !== undefined);
    if (d.path === undefined && d.dataset_info === undefined) issue('path', 'give `path` (a data file) or `dataset_info` with `name`');
    if (d.path !== undefined && d.dataset_info !== undefined) issue('dataset_info', 'give either `path` or `dataset_info`, not both');
    if (d.dataset_info !== undefined && d.name === undefined) issue('name', 'required with `dataset_info`: the entry to read');
    if (d.name !== undefined && d.dataset_info === undefined) issue('name', 'only with `dataset_info`');
    if (d.dataset_info !== undefined) for (const k of lf) issue(k, 'comes from the dataset_info.json entry, not the spec');
    if (d.path !== undefined && lf.length === 0 && d.format === undefined) issue('format', 'required (or describe the file with LLaMA-Factory keys: formatting, columns, tags, ranking)');
  });
export type Dataset = z.infer<typeof Dataset>;
