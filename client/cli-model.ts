/**
 * `model push|list`: base models stored in the bucket by name (client/commands/model.ts), so that a
 * spec's `base_model: NAME` needs no disk shared between the CLI and the workers.
 */
import type { Command } from 'commander';

const print = (json: boolean | undefined, data: unknown, text: () => string) => {
  process.stdout.write((json ? JSON.stringify(data, null, 2) : text()) + '\n');
};

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
}
