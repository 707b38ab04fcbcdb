/**
 * `model push|list`: base models stored in the bucket by name (client/commands/model.ts), so that a
 * spec's `base_model: NAME` needs no disk shared between the CLI and the workers. `model aliases`,
 * `promote`, `rollback`: the registry of trained models (client/commands/registry.ts).
 */
import type { Command } from 'commander';
import { print } from './output.js';

export function registerModelCommands(program: Command): void {
  const model = program.command('model').description('store base models in the bucket by name, for specs that say `base_model: NAME`');

  model
    .command('push')
    .description('store a Hugging Face model directory, content-addressed, and name it; resumable: files already stored with the same sha256 are not sent again')
    .argument('<dir>', 'model directory (config.json, *.safetensors, tokenizer files)')
    .requiredOption('--name <name>', 'the name specs use as base_model (letters, digits, ".", "_", "-")')
    .option('--prefix <prefix>', "the storage.prefix of the specs that will use it", 'refinery')
    .option('--by <who>', 'who pushes it, recorded with the push (default: $REFINERY_USER or the OS user)')
    .option('--json', 'machine-readable output')
    .action(async (dir: string, opts: { name: string; prefix: string; by?: string; json?: boolean }) => {
      const { formatBytes, progressPrinter, pushModel } = await import('./commands/model.js');
      const bar = progressPrinter(process.stderr, opts.name);
      const controller = new AbortController();
      // ^C stops taking new files and parts; what is stored stays, and the next push resumes from it.
      process.once('SIGINT', () => controller.abort(new Error('interrupted: push again to resume')));
      const r = await pushModel(dir, { name: opts.name, prefix: opts.prefix, by: opts.by, onProgress: bar.update, signal: controller.signal }).finally(bar.done);
      print(opts.json, r, () =>
        [
          `model ${r.name}: ${r.uri}`,
          `  ${r.files} files, ${formatBytes(r.bytes)}, manifest ${r.manifestSha256}`,
          r.alreadyCommitted
            ? '  already stored: nothing uploaded'
            : `  uploaded in ${r.seconds.toFixed(1)} s${r.skippedFiles ? ` (${r.skippedFiles} files were already stored)` : ''}`,
          `  use it in a spec: base_model: ${r.name}${opts.prefix !== 'refinery' ? `   (with storage.prefix: ${opts.prefix})` : ''}`,
        ].join('\n'),
      );
    });

  model
    .command('list')
    .description('the named models and what each points at now')
    .option('--prefix <prefix>', "the specs' storage.prefix", 'refinery')
    .option('--json', 'machine-readable output')
    .action(async (opts: { prefix: string; json?: boolean }) => {
      const { formatBytes, listPushedModels } = await import('./commands/model.js');
      const models = await listPushedModels({ prefix: opts.prefix });
      print(opts.json, models, () => {
        if (models.length === 0) return `no models under ${opts.prefix}/models/ (store one with: refinery model push DIR --name NAME)`;
        const rows = models.map((m) => [m.name, `${m.files}`, formatBytes(m.bytes), m.manifestSha256.slice(0, 12), m.pushedAt.replace(/\.\d+Z$/, 'Z'), m.pushedBy]);
        const head = ['NAME', 'FILES', 'SIZE', 'MANIFEST', 'PUSHED', 'BY'];
        const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
        return [head, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
      });
    });

  model
    .command('aliases')
    .description("a trained model's aliases (production, candidate, …), what each points at and replaced, and their whole history; checks the registry log and the targets")
    .argument('<name>', 'model name (a pipeline name unless promoted with --name)')
    .option('--prefix <prefix>', "the specs' storage.prefix", 'refinery')
    .option('--json', 'machine-readable output')
    .action(async (name: string, opts: { prefix: string; json?: boolean }) => {
      const { listAliases, renderAliases } = await import('./commands/registry.js');
      const r = await listAliases({ name, prefix: opts.prefix });
      print(opts.json, r, () => renderAliases(r));
      if (r.problems.length > 0) process.exitCode = 1;
    });

  program
    .command('promote')
    .description("point an alias of a model (default: production) at a stage's committed output of a completed run; the alias it replaces stays a rollback away")
    .argument('<runId>', 'a completed run')
    .requiredOption('--stage <stageId>', 'the stage whose output to promote (e.g. merge, gguf)')
    .requiredOption('--reason <text>', 'why, for the registry log')
    .option('--alias <alias>', 'alias to move', 'production')
    .option('--name <model>', "model name (default: the run's pipeline name)")
    .option('--prefix <prefix>', "the spec's storage.prefix", 'refinery')
    .option('--by <who>', 'who promotes (default: $REFINERY_USER or the OS user)')
    .option('--key <file>', 'sign the change with this Ed25519 private key (refinery keygen; default $REFINERY_SIGNING_KEY)')
    .option('--json', 'machine-readable output')
    .action(async (runId: string, opts: { stage: string; reason: string; alias: string; name?: string; prefix: string; by?: string; key?: string; json?: boolean }) => {
      const { promoteRun } = await import('./commands/registry.js');
      const r = await promoteRun({ runId, stage: opts.stage, alias: opts.alias, name: opts.name, prefix: opts.prefix, by: opts.by, reason: opts.reason, keyFile: opts.key });
      const e = r.record.event;
      print(opts.json, r, () => `${r.model}@${r.alias} -> ${e.target!.uri} (run ${runId}, stage ${opts.stage})${e.replaced ? `\n  replaced ${e.replaced.uri} (run ${e.replaced.runId}); undo: refinery rollback ${r.model} --alias ${r.alias} --reason TEXT` : ''}`);
    });

  program
    .command('rollback')
    .description('point an alias of a model back at what it pointed at before its current target')
    .argument('<name>', 'model name')
    .requiredOption('--reason <text>', 'why, for the registry log')
    .option('--alias <alias>', 'alias to move back', 'production')
    .option('--prefix <prefix>', "the specs' storage.prefix", 'refinery')
    .option('--by <who>', 'who rolls back (default: $REFINERY_USER or the OS user)')
    .option('--key <file>', 'sign the change with this Ed25519 private key (refinery keygen; default $REFINERY_SIGNING_KEY)')
    .option('--json', 'machine-readable output')
    .action(async (name: string, opts: { reason: string; alias: string; prefix: string; by?: string; key?: string; json?: boolean }) => {
      const { rollbackAlias } = await import('./commands/registry.js');
      const r = await rollbackAlias({ name, alias: opts.alias, prefix: opts.prefix, by: opts.by, reason: opts.reason, keyFile: opts.key });
      const e = r.record.event;
      print(opts.json, r, () => `${r.model}@${r.alias} -> ${e.target!.uri} (run ${e.target!.runId}, stage ${e.target!.stage}); was ${e.replaced!.uri}`);
    });
}
