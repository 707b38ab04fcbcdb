/**
 * Orchestration overhead: the demo pipeline (SFT → reward → PPO → merge → GGUF, the real Python
 * jobs on the tiny model) through Refinery — private Temporal + MinIO, in-process workers from
 * worker/create-workers.ts — against the same job commands run back to back by a plain script,
 * with the job configs Refinery wrote (captured from its first run and replayed with fresh
 * output directories: same data, same seeds, same hyper-parameters).
 *
 *   npx tsx bench/orchestration-overhead.ts [--quick] [--reps N]
 *
 * --quick runs every stage with the contract test job (jobs/refinery_jobs/testjob.py, 20 ms a
 * step) instead of real training, without the reward gate, and with an `eval` stage in place of
 * `gguf` (the llama.cpp check needs a real GGUF file).
 *
 * Targets: wall time ≤ 5 % over the plain script, ≤ 1 s overhead per stage transition.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { parse, stringify } from 'yaml';
import { checkGgufDirectory } from '../activities/gguf-check.js';
import type { JobConfig } from '../activities/job-contract.js';
import { startRun } from '../client/commands/run.js';
import { validateSpec } from '../client/commands/validate.js';
import { layout } from '../storage/layout.js';
import { ObjectStore, sha256File } from '../storage/object-store.js';
import { REPO_ROOT } from '../config/paths.js';
import { jobsPython } from '../config/worker.js';
import type { PipelineResult } from '../workflows/pipeline.js';
import { fx, log, machineNote, median, parseArgs, table, verdict } from './lib/common.js';
import { JOBS_CWD, pythonJobArgv, runPlainJob, testJobArgv } from './lib/jobs.js';
import { startBenchStack } from './lib/stack.js';
import { benchClient, quietTemporalRuntime, startWorkers } from './lib/workers.js';

const args = parseArgs({ values: ['reps'] });
const quick = args.quick;
const reps = Number(args.get('reps') ?? (quick ? 3 : 2));
const STEP_SECONDS = 0.02;

/**
 * Every job goes through this tiny shell wrapper, in Refinery and in the plain script alike (a
 * few ms, the same on both sides): it keeps a copy of the job's config, which the training
 * activity deletes with its scratch folder once the stage is committed.
 */
const CAPTURE = 'for a; do c="$a"; done; cp "$c" "$0/$(basename "$(dirname "$c")").json"; exec "$@"';
const captured = (captureDir: string, argv: [string, ...string[]]): [string, ...string[]] => ['/bin/sh', '-c', CAPTURE, captureDir, ...argv];

interface StageTimes {
  id: string;
  /** epoch ms of the job's `started` and `done` events */
  started: number;
  done: number;
}

interface RunTimes {
  mode: 'refinery' | 'plain';
  start: number;
  end: number;
  stages: StageTimes[];
}

