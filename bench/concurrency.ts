/**
 * Concurrency: N pipelines at once (3 stages each: sft → dpo → merge, every stage the fast
 * contract test job) on one Temporal dev server, one MinIO and one worker process (control +
 * training, `--slots` job slots). Reports stage transitions per second, p50/p99 time from a stage
 * becoming ready to its job starting, worker RSS and where the CPU went; the peer is a plain
 * script running the same number of the same jobs with the same parallelism, which bounds what
 * any orchestrator could do on this machine.
 *
 *   npx tsx bench/concurrency.ts [--quick] [--n 10,100,500] [--slots 8] [--box 180]
 *
 * --quick: N = 10, 50, time box 45 s. Each level is time-boxed (--box seconds, the plain script a
 * third of that): throughput is measured over the box, runs still going at its end are queried
 * and terminated, and a stage still waiting for its job then counts with the time it has waited
 * so far (a lower bound) in the latency percentiles.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { statusQuery } from '../workflows/messages.js';
import type { PipelineStatus } from '../workflows/types.js';
import { stringify } from 'yaml';
import { validateSpec } from '../client/commands/validate.js';
import type { PipelinePlan } from '../spec/plan-types.js';
import { layout } from '../storage/layout.js';
import { ObjectStore } from '../storage/object-store.js';
import { REPO_ROOT } from '../config/paths.js';
import { CONTROL_TASK_QUEUE } from '../config/temporal.js';
import { pipelineWorkflow, type PipelineResult } from '../workflows/pipeline.js';
import { fmtBytes, fx, log, machineNote, median, parseArgs, percentile, sleep, table } from './lib/common.js';
import { jobConfigFor, runPlainJob, testJobArgv } from './lib/jobs.js';
import { machineCpu, procCpu, rssSampler } from './lib/proc.js';
import { startBenchStack } from './lib/stack.js';
import { benchClient, quietTemporalRuntime, startWorkers } from './lib/workers.js';

const args = parseArgs({ values: ['n', 'slots', 'box'] });
const quick = args.quick;
const sizes = (args.get('n') ?? (quick ? '10,50' : '10,100,500')).split(',').map(Number);
const slots = Number(args.get('slots') ?? 8);
const boxS = Number(args.get('box') ?? (quick ? 45 : 180));
const STEPS = 5;
const STEP_SECONDS = 0.01;

interface Level {
  n: number;
  refinery: {
    wallS: number;
    finished: number;
    terminated: number;
    censored: number;
    historyEvents?: number;
    failed: number;
    stages: number;
    readyToJob: number[];
    doneToNext: number[];
    runStartToFirstJob: number[];
    cpu: Record<string, number>;
    rss: Record<string, number>;
    machineBusy: number;
  };
  plain: { wallS: number; jobs: number; cpu: number };
}

async function main(): Promise<void> {
  quietTemporalRuntime();
  const loadBefore = machineNote();
  log(`starting a private Temporal + MinIO and one worker process (control + training, ${slots} job slots)`);
  const stack = await startBenchStack();
  const store = new ObjectStore();
  const work = await mkdtemp(path.join(tmpdir(), 'refinery-bench-conc-'));
  const workers = await startWorkers(stack, { gpus: Array.from({ length: slots }, (_, i) => i), jobCommand: () => testJobArgv() });
  const { client, close } = await benchClient(stack);
  const levels: Level[] = [];
  try {
    await mkdir(path.join(work, 'base'));
    await writeFile(path.join(work, 'base', 'config.json'), JSON.stringify({ model_type: 'bench-placeholder' }));
    const params = { step_seconds: STEP_SECONDS };
    const specFile = path.join(work, 'pipeline.yaml');
    await writeFile(specFile, stringify({
      name: 'bench-concurrency',
      base_model: './base',
      storage: { prefix: 'conc' },
      datasets: {
        chats: { path: path.join(REPO_ROOT, 'demo', 'data', 'sft.jsonl'), format: 'chat' },
        prefs: { path: path.join(REPO_ROOT, 'demo', 'data', 'preference.jsonl'), format: 'preference' },
      },
      defaults: { hyper: { max_steps: STEPS, save_steps: STEPS } },
      stages: [
        { id: 'sft', kind: 'sft', dataset: 'chats', job_params: params },
        { id: 'dpo', kind: 'dpo', from: 'sft', dataset: 'prefs', job_params: params },
        { id: 'merge', kind: 'merge', from: 'dpo', job_params: params },
      ],
    }));
    const { plan } = await validateSpec(specFile);
    // Each run gets its own seed, hence its own cache keys (no stage is reused from another run);
    // datasets and base model are shared, committed once by a warm-up run.
    let serial = 0;
    const planFor = (seed: number): PipelinePlan => ({ ...plan, stages: plan.stages.map((s) => ({ ...s, hyper: { ...s.hyper, seed } })) });
    const start = (n: number, i: number): Promise<WorkflowHandle<typeof pipelineWorkflow>> => {
      const runId = `conc-${n}-${i}-${serial++}`;
      return client.workflow.start(pipelineWorkflow, { workflowId: runId, taskQueue: CONTROL_TASK_QUEUE, args: [{ runId, plan: planFor(serial), requestedBy: 'bench' }] });
    };
    log('warm-up run (commits the shared inputs)');
    await (await start(0, 0)).result();

    for (const n of sizes) {
      // ---- plain script: n × stages jobs, `slots` at a time
      log(`N=${n}: plain script, ${n * plan.stages.length} jobs, ${slots} at a time (at most ${fx(boxS / 3, 0)} s)`);
      const jobs = Array.from({ length: n * plan.stages.length }, (_, i) => i);
      const plainCpu0 = procCpu('self')!;
      const plainT0 = performance.now();
      const plainDeadline = plainT0 + (boxS / 3) * 1000;
      let next = 0;
      let ran = 0;
      await Promise.all(Array.from({ length: slots }, async () => {
        while (next < jobs.length && performance.now() < plainDeadline) {
          const i = next++;
          const stage = plan.stages[i % plan.stages.length]!;
          const dir = path.join(work, 'plain', String(i));
          await runPlainJob(testJobArgv(), jobConfigFor({ ...stage, hyper: { ...stage.hyper, seed: i } }, { output: path.join(dir, 'out'), checkpoints: path.join(dir, 'ck') }, {}, { train: null, eval: null }), dir);
          ran++;
        }
      }));
      const plainWall = (performance.now() - plainT0) / 1000;
      const plainCpu1 = procCpu('self')!;
      await rm(path.join(work, 'plain'), { recursive: true, force: true });

      // ---- Refinery: n pipelines started at once
      log(`N=${n}: Refinery, ${n} pipelines at once`);
      const pids = { worker: process.pid, temporal: stack.temporal!.pid, minio: stack.minio!.pid };
      const cpu0 = { worker: procCpu('self')!, temporal: procCpu(pids.temporal)!, minio: procCpu(pids.minio)! };
      const machine0 = machineCpu();
      const sampler = rssSampler({ worker: 'self', temporal: pids.temporal, minio: pids.minio });
      const t0 = Date.now();
      const handles = await Promise.all(Array.from({ length: n }, (_, i) => start(n, i)));
      const settled = new Map<string, PipelineResult | Error>();
      const all = Promise.all(handles.map((h) => h.result().then((r) => void settled.set(h.workflowId, r), (err: unknown) => void settled.set(h.workflowId, err as Error))));
      await Promise.race([all, sleep(Math.max(0, t0 + boxS * 1000 - Date.now()))]);
      const t1 = Date.now();
      const inBox = new Map(settled); // what ended inside the box (terminations below reject the rest)
      const rss = sampler.stop();
      const machine1 = machineCpu();
      const cpu1 = { worker: procCpu('self')!, temporal: procCpu(pids.temporal)!, minio: procCpu(pids.minio)! };
      // Runs still going at the end of the box: their status now, then terminate them.
      const statuses: PipelineStatus[] = [];
      let terminated = 0;
      for (const h of handles) {
        const r = inBox.get(h.workflowId);
        if (r && !(r instanceof Error)) statuses.push(r.status);
        else if (!r) {
          const st = await h.query(statusQuery).catch(() => undefined);
          if (st) statuses.push(st);
          await h.terminate('bench: time box').catch(() => undefined);
          terminated++;
        }
      }
      const failed = [...inBox.values()].filter((r): r is Error => r instanceof Error);
      const readyToJob: number[] = [];
      const doneToNext: number[] = [];
      const runStartToFirstJob: number[] = [];
      let completedStages = 0;
      let censored = 0;
      log(`N=${n}: reading the event logs of the completed stages`);
      await Promise.all(statuses.map(async (st) => {
        let prevDone: number | undefined;
        for (const s of st.stages) {
          // Runs cut by the box are queried after it, one by one, while they keep going: only what
          // happened inside the box counts (job event times, same clock).
          if (!s.startedAt || Date.parse(s.startedAt) > t1) break;
          if (s.state === 'running' && s.step === 0) {
            // ready, its job not started yet: waited at least this long
            readyToJob.push(t1 - Date.parse(s.startedAt));
            censored++;
          }
          if (s.state !== 'completed') break;
          const text = (await store.getBytes(layout.jobEvents(plan.storage.prefix, st.runId, s.id, s.attempt)))?.toString('utf8') ?? '';
          const events = text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { at: string; event: string });
          const started = Date.parse(events.find((e) => e.event === 'started')?.at ?? 'x');
          const done = Date.parse(events.find((e) => e.event === 'done')?.at ?? 'x');
          if (!(done <= t1)) {
            if (!(started <= t1)) {
              readyToJob.push(t1 - Date.parse(s.startedAt));
              censored++;
            }
            break;
          }
          completedStages++;
          readyToJob.push(started - Date.parse(s.startedAt!));
          if (prevDone !== undefined) doneToNext.push(started - prevDone);
          else runStartToFirstJob.push(started - t0);
          prevDone = done;
        }
      }));
      // How much Temporal history one run makes (parent + its stage workflows).
      let historyEvents: number | undefined;
      const sample = statuses.find((st) => st.state === 'completed');
      if (sample) {
        historyEvents = 0;
        for (const id of [sample.runId, ...sample.stages.map((s) => `${sample.runId}--${s.id}`)]) historyEvents += (await client.workflow.getHandle(id).fetchHistory()).events?.length ?? 0;
      }
      levels.push({
        n,
        refinery: {
          wallS: (t1 - t0) / 1000,
          finished: inBox.size,
          terminated,
          censored,
          historyEvents,
          failed: failed.length,
          stages: completedStages,
          readyToJob,
          doneToNext,
          runStartToFirstJob,
          cpu: {
            'worker process (workflows, activities)': cpu1.worker.self - cpu0.worker.self,
            'jobs (python test job)': cpu1.worker.children - cpu0.worker.children,
            'Temporal dev server': cpu1.temporal.self - cpu0.temporal.self,
            MinIO: cpu1.minio.self - cpu0.minio.self,
          },
          rss,
          machineBusy: (machine1.busy - machine0.busy) / (machine1.total - machine0.total),
        },
        plain: { wallS: plainWall, jobs: ran, cpu: plainCpu1.children - plainCpu0.children },
      });
      for (const e of failed.slice(0, 3)) log(`  failed run: ${e.message}`);
      log(`N=${n}: ${completedStages} stages in ${fx((t1 - t0) / 1000, 1)} s (${terminated} runs cut by the time box); plain: ${ran} jobs in ${fx(plainWall, 1)} s`);
      if (terminated > 0) {
        // Let the jobs of terminated runs drain before the next level.
        await sleep(10_000);
      }
    }
  } finally {
    await close();
    await workers.shutdown();
    await stack.stop();
    await rm(work, { recursive: true, force: true });
    await rm(workers.scratchDir, { recursive: true, force: true });
  }

  const stagesPer = 3;
  console.log(`\nconcurrency: N pipelines of ${stagesPer} stages (test job, ${STEPS} steps of ${STEP_SECONDS * 1000} ms, one checkpoint each), started at once;`);
  console.log(`one worker process (control + training, ${slots} job slots), Temporal dev server (SQLite), MinIO${quick ? ' (--quick)' : ''}`);
  console.log(`machine: ${loadBefore} at the start, ${machineNote()} at the end\n`);
  console.log(table(['N', 'wall s', 'runs done/cut', 'stages done', 'transitions/s', 'plain jobs/s', 'ratio', 'ready→job p50 s', 'p99 s', 'done→next job p50 s', 'p99 s', 'failed runs'], levels.map((l) => {
    const tps = l.refinery.stages / l.refinery.wallS;
    const pps = l.plain.jobs / l.plain.wallS;
    const lb = l.refinery.censored > 0 ? '≥' : '';
    return [l.n, fx(l.refinery.wallS, 1), `${l.refinery.finished}/${l.refinery.terminated}`, l.refinery.stages, fx(tps), fx(pps), fx(tps / pps), `${lb}${fx(percentile(l.refinery.readyToJob, 50) / 1000)}`, `${lb}${fx(percentile(l.refinery.readyToJob, 99) / 1000)}`, fx(percentile(l.refinery.doneToNext, 50) / 1000), fx(percentile(l.refinery.doneToNext, 99) / 1000), l.refinery.failed];
  })));
  console.log(`(≥: the level was cut by the ${boxS} s time box; stages still waiting for their job count with the time waited so far)`);
  console.log('\nwhere the CPU went during the Refinery runs (CPU seconds per stage) and peak memory');
  const cpuKeys = Object.keys(levels[0]?.refinery.cpu ?? {});
  console.log(table(['N', ...cpuKeys, 'machine busy', 'worker RSS', 'Temporal RSS', 'MinIO RSS'], levels.map((l) => [
    l.n,
    ...cpuKeys.map((k) => fx(l.refinery.cpu[k]! / l.refinery.stages, 3)),
    `${fx(l.refinery.machineBusy * 100, 0)} %`,
    fmtBytes(l.refinery.rss.worker ?? NaN),
    fmtBytes(l.refinery.rss.temporal ?? NaN),
    fmtBytes(l.refinery.rss.minio ?? NaN),
  ])));
  console.log(`\nplain script: ${fx(median(levels.map((l) => l.plain.cpu / l.plain.jobs)), 3)} CPU s per job (the same test job)`);
  const hist = levels.map((l) => l.refinery.historyEvents).filter((x): x is number => x !== undefined);
  if (hist.length) console.log(`Temporal history per run (pipeline + ${stagesPer} stage workflows): ${median(hist)} events`);
  const best = levels.reduce((a, b) => (b.refinery.stages / b.refinery.wallS > a.refinery.stages / a.refinery.wallS ? b : a), levels[0]!);
  console.log(`highest throughput at N=${best.n}: ${fx(best.refinery.stages / best.refinery.wallS)} transitions/s; run start → first job p50 at N=${levels.at(-1)!.n}: ${fx(percentile(levels.at(-1)!.refinery.runStartToFirstJob, 50) / 1000)} s`);
}

await main();
