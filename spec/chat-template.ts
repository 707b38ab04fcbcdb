/**
 * Chat templates before anything runs: the named templates (the files of
 * jobs/refinery_jobs/templates/, which the Python jobs read too: the file names are the list) and
 * the check that a stage that renders conversations will have a template: its own override, or
 * the model's (tokenizer_config.json's `chat_template`, or `chat_template.jinja` beside it).
 */
import { readdirSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { REPO_ROOT } from '../config/paths.js';

export const TEMPLATES_DIR = path.join(REPO_ROOT, 'jobs', 'refinery_jobs', 'templates');

/** The named chat templates, sorted. */
export function templateNames(dir: string = TEMPLATES_DIR): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.jinja'))
    .map((f) => f.slice(0, -'.jinja'.length))
    .sort();
}

/** A `template` value is Jinja text (not a name) when it contains "{%" or "{{", as the jobs decide. */
export function isJinjaText(template: string): boolean {
  return template.includes('{%') || template.includes('{{');
}

/**
 * The chat template a local model directory ships, null when its tokenizer has none, undefined when
 * the directory has no tokenizer at all (nothing to judge here: the job reports the missing tokenizer).
 */
export async function modelChatTemplate(modelDir: string): Promise<string | null | undefined> {
  const jinja = await readFile(path.join(modelDir, 'chat_template.jinja'), 'utf8').catch(() => null);
  if (jinja?.trim()) return jinja;
  const config = await readFile(path.join(modelDir, 'tokenizer_config.json'), 'utf8').catch(() => null);
  if (config === null) {
    const fast = await stat(path.join(modelDir, 'tokenizer.json')).then((s) => s.isFile(), () => false);
    return fast ? null : undefined;
  }
  let parsed: { chat_template?: unknown };
  try {
    parsed = JSON.parse(config) as { chat_template?: unknown };
  } catch {
    return null;
  }
  const template = parsed.chat_template;
  if (typeof template === 'string' && template.trim()) return template;
  // Older tokenizers keep several named templates: [{ name: "default", template: "..." }, ...].
  if (Array.isArray(template)) {
    const named = template as { name?: unknown; template?: unknown }[];
    const chosen = named.find((t) => t.name === 'default') ?? named[0];
    if (typeof chosen?.template === 'string' && chosen.template.trim()) return chosen.template;
  }
  return null;
}

/**
 * What is wrong with a stage's chat template, or null when nothing is: an unknown template name,
 * or a stage that renders conversations (`needsChat`) without an override whose model has no
 * template. `modelDir` is a local model directory; undefined (an s3:// model) is not checked here.
 */
export async function checkChatTemplate(opts: { modelDir?: string; template?: string; needsChat: boolean; templatesDir?: string }): Promise<string | null> {
  const { modelDir, template, needsChat } = opts;
  const names = templateNames(opts.templatesDir);
  if (template !== undefined) {
    if (isJinjaText(template) || names.includes(template)) return null;
    return `unknown chat template "${template}"; named templates: ${names.join(', ')} (or give Jinja text)`;
  }
  if (!needsChat || modelDir === undefined) return null;
  if ((await modelChatTemplate(modelDir)) !== null) return null; // a template, or no tokenizer to judge
  return `the model ${modelDir} has no chat template, which this stage's conversations need: set \`template\` in the spec (or the stage) to one of ${names.join(', ')} or to Jinja text`;
}
