/**
 * The "Examples:" block at the end of each command's --help: real invocations, one or two each,
 * keyed by command path. Kept apart from client/cli.ts so the flags above stay readable.
 */
import type { Command } from 'commander';

const RUN = 'demo-20261129-051609';

export const HELP_EXAMPLES: Record<string, string[]> = {
  validate: ['refinery validate demo/pipeline.yaml', "refinery validate demo/pipeline.yaml --json | jq '.plan.stages[].id'"],
  run: ['refinery run demo/pipeline.yaml --watch', 'refinery run demo/pipeline.yaml --id nightly-01 --force-stage ppo --json'],
  status: [`refinery status ${RUN}`, `refinery status ${RUN} --json | jq -r '.stages[] | "\\(.id) \\(.state)"'`],
  list: ['refinery list --state running', 'refinery list --pipeline demo-rlhf --since 2026-11-01 --json'],
  retry: [`refinery retry ${RUN} --from-stage ppo`],
  cancel: [`refinery cancel ${RUN}`, `refinery cancel ${RUN} --json`],
  approve: [`refinery approve ${RUN} --stage ppo --by alice --reason "eval looks good" --key ~/.refinery/alice.key`],
  reject: [`refinery reject ${RUN} --stage ppo --by alice --reason "reward hacking in samples" --json`],
  keygen: ['refinery keygen --out ~/.refinery/alice.key --name alice'],
  worker: ['refinery worker', 'REFINERY_GPUS=0,1 refinery worker --no-control --queue refinery-gpu-a100'],
  'worker drain': ['refinery worker drain --host gpu-node-7', 'refinery worker drain w-3f2a --no-wait --json'],
  'worker clear': ['refinery worker clear gpu-node-7'],
  workers: ['refinery workers', 'refinery workers --json'],
  'codec-server': ['REFINERY_PAYLOAD_KEY=... refinery codec-server --port 8888'],
  stack: ['refinery stack start', 'refinery stack status --json'],
  'make-tiny-model': ['refinery make-tiny-model --out models/tiny-llama', 'refinery make-tiny-model --out models/tiny-qwen2 --family qwen2'],
  'gguf-generate': [`refinery gguf-generate --run ${RUN} --prefix demo --prompt "What is the capital of France?"`],
  audit: [`refinery audit ${RUN} --prefix demo`],
  'audit verify': [`refinery audit verify ${RUN} --prefix demo`, `refinery audit verify ${RUN} --prefix demo --json || echo "exit $?: problems"`],
  report: [`refinery report ${RUN} --prefix demo --out report.html`],
  logs: [`refinery logs ${RUN} --prefix demo --stage sft`, `refinery logs ${RUN} --prefix demo --follow`],
  schedule: ['refinery schedule list'],
  'schedule create': ['refinery schedule create nightly.yaml --cron "0 2 * * *" --timezone America/New_York'],
  'schedule list': ['refinery schedule list --json'],
  'schedule describe': ['refinery schedule describe nightly'],
  'schedule pause': ['refinery schedule pause nightly --reason "data migration"'],
  'schedule unpause': ['refinery schedule unpause nightly'],
  'schedule trigger': ['refinery schedule trigger nightly'],
  'schedule delete': ['refinery schedule delete nightly'],
  model: ['refinery model list'],
  'model push': ['refinery model push ~/models/llama-3-8b --name llama-3-8b'],
  'model list': ['refinery model list --json'],
  'model aliases': ['refinery model aliases demo-rlhf'],
  promote: [`refinery promote ${RUN} --stage gguf --reason "passed eval" --key ~/.refinery/alice.key`],
  rollback: ['refinery rollback demo-rlhf --reason "regression in production"'],
  completion: ['source <(refinery completion bash)', 'refinery completion zsh > "${fpath[1]}/_refinery"'],
};

/** Every command's path under the program: "run", "worker drain", … */
export function commandPaths(program: Command): { path: string; command: Command }[] {
  const out: { path: string; command: Command }[] = [];
  const visit = (cmd: Command, prefix: string) => {
    for (const sub of cmd.commands) {
      const path = prefix ? `${prefix} ${sub.name()}` : sub.name();
      out.push({ path, command: sub });
      visit(sub, path);
    }
  };
  visit(program, '');
  return out;
}

/** Adds each command's examples to its --help. */
export function addHelpExamples(program: Command, examples: Record<string, string[]> = HELP_EXAMPLES): void {
  for (const { path, command } of commandPaths(program)) {
    const lines = examples[path];
    if (lines?.length) command.addHelpText('after', `\nExamples:\n${lines.map((l) => `  $ ${l}`).join('\n')}`);
  }
}
