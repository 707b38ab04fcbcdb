/**
 * The GPU half of bench/gpu-check.sh (which checks the machine, builds the ~0.5B model and the
 * long synthetic data, then calls this): the real SFT (full fine-tuning, bf16 autocast) and DPO
 * (LoRA over bf16 weights) jobs on CUDA, each run alone by a plain script and then under Refinery
 * (private Temporal + MinIO, in-process worker with GPU 0, checkpoints committed while training),
 * with nvidia-smi sampled throughout. Reports tokens/s and GPU utilisation over each job's
 * training steps, and the ratios Refinery / alone.
 *
 *   npx tsx bench/gpu-check.ts --model DIR --data DIR [--steps 60] [--batch 8] [--max-length 1024]
 *   npx tsx bench/gpu-check.ts --model DIR --data DIR --cpu-smoke   # the same path on CPU, no nvidia-smi
 *
 * Tokens per step = batch × max_length (× 2 for DPO: chosen and rejected), exact because every row
 * of the synthetic data is longer than max_length.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { startRun } from '../client/commands/run.js';
import { validateSpec } from '../client/commands/validate.js';
import { layout } from '../storage/layout.js';
import { ObjectStore } from '../storage/object-store.js';
import { fmtBytes, fx, log, machineNote, median, parseArgs, table } from './lib/common.js';
import { jobConfigFor, pythonJobArgv, runPlainJob } from './lib/jobs.js';
import { startBenchStack } from './lib/stack.js';
import { benchClient, quietTemporalRuntime, startWorkers } from './lib/workers.js';

const args = parseArgs({ values: ['model', 'data', 'steps', 'batch', 'max-length'], flags: ['cpu-smoke'] });
const smoke = args.has('cpu-smoke');
const modelDir = path.resolve(args.get('model') ?? '');
const dataDir = path.resolve(args.get('data') ?? '');
const steps = Number(args.get('steps') ?? (smoke ? 6 : 60));
const batch = Number(args.get('batch') ?? (smoke ? 2 : 8));
const maxLength = Number(args.get('max-length') ?? (smoke ? 64 : 1024));
const WARMUP_STEPS = smoke ? 1 : 3;

interface GpuSample {
  t: number;
  util: number;
  memMiB: number;
}

/** nvidia-smi every 200 ms on GPU 0, until stopped. */
function gpuSampler(): { samples: GpuSample[]; stop: () => Promise<void> } {
  const samples: GpuSample[] = [];
  if (smoke) return { samples, stop: async () => undefined };
  const proc = execa('nvidia-smi', ['-i', '0', '--query-gpu=utilization.gpu,memory.used', '--format=csv,noheader,nounits', '-lms', '200'], { reject: false, buffer: false });
  createInterface({ input: proc.stdout! }).on('line', (line) => {
    const [util, mem] = line.split(',').map((x) => Number(x.trim()));
    if (Number.isFinite(util)) samples.push({ t: Date.now(), util: util!, memMiB: mem ?? NaN });
  });
  return {
    samples,
    stop: async () => {
      proc.kill('SIGTERM');
      await proc;
    },
  };
}

interface Measured {
  job: string;
  mode: 'alone' | 'Refinery';
  /** epoch ms of progress events: [step, t] */
  progress: [number, number][];
  launchToDoneS: number;
  tokensPerStep: number;
}

function summarize(m: Measured, gpu: GpuSample[]) {
  const p = m.progress.filter(([step]) => step > WARMUP_STEPS);
  const [s0, t0] = p[0] ?? [NaN, NaN];
  const [s1, t1] = p.at(-1) ?? [NaN, NaN];
  const stepsPerS = (s1 - s0) / ((t1 - t0) / 1000);
  const window = gpu.filter((g) => g.t >= t0 && g.t <= t1);
  return {
    stepsPerS,
    tokensPerS: stepsPerS * m.tokensPerStep,
    util: window.length ? window.reduce((a, g) => a + g.util, 0) / window.length : NaN,
    utilMedian: median(window.map((g) => g.util)),
    memMiB: window.length ? Math.max(...window.map((g) => g.memMiB)) : NaN,
  };
}

