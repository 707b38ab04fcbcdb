/**
 * `refinery`: the command line. Each command is a small function in client/commands/ that returns
 * data; this file parses flags, prints (text or --json) and maps errors to one line (or one JSON
 * object) and a documented exit code (client/exit-codes.ts).
 */
import path from 'node:path';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { connectClient } from './connection.js';
import { CliError, describeError } from './errors.js';
import { renderStatus } from './render.js';
import { registerAuditCommands } from './cli-audit.js';
import { registerModelCommands } from './cli-model.js';
import { registerScheduleCommands } from './cli-schedule.js';
import { COMPLETION_SHELLS, completionScript, type CompletionShell } from './completion.js';
import { EXIT, exitCodeForRunState, exitCodesHelp } from './exit-codes.js';
import { addHelpExamples } from './help-examples.js';
import { print, printError, wantsJson } from './output.js';

const jsonErrors = wantsJson(process.argv.slice(2));

// exitOverride and configureOutput come first: subcommands inherit them when they are added.
const program = new Command('refinery')
  .description('Durable, auditable, resumable LLM post-training pipelines on Temporal')
  .showHelpAfterError('(run with --help for usage)')
  // Usage errors reach main() as CommanderErrors: exit 2, and with --json one JSON object.
  .exitOverride()
  .configureOutput({ writeErr: (text) => (jsonErrors ? undefined : process.stderr.write(text)) })
  .addHelpText('after', exitCodesHelp());

program
  .command('validate')
  .description('check a pipeline spec and its datasets without running anything')
  .argument('<spec>', 'pipeline spec (YAML or JSON)')
  .option('--json', 'machine-readable output')
  .action(async (spec: string, opts: { json?: boolean }) => {
    const { validateSpec } = await import('./commands/validate.js');
    const result = await validateSpec(spec);
    print(opts.json, result, () =>
      [`${spec}: OK — pipeline "${result.plan.name}", ${result.plan.stages.length} stages in order: ${result.plan.stages.map((s) => s.id).join(' → ')}`,
        ...result.datasets.map((d) => `  dataset ${d.name}: ${d.rows ?? '?'} rows (${d.path})`)].join('\n'),
    );
  });

program
  .command('run')
  .description('start a pipeline run')
  .argument('<spec>', 'pipeline spec (YAML or JSON)')
  .option('--id <runId>', 'run id (default: <pipeline>-<timestamp>-<random>)')
  .option('-w, --watch', 'show live progress until the run ends; exit code reflects the outcome')
  .option('--resume-from <runId>', 'record that this run continues RUN (audit trail); reuse itself comes from the cache: unchanged stages are reused, interrupted ones resume from their checkpoints')
  .option('--force-stage <stageId...>', 'run these stages again even if a committed output matches')
  .option('--by <who>', 'who starts the run (default: $REFINERY_USER or the OS user)')
  .option('--json', 'machine-readable output')
  .action(async (spec: string, opts: { id?: string; watch?: boolean; resumeFrom?: string; forceStage?: string[]; by?: string; json?: boolean }) => {
    const { startRun, watchRun } = await import('./commands/run.js');
    const { client, close } = await connectClient();
    try {
      const { runId, handle, stageQueues } = await startRun(client, spec, { id: opts.id, resumeFrom: opts.resumeFrom, forceStages: opts.forceStage, by: opts.by });
      if (!opts.watch) {
        print(opts.json, { runId }, () => `started run ${runId}\n  watch:  refinery status ${runId}\n  cancel: refinery cancel ${runId}`);
        return;
      }
      if (!opts.json) process.stdout.write(`started run ${runId}\n`);
      // With --json, stdout is the final status alone; "no worker polls …" goes to stderr.
      const notice = opts.json ? (line: string) => process.stderr.write(line + '\n') : undefined;
      const final = await watchRun(client, handle, { out: opts.json ? devNull() : process.stdout, notice, stageQueues });
      if (opts.json) print(true, final, () => '');
      else printArtifacts(final);
      process.exitCode = exitCodeForRunState(final.state);
    } finally {
      await close();
    }
  });

program
  .command('status')
  .description('show a run: per stage state, attempt, step/total, loss, metrics, artifacts')
  .argument('<runId>')
  .option('--json', 'machine-readable output')
  .action(async (runId: string, opts: { json?: boolean }) => {
    const { runStatus } = await import('./commands/manage.js');
    const { client, close } = await connectClient();
    try {
      const status = await runStatus(client, runId);
      print(opts.json, status, () => renderStatus(status));
      if (!opts.json) printArtifacts(status);
    } finally {
      await close();
    }
  });