async function main(): Promise<void> {
  quietTemporalRuntime();
  const work = await mkdtemp(path.join(tmpdir(), 'refinery-bench-orch-'));
  const loadBefore = machineNote();
  log('starting a private Temporal + MinIO');
  const stack = await startBenchStack();
  const store = new ObjectStore();
  const captureDir = path.join(work, 'captured');
  await mkdir(captureDir);
  const throwaway = path.join(work, 'captured-plain');
  await mkdir(throwaway);
  const jobArgv = (kind: string) => (quick ? testJobArgv() : pythonJobArgv(kind));
  const workers = await startWorkers(stack, { jobCommand: (kind) => captured(captureDir, jobArgv(kind)) });
  const { client, close } = await benchClient(stack);
  try {
    // The model and the spec: demo/pipeline.yaml with absolute paths and a storage prefix per run.
    const modelDir = path.join(work, 'tiny-llama');
    const data = path.join(REPO_ROOT, 'demo', 'data');
    if (quick) {
      await mkdir(modelDir);
      await writeFile(path.join(modelDir, 'config.json'), JSON.stringify({ model_type: 'bench-placeholder' }));
    } else {
      log('building the tiny model (python -m refinery_jobs.make_tiny_model)');
      await execa(jobsPython(), ['-m', 'refinery_jobs.make_tiny_model', '--out', modelDir, '--data', ...['sft.jsonl', 'preference.jsonl', 'prompts.jsonl'].map((f) => path.join(data, f))], { cwd: JOBS_CWD });
    }
    const writeSpec = async (prefix: string): Promise<string> => {
      const spec = parse(await readFile(path.join(REPO_ROOT, 'demo', 'pipeline.yaml'), 'utf8')) as {
        base_model: string;
        storage: { prefix: string };
        datasets: Record<string, { path: string }>;
        stages: Record<string, unknown>[];
      };
      spec.base_model = modelDir;
      spec.storage.prefix = prefix;
      for (const d of Object.values(spec.datasets)) d.path = path.join(REPO_ROOT, 'demo', d.path);
      if (quick) {
        spec.stages = spec.stages.map((s) => (s.kind === 'gguf' ? { id: s.id, kind: 'eval', from: s.from, dataset: 'chats' } : s));
        for (const s of spec.stages) {
          delete s.gate;
          delete s.params; // the test job has knobs of its own
          s.job_params = { step_seconds: STEP_SECONDS };
        }
      }
      const file = path.join(work, `pipeline-${prefix}.yaml`);
      await writeFile(file, stringify(spec));
      return file;
    };
    const { plan } = await validateSpec(await writeSpec('bench-validate'));

    // ---- one Refinery run
    const refineryRun = async (rep: number): Promise<{ times: RunTimes; result: PipelineResult; prefix: string }> => {
      const prefix = `bench-r${rep}`;
      const specFile = await writeSpec(prefix);
      const runId = `orch-${rep}-${Date.now()}`;
      const start = Date.now();
      const { handle } = await startRun(client, specFile, { id: runId, by: 'bench' });
      const result = await handle.result();
      const end = Date.now();
      if (result.status.state !== 'completed') throw new Error(`run ${runId}: ${result.status.state}: ${result.status.error}`);
      const stages: StageTimes[] = [];
      for (const s of result.status.stages) {
        const text = (await store.getBytes(layout.jobEvents(prefix, runId, s.id, s.attempt)))?.toString('utf8') ?? '';
        const events = text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { at: string; event: string });
        const at = (name: string) => Date.parse(events.find((e) => e.event === name)?.at ?? 'x');
        stages.push({ id: s.id, started: at('started'), done: at('done') });
        if (s.attempt !== 1) log(`note: stage ${s.id} took ${s.attempt} attempts`);
      }
      return { times: { mode: 'refinery', start, end, stages }, result, prefix };
    };

    // ---- the captured configs, remapped for a plain run
    let replay: ((root: string) => Promise<JobConfig[]>) | undefined;
    const prepareReplay = async (result: PipelineResult) => {
      const byStage = new Map<string, JobConfig>();
      for (const f of await readdir(captureDir)) {
        const cfg = JSON.parse(await readFile(path.join(captureDir, f), 'utf8')) as JobConfig;
        byStage.set(cfg.stage_id, cfg);
      }
      const stageOfManifest = new Map(Object.entries(result.artifacts).map(([id, a]) => [a.manifestSha256, id]));
      const demoBySha = new Map<string, string>();
      for (const f of await readdir(data)) demoBySha.set(await sha256File(path.join(data, f)), path.join(data, f));
      const datasetPath = async (p: string | null) => {
        if (p === null) return null;
        const local = demoBySha.get(await sha256File(p));
        if (!local) throw new Error(`captured dataset ${p} is none of demo/data/*`);
        return local;
      };
      const datasets = new Map<string, JobConfig['datasets']>();
      for (const [id, cfg] of byStage) datasets.set(id, { train: await datasetPath(cfg.datasets.train), eval: await datasetPath(cfg.datasets.eval) });
      replay = async (root: string) =>
        plan.stages.map((stage) => {
          const cfg = byStage.get(stage.id);
          if (!cfg) throw new Error(`no captured config for stage ${stage.id}`);
          const inputs: Record<string, string> = {};
          for (const [name, dir] of Object.entries(cfg.inputs)) {
            const upstream = stageOfManifest.get(path.basename(dir));
            inputs[name] = upstream ? path.join(root, upstream, 'output') : modelDir;
          }
          return { ...cfg, output_dir: path.join(root, stage.id, 'output'), checkpoint_dir: path.join(root, stage.id, 'checkpoints'), resume_from: null, inputs, datasets: datasets.get(stage.id)! };
        });
    };

    // ---- one plain run: the same commands, back to back
    const plainRun = async (rep: number): Promise<RunTimes> => {
      const root = path.join(work, `plain-${rep}`);
      const configs = await replay!(root);
      const start = Date.now();
      const stages: StageTimes[] = [];
      for (const cfg of configs) {
        const run = await runPlainJob(captured(throwaway, jobArgv(cfg.kind)), cfg, path.join(root, cfg.stage_id));
        const at = (name: string) => performance.timeOrigin + (run.events.find((e) => e.event.event === name)?.t ?? NaN);
        stages.push({ id: cfg.stage_id, started: at('started'), done: at('done') });
      }
      const end = Date.now();
      return { mode: 'plain', start, end, stages };
    };

    const runs: RunTimes[] = [];
    let ggufCheckMs: number | undefined;
    for (let rep = 0; rep < reps; rep++) {
      // Refinery first in the first rep (its configs are replayed), then alternating.
      const order: ('refinery' | 'plain')[] = rep % 2 === 0 ? ['refinery', 'plain'] : ['plain', 'refinery'];
      for (const mode of order) {
        log(`rep ${rep + 1}/${reps}: ${mode}`);
        if (mode === 'refinery') {
          const r = await refineryRun(rep);
          runs.push(r.times);
          if (!replay) await prepareReplay(r.result);
        } else {
          runs.push(await plainRun(rep));
          if (!quick && ggufCheckMs === undefined) {
            // What the GGUF stage does on top of its job: llama.cpp loads and checks every file.
            const t0 = performance.now();
            await checkGgufDirectory(path.join(work, `plain-${rep}`, 'gguf', 'output'));
            ggufCheckMs = performance.now() - t0;
          }
          await rm(path.join(work, `plain-${rep}`), { recursive: true, force: true });
        }
        log(`  ${fx((runs.at(-1)!.end - runs.at(-1)!.start) / 1000, 1)} s`);
      }
    }

    // ---- report
    const wall = (mode: RunTimes['mode']) => median(runs.filter((r) => r.mode === mode).map((r) => (r.end - r.start) / 1000));
    const R = wall('refinery');
    const P = wall('plain');
    const n = plan.stages.length;
    const perTransition = (R - P) / n;
    console.log(`\norchestration overhead: ${plan.name} (${plan.stages.map((s) => s.id).join(' → ')}), ${quick ? 'contract test job, 20 ms a step (--quick)' : 'real Python jobs on the tiny model, CPU'}; ${reps} interleaved reps, medians`);
    console.log(`machine: ${loadBefore} at the start, ${machineNote()} at the end\n`);
    console.log(table(['', 'wall s', ...Array.from({ length: reps }, (_, i) => `rep ${i + 1}`)], [
      ['plain script (jobs back to back)', fx(P), ...runs.filter((r) => r.mode === 'plain').map((r) => fx((r.end - r.start) / 1000))],
      ['Refinery (stack, workers, commits)', fx(R), ...runs.filter((r) => r.mode === 'refinery').map((r) => fx((r.end - r.start) / 1000))],
    ]));
    // Where the time goes, from the jobs' own `started`/`done` events: gaps are everything that
    // is not the job training (process start and imports on both sides; on Refinery's side also
    // workflows, uploads, downloads, verification).
    const gap = (r: RunTimes, i: number) => (i === 0 ? r.stages[0]!.started - r.start : i === n ? r.end - r.stages[n - 1]!.done : r.stages[i]!.started - r.stages[i - 1]!.done);
    const job = (r: RunTimes, i: number) => r.stages[i]!.done - r.stages[i]!.started;
    const med = (mode: RunTimes['mode'], f: (r: RunTimes) => number) => median(runs.filter((r) => r.mode === mode).map(f)) / 1000;
    const rows: (string | number)[][] = [];
    for (let i = 0; i <= n; i++) {
      const label = i === 0 ? `start → ${plan.stages[0]!.id} job started` : i === n ? `${plan.stages[n - 1]!.id} done → run finished` : `${plan.stages[i - 1]!.id} done → ${plan.stages[i]!.id} started`;
      const g = [med('plain', (r) => gap(r, i) * 1), med('refinery', (r) => gap(r, i) * 1)];
      rows.push([label, fx(g[0]!), fx(g[1]!), fx(g[1]! - g[0]!)]);
      if (i < n) {
        const j = [med('plain', (r) => job(r, i)), med('refinery', (r) => job(r, i))];
        rows.push([`  ${plan.stages[i]!.id} job (started → done)`, fx(j[0]!), fx(j[1]!), fx(j[1]! - j[0]!)]);
      }
    }
    console.log('\nbreakdown (medians, s; gaps include the job process start on both sides)');
    console.log(table(['', 'plain', 'Refinery', 'difference'], rows));
    if (ggufCheckMs !== undefined) console.log(`\nthe GGUF stage's llama.cpp check (Refinery only; measured once on the plain output): ${fx(ggufCheckMs / 1000)} s`);
    console.log('\ntargets');
    console.log(table(['target', 'measured', ''], [
      ['wall time ≤ 1.05× the plain script', `${fx(R / P, 3)}× (+${fx(R - P)} s)`, verdict(R / P <= 1.05)],
      [`overhead ≤ 1 s per stage transition (${n} stages)`, `${fx(perTransition)} s`, verdict(perTransition <= 1)],
    ]));
  } finally {
    await close();
    await workers.shutdown();
    await stack.stop();
    await rm(work, { recursive: true, force: true });
    await rm(workers.scratchDir, { recursive: true, force: true });
  }
}

await main();
