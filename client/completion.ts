/**
 * `refinery completion bash|zsh`: a completion script generated from the commander program itself,
 * so it never falls behind the commands, subcommands and options.
 */
import type { Command } from 'commander';

/** One command as completion sees it: its path from the root and what may follow it. */
export interface CompletionNode {
  /** e.g. "refinery", "refinery worker drain". */
  path: string;
  subcommands: { name: string; description: string }[];
  options: { flag: string; description: string }[];
}

export const COMPLETION_SHELLS = ['bash', 'zsh'] as const;
export type CompletionShell = (typeof COMPLETION_SHELLS)[number];

/** Every command of the program, depth first; options are the command's own (with its parents' where its help shows them). */
export function completionTree(program: Command): CompletionNode[] {
  const nodes: CompletionNode[] = [];
  const visit = (cmd: Command, path: string, inherited: CompletionNode['options']) => {
    const own = cmd.options.flatMap((o) => [o.long, o.short].filter((f): f is string => !!f).map((flag) => ({ flag, description: o.description })));
    const showsParents = cmd.configureHelp().showGlobalOptions === true;
    const options = [...own, ...(showsParents ? inherited : []), { flag: '--help', description: 'display help' }];
    nodes.push({ path, subcommands: cmd.commands.map((c) => ({ name: c.name(), description: c.description() })), options: dedupe(options) });
    for (const sub of cmd.commands) visit(sub, `${path} ${sub.name()}`, [...own, ...inherited]);
  };
  visit(program, program.name(), []);
  return nodes;
}

function dedupe(options: CompletionNode['options']): CompletionNode['options'] {
  const seen = new Set<string>();
  return options.filter((o) => !seen.has(o.flag) && seen.add(o.flag));
}

export function completionScript(program: Command, shell: CompletionShell): string {
  const nodes = completionTree(program);
  return shell === 'bash' ? bashScript(program.name(), nodes) : zshScript(program.name(), nodes);
}

const fn = (name: string) => `_${name.replace(/[^A-Za-z0-9_]/g, '_')}`;
/** A shell word in single quotes. */
const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The `case` arm that descends from a command path into one of its subcommands. */
function descendArms(nodes: CompletionNode[]): string {
  return nodes
    .filter((n) => n.subcommands.length > 0)
    .map((n) => `      ${n.subcommands.map((s) => quote(`${n.path} ${s.name}`)).join('|')}) cmd_path="$cmd_path $word" ;;`)
    .join('\n');
}

function bashScript(name: string, nodes: CompletionNode[]): string {
  const words = nodes.map((n) => `    ${quote(n.path)}) words=${quote([...n.subcommands.map((s) => s.name), ...n.options.map((o) => o.flag)].join(' '))} ;;`).join('\n');
  return `# bash completion for ${name}: source <(${name} completion bash)
${fn(name)}() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" cmd_path=${quote(name)} word words i
  # Walk the words before the cursor down the command tree (options and their values stay put).
  for ((i = 1; i < COMP_CWORD; i++)); do
    word="\${COMP_WORDS[i]}"
    case "$cmd_path $word" in
${descendArms(nodes)}
    esac
  done
  case "$cmd_path" in
${words}
  esac
  # Nothing matched (a spec file, a run id): bash falls back to file names (-o default).
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o default -F ${fn(name)} ${name} bin/${name} ./bin/${name}
`;
}

function zshScript(name: string, nodes: CompletionNode[]): string {
  // _describe splits "name:description" at the first colon; colons in the name are escaped.
  const item = (value: string, description: string) => quote(`${value.replace(/:/g, '\\:')}:${description.replace(/\s+/g, ' ')}`);
  const arms = nodes
    .map((n) => `    ${quote(n.path)}) items=(${[...n.subcommands.map((s) => item(s.name, s.description)), ...n.options.map((o) => item(o.flag, o.description))].join(' ')}) ;;`)
    .join('\n');
  return `#compdef ${name}
# zsh completion for ${name}: source <(${name} completion zsh), after compinit
${fn(name)}() {
  local cmd_path=${quote(name)} word i
  local -a items
  for ((i = 2; i < CURRENT; i++)); do
    word="\${words[i]}"
    case "$cmd_path $word" in
${descendArms(nodes)}
    esac
  done
  case "$cmd_path" in
${arms}
  esac
  _describe -t commands ${quote(name)} items || _files
}
if (( $+functions[compdef] )); then compdef ${fn(name)} ${name}; fi
`;
}