program
  .command('list')
  .description('list runs (filters use the same search attributes as the Temporal UI)')
  .option('--state <state>', 'running | completed | failed | cancelled | unchanged')
  .option('--pipeline <name>')
  .option('--since <date>', 'started at or after this date')
  .option('--limit <n>', 'at most this many', '50')
  .option('--json', 'machine-readable output')
  .action(async (opts: { state?: string; pipeline?: string; since?: string; limit: string; json?: boolean }) => {
    const { listRuns, renderRunList } = await import('./commands/manage.js');
    const { client, close } = await connectClient();
    try {
      const runs = await listRuns(client, { ...opts, limit: Number(opts.limit) });
      print(opts.json, runs, () => renderRunList(runs));
    } finally {
      await close();
    }
  });

program
  .command('retry')
  .description('run a finished run again from one stage: that stage and everything downstream run, the rest is reused')
  .argument('<runId>')
  .requiredOption('--from-stage <stageId>')
  .option('--id <newRunId>')
  .option('--by <who>')
  .option('--json', 'machine-readable output')
  .action(async (runId: string, opts: { fromStage: string; id?: string; by?: string; json?: boolean }) => {
    const { retryRun } = await import('./commands/retry.js');
    const { client, close } = await connectClient();
    try {
      const r = await retryRun(client, runId, opts);
      print(opts.json, r, () => `started run ${r.runId} (re-running ${r.forced.join(', ')}; the rest reused)\n  watch: refinery status ${r.runId}`);
    } finally {
      await close();
    }
  });

program
  .command('cancel')
  .description('cancel a run: its jobs are stopped (whole process trees) and the run shows cancelled')
  .argument('<runId>')
  .option('--json', 'machine-readable output')
  .action(async (runId: string, opts: { json?: boolean }) => {
    const { cancelRun } = await import('./commands/manage.js');
    const { client, close } = await connectClient();
    try {
      await cancelRun(client, runId);
      print(opts.json, { runId, cancellationRequested: true }, () => `cancellation requested for ${runId}`);
    } finally {
      await close();
    }
  });

for (const approved of [true, false]) {
  program
    .command(approved ? 'approve' : 'reject')
    .description(`${approved ? 'approve' : 'reject'} a stage that waits at an approval gate`)
    .argument('<runId>')
    .requiredOption('--stage <stageId>')
    .requiredOption('--by <who>')
    .requiredOption('--reason <text>')
    .option('--key <file>', 'sign the decision with this Ed25519 private key (default: the file $REFINERY_SIGNING_KEY names); see "refinery keygen"')
    .option('--json', 'machine-readable output')
    .action(async (runId: string, opts: { stage: string; by: string; reason: string; key?: string; json?: boolean }) => {
      const { decideApproval } = await import('./commands/manage.js');
      const { signDecision } = await import('./commands/signing.js');
      const { signingKeyFileFromEnv } = await import('../config/approvers.js');
      const keyFile = opts.key ?? signingKeyFileFromEnv();
      const decision = { stageId: opts.stage, approved, by: opts.by, reason: opts.reason };
      // Signed before connecting: a bad key file fails without touching the run.
      const sent = keyFile ? await signDecision(keyFile, runId, decision) : decision;
      const { client, close } = await connectClient();
      try {
        const outcome = await decideApproval(client, runId, sent);
        print(opts.json, { runId, stage: opts.stage, approved, by: opts.by, signed: Boolean(keyFile), outcome }, () => outcome);
      } finally {
        await close();
      }
    });
}

program
  .command('keygen')
  .description('make an Ed25519 key for signing approvals: FILE (private, mode 0600) and FILE.pub; prints the line for the approvers file')
  .requiredOption('--out <file>', 'where the private key goes (FILE.pub: the public key)')
  .option('--name <approver>', 'the approver\'s name (what --by will say): prints the approvers-file entry')
  .option('--force', 'replace existing files')
  .option('--json', 'machine-readable output')
  .action(async (opts: { out: string; name?: string; force?: boolean; json?: boolean }) => {
    const { generateKeyFiles } = await import('./commands/signing.js');
    const key = await generateKeyFiles(opts.out, { force: opts.force, comment: opts.name });
    const entry = { name: opts.name ?? '<your --by name>', publicKey: key.sshLine, pipelines: ['*'], stages: ['*'] };
    print(opts.json, { ...key, approversEntry: entry }, () =>
      [`private key: ${key.privateKeyFile} (mode 0600: keep it to yourself)`,
        `public key:  ${key.publicKeyFile}`,
        `fingerprint: ${key.fingerprint}`,
        `approvers file entry (REFINERY_APPROVERS; narrow pipelines and stages as needed):\n  ${JSON.stringify(entry)}`].join('\n'),
    );
  });

