/** The JSON Schema and the field reference are generated from the zod schema: they must be current. */
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { fieldsMarkdown, FIELDS_FILE, JOB_CONFIG_SCHEMA_FILE, jobConfigSchemaText, SCHEMA_FILE, schemaText } from '../../spec/generate-docs.js';

describe('generated spec docs', () => {
  it('spec/pipeline.schema.json matches the schema (run `npm run gen:spec`)', async () => {
    expect(await readFile(SCHEMA_FILE, 'utf8')).toBe(schemaText());
  });
  it('jobs/refinery_jobs/job_config.schema.json matches the schema (run `npm run gen:spec`)', async () => {
    expect(await readFile(JOB_CONFIG_SCHEMA_FILE, 'utf8')).toBe(jobConfigSchemaText());
  });
  it('docs/spec-fields.md matches the schema (run `npm run gen:spec`)', async () => {
    const text = await readFile(FIELDS_FILE, 'utf8');
    expect(text).toBe(fieldsMarkdown());
    for (const field of ['stages[].hyper.save_steps', 'stages[].gate.approval.timeout', 'stages[].reward_model']) expect(text).toContain(`\`${field}\``);
  });
});
