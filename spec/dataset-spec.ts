/**
 * Datasets as a spec names them: the part of the pipeline spec (spec/schema.ts) that says where
 * training data is and how to read it. Record validation is in spec/datasets.ts.
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

export const Dataset = z.strictObject({
  path: DataPath.describe('JSONL file: local path (relative to the spec), s3://bucket/key, or s3://bucket/prefix/ (the newest object under it, chosen when a run starts)'),
  format: DatasetFormat.describe('record format (README: "Stages and data formats")'),
});
export type Dataset = z.infer<typeof Dataset>;