const workerCommand = program
  .command('worker')
  .description('run a worker (control queue and the default GPU queue unless told otherwise); SIGTERM drains it')
  .option('--no-control', 'do not serve workflows and control activities')
  .option('--queue <taskQueue...>', 'GPU task queues to serve (default: refinery-gpu)')
  .option('--scratch <dir>', 'scratch directory for job files (one per worker process)')
  .action(async (opts: { control: boolean; queue?: string[]; scratch?: string }) => {
    const { runWorker } = await import('../worker/main.js');
    await runWorker({ control: opts.control, queues: opts.queue, scratchDir: opts.scratch });
  });

workerCommand
  .command('drain')
  .description('drain workers for a deploy: no new work; running jobs checkpoint now, commit, and resume elsewhere (no stage attempt used)')
  .argument('[workerId...]', 'worker ids, as `refinery workers` lists them')
  .option('--host <host>', 'every live worker of this host')
  .option('--by <who>', 'who asks (recorded in the attempts it drains)')
  .option('--no-wait', 'return once the request is left, without waiting for the drain')
  .option('--timeout <duration>', 'how long to wait for the drain', '15m')
  .option('--json', 'machine-readable output (progress lines go to stderr)')
  .action(async (workerIds: string[], opts: { host?: string; by?: string; wait: boolean; timeout: string; json?: boolean }) => {
    const { drainWorkers } = await import('./commands/fleet.js');
    const { ObjectStore } = await import('../storage/object-store.js');
    const { parseDuration } = await import('../spec/duration.js');
    const log = (line: string) => (opts.json ? process.stderr : process.stdout).write(line + '\n');
    const drained = await drainWorkers(new ObjectStore(), { workerIds, host: opts.host, by: opts.by, wait: opts.wait, timeoutMs: parseDuration(opts.timeout), log });
    if (opts.json) print(true, { workers: drained, waited: opts.wait }, () => '');
  });

workerCommand
  .command('clear')
  .description("take a host out of quarantine: its workers take GPU work again")
  .argument('<host>')
  .option('--json', 'machine-readable output')
  .action(async (host: string, opts: { json?: boolean }) => {
    const { clearHost } = await import('./commands/fleet.js');
    const { ObjectStore } = await import('../storage/object-store.js');
    const cleared = await clearHost(new ObjectStore(), host);
    print(opts.json, { host, cleared }, () => (cleared ? `host ${host}: quarantine cleared (its workers notice within 15 s)` : `host ${host} was not quarantined`));
  });

program
  .command('workers')
  .description('the fleet: live workers (host, queues, state, running jobs) and quarantined hosts')
  .option('--json', 'machine-readable output')
  .action(async (opts: { json?: boolean }) => {
    const { fleetView, renderFleet } = await import('./commands/fleet.js');
    const { ObjectStore } = await import('../storage/object-store.js');
    const view = await fleetView(new ObjectStore());
    print(opts.json, view, () => renderFleet(view));
  });

