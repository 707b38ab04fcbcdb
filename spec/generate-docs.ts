/**
 * Generates, from the zod schema alone, the JSON Schema for editors (spec/pipeline.schema.json)
 * and the field reference (docs/spec-fields.md). `npm run gen:spec`; a unit test fails when either
 * file is stale.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { jobConfigJsonSchema } from './job-config.js';
import { PipelineSpec } from './schema.js';
import { HYPER_UNUSED, STAGE_PARAMS } from './stage-params.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const SCHEMA_FILE = path.join(ROOT, 'spec', 'pipeline.schema.json');
export const FIELDS_FILE = path.join(ROOT, 'docs', 'spec-fields.md');
export const JOB_CONFIG_SCHEMA_FILE = path.join(ROOT, 'jobs', 'refinery_jobs', 'job_config.schema.json');

type JsonSchema = {
  type?: string | string[];
  description?: string;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  enum?: unknown[];
  anyOf?: JsonSchema[];
  additionalProperties?: JsonSchema | boolean;
  default?: unknown;
  minimum?: number;
  maximum?: number;
  pattern?: string;
  const?: unknown;
  $ref?: string;
  allOf?: unknown[];
};

export function jsonSchema(): JsonSchema {
  const schema = z.toJSONSchema(PipelineSpec, { io: 'input', unrepresentable: 'any' }) as JsonSchema;
  // A stage's params depend on its kind: say so, so that editors check them too.
  const stage = schema.properties?.stages?.items;
  if (stage) stage.allOf = Object.keys(STAGE_PARAMS).map((kind) => ({ if: { properties: { kind: { const: kind } }, required: ['kind'] }, then: { properties: { params: paramsSchema(kind) } } }));
  return schema;
}

function paramsSchema(kind: string): JsonSchema {
  const { $schema: _ignored, ...schema } = z.toJSONSchema(STAGE_PARAMS[kind as keyof typeof STAGE_PARAMS], { io: 'input', unrepresentable: 'any' }) as JsonSchema & { $schema?: string };
  return schema;
}

export function jobConfigSchemaText(): string {
  return JSON.stringify(jobConfigJsonSchema(), null, 2) + '\n';
}

export function schemaText(): string {
  return JSON.stringify({ $id: 'https://refinery.dev/pipeline.schema.json', title: 'Refinery pipeline spec', ...jsonSchema() }, null, 2) + '\n';
}

export function fieldsMarkdown(): string {
  const rows: string[] = [];
  const walk = (s: JsonSchema, at: string, required: boolean) => {
    const t = typeOf(s);
    if (at) rows.push(`| \`${at}\` | ${t} | ${required ? 'yes' : ''} | ${[s.description, bounds(s)].filter(Boolean).join('; ').replace(/\|/g, '\\|')} |`);
    const obj = objectOf(s);
    if (obj?.properties) for (const [k, v] of Object.entries(obj.properties)) walk(v, at ? `${at}.${k}` : k, obj.required?.includes(k) ?? false);
    if (obj?.additionalProperties && typeof obj.additionalProperties === 'object' && objectOf(obj.additionalProperties)?.properties) walk(obj.additionalProperties, `${at}.<name>`, false);
    const arr = s.items ?? s.anyOf?.find((x) => x.items)?.items;
    if (arr && objectOf(arr)?.properties) walk(arr, `${at}[]`, false);
  };
  walk(jsonSchema(), '', true);
  const paramRows = Object.keys(STAGE_PARAMS).flatMap((kind) => {
    const schema = paramsSchema(kind);
    return Object.entries(schema.properties ?? {}).map(([name, field]) => `| ${kind} | \`${name}\` | ${typeOf(field)} | ${[field.description, bounds(field)].filter(Boolean).join('; ').replace(/\|/g, '\\|')} |`);
  });
  return [
    '# Pipeline spec: field reference',
    '',
    'Generated from `spec/schema.ts` by `npm run gen:spec`; do not edit by hand. Editors can validate',
    'specs with `spec/pipeline.schema.json` (e.g. `# yaml-language-server: $schema=../spec/pipeline.schema.json`).',
    '',
    '| field | type | required | notes |',
    '| --- | --- | --- | --- |',
    ...rows,
    '',
    '## Stage params by kind',
    '',
    '`stages[].params` takes these keys for each kind (anything else is refused before the run starts).',
    '',
    '| kind | param | type | notes |',
    '| --- | --- | --- | --- |',
    ...paramRows,
    '',
    '## Hyper fields a kind does not use',
    '',
    'Setting one of these in a stage of that kind is refused; one inherited from `defaults.hyper` is dropped.',
    '',
    ...Object.entries(HYPER_UNUSED).map(([kind, unused]) => `- ${kind}: ${unused === 'all' ? 'all (it does not train)' : unused.map((f) => `\`${f}\``).join(', ')}`),
    '',
  ].join('\n');
}

function objectOf(s: JsonSchema): JsonSchema | undefined {
  if (s.properties || s.additionalProperties) return s;
  return s.anyOf?.find((x) => x.properties);
}

function typeOf(s: JsonSchema): string {
  if (s.enum) return s.enum.map((e) => `\`${JSON.stringify(e)}\``).join(' \\| ');
  if (s.const !== undefined) return `\`${JSON.stringify(s.const)}\``;
  if (s.anyOf) return [...new Set(s.anyOf.map(typeOf))].join(' \\| ');
  if (s.type === 'array') return `${s.items ? typeOf(s.items) : 'any'}[]`;
  if (s.type === 'object' && s.additionalProperties && !s.properties) return 'map';
  return Array.isArray(s.type) ? s.type.join(' \\| ') : (s.type ?? 'any');
}

function bounds(s: JsonSchema): string {
  const parts: string[] = [];
  if (s.minimum !== undefined) parts.push(`≥ ${s.minimum}`);
  if (s.maximum !== undefined) parts.push(`≤ ${s.maximum}`);
  if (s.default !== undefined) parts.push(`default ${JSON.stringify(s.default)}`);
  return parts.join(', ');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  await writeFile(SCHEMA_FILE, schemaText());
  await writeFile(FIELDS_FILE, fieldsMarkdown());
  await writeFile(JOB_CONFIG_SCHEMA_FILE, jobConfigSchemaText());
  console.log(`wrote ${[SCHEMA_FILE, FIELDS_FILE, JOB_CONFIG_SCHEMA_FILE].map((f) => path.relative(ROOT, f)).join(', ')}`);
}