async function main(): Promise<void> {
  if (!args.get('model') || !args.get('data')) throw new Error('usage: gpu-check.ts --model DIR --data DIR [--steps N] [--cpu-smoke]');
  quietTemporalRuntime();
  const work = await mkdtemp(path.join(tmpdir(), 'refinery-gpu-check-'));
  log(`${smoke ? 'CPU smoke run' : 'GPU check'}: ${steps} steps, batch ${batch}, max_length ${maxLength}; ${machineNote()}`);
  const gpus = smoke ? [] : [0];
  const specFile = path.join(work, 'pipeline.yaml');
  const resources = smoke ? {} : { resources: { gpus: 1 } };
  const writeSpec = (prefix: string) =>
    writeFile(specFile, stringify({
      name: 'gpu-check',
      base_model: modelDir,
      storage: { prefix },
      datasets: {
        chat: { path: path.join(dataDir, 'chat.jsonl'), format: 'chat' },
        prefs: { path: path.join(dataDir, 'preference.jsonl'), format: 'preference' },
      },
      defaults: {
        hyper: { batch_size: batch, max_length: maxLength, max_steps: steps, save_steps: Math.max(1, Math.floor(steps / 2)), save_total_limit: 1, seed: 42, learning_rate: 0.0001 },
        timeouts: { heartbeat: '120s', stall: '10m' },
        retry: { maximum_attempts: 1 },
      },
      stages: [
        { id: 'sft', kind: 'sft', dataset: 'chat', finetuning: { type: 'full' }, ...resources },
        { id: 'dpo', kind: 'dpo', from: 'sft', dataset: 'prefs', finetuning: { type: 'lora', lora: { r: 16, alpha: 32 } }, ...resources },
      ],
    }));
  await writeSpec('gpu-check-validate');
  const { plan } = await validateSpec(specFile);
  const tokensPerStep = (kind: string) => batch * maxLength * (kind === 'dpo' ? 2 : 1);
  const measured: Measured[] = [];
  const gpu = gpuSampler();

  // ---- alone: the job commands back to back, GPU 0 visible
  for (const stage of plan.stages) {
    log(`alone: ${stage.id}`);
    const dir = path.join(work, 'alone', stage.id);
    const train = stage.dataset!.path;
    // dpo trains a LoRA adapter over the sft output, as in the pipeline
    const model = stage.kind === 'dpo' ? path.join(work, 'alone', 'sft', 'output') : modelDir;
    const run = await runPlainJob(pythonJobArgv(stage.kind), jobConfigFor(stage, { output: path.join(dir, 'output'), checkpoints: path.join(dir, 'checkpoints') }, { model }, { train, eval: null }), dir, undefined, { CUDA_VISIBLE_DEVICES: smoke ? '' : '0' });
    measured.push({
      job: stage.id,
      mode: 'alone',
      progress: run.events.filter((e) => e.event.event === 'progress').map((e) => [(e.event as { step: number }).step, performance.timeOrigin + e.t]),
      launchToDoneS: (run.endedAt - run.startedAt) / 1000,
      tokensPerStep: tokensPerStep(stage.kind),
    });
  }
  await rm(path.join(work, 'alone'), { recursive: true, force: true });

  // ---- under Refinery: the same two stages as one pipeline on a worker that owns GPU 0
  log('starting a private Temporal + MinIO and a worker with GPU 0');
  const stack = await startBenchStack();
  const workers = await startWorkers(stack, { gpus });
  const { client, close } = await benchClient(stack);
  let pipelineS = NaN;
  try {
    await writeSpec('gpu-check');
    const runId = `gpu-check-${Date.now()}`;
    log(`Refinery: run ${runId}`);
    const t0 = Date.now();
    const { handle } = await startRun(client, specFile, { id: runId, by: 'bench' });
    const result = await handle.result();
    pipelineS = (Date.now() - t0) / 1000;
    const store = new ObjectStore();
    for (const s of result.status.stages) {
      const text = (await store.getBytes(layout.jobEvents('gpu-check', runId, s.id, s.attempt)))?.toString('utf8') ?? '';
      const events = text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { at: string; event: string; step?: number });
      const at = (name: string) => Date.parse(events.find((e) => e.event === name)?.at ?? 'x');
      measured.push({
        job: s.id,
        mode: 'Refinery',
        progress: events.filter((e) => e.event === 'progress').map((e) => [e.step!, Date.parse(e.at)]),
        launchToDoneS: (at('done') - Date.parse(s.startedAt!)) / 1000,
        tokensPerStep: tokensPerStep(s.kind),
      });
    }
  } finally {
    await gpu.stop();
    await close();
    await workers.shutdown();
    await stack.stop();
    await rm(work, { recursive: true, force: true });
    await rm(workers.scratchDir, { recursive: true, force: true });
  }

  console.log(`\nGPU check: ${plan.stages.map((s) => `${s.id} (${s.finetuning.type})`).join(', ')}; ${steps} steps, batch ${batch} × max_length ${maxLength}${smoke ? ' — CPU SMOKE RUN, no GPU' : ''}`);
  console.log(`tokens/s and GPU utilisation over steps ${WARMUP_STEPS + 1}..${steps} (nvidia-smi every 200 ms); "stage start → done" includes process start, model load and, under Refinery, input downloads\n`);
  const rows: (string | number)[][] = [];
  const ratios: (string | number)[][] = [];
  for (const stage of plan.stages) {
    const a = measured.find((m) => m.job === stage.id && m.mode === 'alone');
    const r = measured.find((m) => m.job === stage.id && m.mode === 'Refinery');
    const sa = a && summarize(a, gpu.samples);
    const sr = r && summarize(r, gpu.samples);
    for (const [m, s] of [[a, sa], [r, sr]] as const) {
      if (m && s) rows.push([stage.id, m.mode, fx(s.stepsPerS, 2), fx(s.tokensPerS, 0), fx(s.util, 0), fx(s.utilMedian, 0), Number.isFinite(s.memMiB) ? fmtBytes(s.memMiB * 1024 * 1024) : 'n/a', fx(m.launchToDoneS, 1)]);
    }
    if (sa && sr) ratios.push([stage.id, `${fx(sr.tokensPerS / sa.tokensPerS, 3)}×`, Number.isFinite(sa.util) ? `${fx(sr.util - sa.util, 1)} points` : 'n/a']);
  }
  console.log(table(['job', 'mode', 'steps/s', 'tokens/s', 'GPU util mean %', 'median %', 'GPU mem max', 'stage start → done s'], rows));
  console.log('\nRefinery vs alone');
  console.log(table(['job', 'tokens/s ratio', 'GPU util difference'], ratios));
  console.log(`\nwhole pipeline under Refinery (both stages, inputs stored and fetched, checkpoints and outputs committed): ${fx(pipelineS, 1)} s`);
}

await main();