program
  .command('codec-server')
  .description('decrypt payloads for the Temporal UI and the temporal CLI (remote codec endpoint; needs REFINERY_PAYLOAD_KEY, see docs/security.md)')
  .option('--port <n>', 'port', '8888')
  .option('--host <address>', 'address to bind (anyone who can reach it can decrypt)', '127.0.0.1')
  .option('--cors-origin <origin...>', 'browser origins allowed to call it: the Temporal UI (default http://localhost:8233 and http://127.0.0.1:8233)')
  .option('--namespace <namespace...>', 'namespaces served, matched against the X-Namespace header (default $TEMPORAL_NAMESPACE or refinery)')
  .option('--json', 'machine-readable output')
  .action(async (opts: { port: string; host: string; corsOrigin?: string[]; namespace?: string[]; json?: boolean }) => {
    const { startCodecServer, DEFAULT_UI_ORIGINS } = await import('./commands/codec-server.js');
    const { AesGcmPayloadCodec } = await import('../codec/payload-codec.js');
    const { payloadKeysFromEnv } = await import('../codec/payload-keys.js');
    const { temporalSettings } = await import('../config/temporal.js');
    const port = Number(opts.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new CliError(`--port "${opts.port}": expected a port number`, undefined, EXIT.badInput);
    const keys = payloadKeysFromEnv();
    if (!keys) throw new CliError('REFINERY_PAYLOAD_KEY is not set', 'the codec server needs the key the workers encrypt with (docs/security.md)', EXIT.badInput);
    const codec = new AesGcmPayloadCodec(keys);
    const namespaces = opts.namespace ?? [temporalSettings().namespace];
    const corsOrigins = opts.corsOrigin ?? DEFAULT_UI_ORIGINS;
    const server = await startCodecServer({ codec, namespaces, corsOrigins, port, host: opts.host, log: (line) => console.error(`[codec-server] ${line}`) });
    print(opts.json, { url: server.url, namespaces, corsOrigins, keyIds: codec.keyIds }, () =>
      [`codec server on ${server.url} (namespaces ${namespaces.join(', ')}; key ids ${codec.keyIds.join(', ')}; UI origins ${corsOrigins.join(', ')})`,
        `  Temporal UI: Settings → Codec Server → ${server.url}  (or temporal server start-dev --ui-codec-endpoint ${server.url})`,
        `  temporal CLI: temporal workflow show -w RUN_ID --namespace ${namespaces[0]} --codec-endpoint ${server.url}`].join('\n'),
    );
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    await server.close();
  });

program
  .command('stack')
  .description('the local stack: Temporal dev server and MinIO (start | stop | status)')
  .argument('<action>', 'start | stop | status')
  .option('--json', 'machine-readable output')
  .action(async (action: string, opts: { json?: boolean }) => {
    const { main } = await import('../infra/stack.js');
    process.exitCode = await main([action, ...(opts.json ? ['--json'] : [])]);
  });

program
  .command('make-tiny-model')
  .description('build a tiny random-initialised model: the demo\'s Llama, or a real family with its real tokenizer and chat template (docs/models.md)')
  .requiredOption('--out <dir>')
  .option('--family <name>', 'llama | llama3 | qwen2 | mistral | phi3 | gemma', 'llama')
  .option('--data <file...>', 'llama: text to train the tokenizer on', ['demo/data/sft.jsonl'])
  .option('--seed <n>', 'seed', '0')
  .option('--json', 'machine-readable output')
  .action(async (opts: { out: string; data: string[]; seed: string; family: string; json?: boolean }) => {
    const { makeTinyModel } = await import('./commands/make-tiny-model.js');
    const done = await makeTinyModel(opts);
    print(opts.json, { family: opts.family, out: path.resolve(opts.out), message: done }, () => done);
  });

program
  .command('gguf-generate')
  .description("generate from a run's GGUF export with llama.cpp (CPU)")
  .requiredOption('--run <runId>')
  .option('--stage <stageId>', 'the gguf stage', 'gguf')
  .requiredOption('--prompt <text>')
  .option('--type <type>', 'f16 | q8_0 | q4_0 ...', 'q8_0')
  .option('--prefix <prefix>', "the spec's storage.prefix", 'demo')
  .option('--max-tokens <n>', 'at most this many new tokens', '48')
  .option('--json', 'machine-readable output')
  .action(async (opts: { run: string; stage: string; prompt: string; type: string; prefix: string; maxTokens: string; json?: boolean }) => {
    const { ggufGenerate } = await import('./commands/gguf-generate.js');
    const out = await ggufGenerate({ ...opts, maxTokens: Number(opts.maxTokens) });
    print(opts.json, out, () => `llama.cpp, ${out.file} (${out.uri}):\n  user: ${opts.prompt}\n  model: ${out.text.trim()}`);
  });

registerAuditCommands(program);
registerScheduleCommands(program);
registerModelCommands(program);

program
  .command('completion')
  .description('print a shell completion script: source <(refinery completion bash), or zsh')
  .argument('<shell>', COMPLETION_SHELLS.join(' | '), (value: string): CompletionShell => {
    if (!(COMPLETION_SHELLS as readonly string[]).includes(value)) throw new InvalidArgumentError(`expected ${COMPLETION_SHELLS.join(' or ')}`);
    return value as CompletionShell;
  })
  .action((shell: CompletionShell) => {
    process.stdout.write(completionScript(program, shell));
  });

addHelpExamples(program);

function printArtifacts(status: { stages: { id: string; artifact?: { uri: string } }[] }): void {
  const rows = status.stages.filter((s) => s.artifact);
  if (rows.length === 0) return;
  console.log('artifacts:');
  for (const s of rows) console.log(`  ${s.id}: ${s.artifact!.uri}`);
}

function devNull(): NodeJS.WritableStream {
  return { write: () => true } as unknown as NodeJS.WritableStream;
}

async function main(): Promise<void> {
  // `refinery status X | head`: a closed pipe ends the command quietly.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
  try {
    await program.parseAsync(process.argv);
  } catch (err) {
    const report = describeError(err);
    process.exitCode = report.exitCode;
    // Commander printed its own usage error already (unless --json silenced it); help exits 0.
    if (err instanceof CommanderError && !jsonErrors) return;
    if (report.exitCode === EXIT.ok) return;
    printError(jsonErrors, report);
  }
}

await main();
