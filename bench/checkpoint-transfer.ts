/**
 * Checkpoint transfer: Refinery's storage layer (commitDirectory / downloadCommitted, sha256
 * manifest included) against s5cmd v2.3.0 at its defaults, between local disk and MinIO, on a
 * checkpoint-like directory of random data; s5cmd followed by a sha256 check of every file (the
 * verification Refinery always does) as a second reference; a profile of where Refinery's time
 * goes; and how much a concurrent checkpoint upload slows a training job's steps.
 *
 *   npx tsx bench/checkpoint-transfer.ts [--quick] [--size 2G] [--reps 2] [--skip-interference | --only-interference]
 *                                        [--job-threads N] [--keep]
 *
 * --quick: 256 MiB. The profile uses a directory of the same shape of at most 512 MiB, the
 * interference test one of 64 MiB committed back to back in fixed windows.
 *
 * Targets: Refinery ≥ 0.9× s5cmd throughput both ways; job step time while a checkpoint uploads
 * ≤ 25 % slower for a job on every core, ≤ 5 % for one that leaves a core free (--job-threads 1).
 */
import { mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { execa } from 'execa';
import { validateSpec } from '../client/commands/validate.js';
import { commitDirectory, downloadCommitted, readCommitted } from '../storage/commit.js';
import { ObjectStore, sha256File } from '../storage/object-store.js';
import { REPO_ROOT } from '../config/paths.js';
import { jobsPython } from '../config/worker.js';
import { fmtBytes, fx, log, machineNote, median, parseArgs, parseSize, sleep, table, verdict, writeRandomFile } from './lib/common.js';
import { s5cmdDownloadVerified } from './lib/s5cmd-verified.js';
import { jobConfigFor, JOBS_CWD, pythonJobArgv, runPlainJob, testJobArgv } from './lib/jobs.js';
import { procCpu, timedCommand } from './lib/proc.js';
import { ensureS5cmd, S5CMD_VERSION } from './lib/s5cmd.js';
import { startBenchStack } from './lib/stack.js';

const args = parseArgs({ values: ['size', 'reps', 'job-threads'], flags: ['keep', 'only-interference', 'skip-interference'] });
const quick = args.quick;
const totalSize = parseSize(args.get('size') ?? (quick ? '256M' : '2G'));
const reps = Number(args.get('reps') ?? 2);
/** The profile uses a directory of the same shape, at most this big. */
const SMALL = 512 * 1024 ** 2;

interface Sample {
  ms: number;
  /** client CPU seconds */
  cpu: number;
  /** MinIO server CPU seconds */
  serverCpu: number;
}

/** The checkpoint-like layout: one large file (70 %), four mid-size (25 %), 256 small (5 %). */
async function makeCheckpoint(dir: string, size: number): Promise<{ files: number; bytes: number }> {
  await mkdir(path.join(dir, 'extra'), { recursive: true });
  const plan: [string, number][] = [['model.safetensors', Math.round(size * 0.7)]];
  for (let i = 0; i < 4; i++) plan.push([`optimizer-shard-${i}.pt`, Math.round((size * 0.25) / 4)]);
  const small = 256;
  const smallBytes = size * 0.05;
  // Sizes from ~1 KiB up to 2× the average, like configs, rng states, scheduler states, tokenizer files.
  for (let i = 0; i < small; i++) plan.push([`extra/state-${String(i).padStart(3, '0')}.bin`, Math.max(1024, Math.round(((2 * smallBytes) / small) * ((i + 1) / small)))]);
  plan.push(['config.json', 700], ['trainer_state.json', 4000]);
  let bytes = 0;
  for (const [name, n] of plan) {
    await writeRandomFile(path.join(dir, name), n);
    bytes += n;
  }
  return { files: plan.length, bytes };
}

async function main(): Promise<void> {
  const s5cmd = await ensureS5cmd();
  log('starting a private MinIO');
  const stack = await startBenchStack({ temporal: false });
  const minio = stack.minio!;
  const store = new ObjectStore();
  const work = await mkdtemp(path.join(tmpdir(), 'refinery-bench-ckpt-'));
  const s5env = { AWS_ACCESS_KEY_ID: minio.accessKey, AWS_SECRET_ACCESS_KEY: minio.secretKey, AWS_REGION: 'us-east-1' };
  const s5 = (...argv: string[]) => timedCommand([s5cmd, '--endpoint-url', minio.endpoint, ...argv], s5env);
  const bucket = store.bucket;
  const loadBefore = machineNote();
  try {
    const src = path.join(work, 'src');
    log(`generating a ${fmtBytes(totalSize)} checkpoint-like directory in ${src}`);
    const ckpt = await makeCheckpoint(src, totalSize);
    let small = src;
    let smallBytes = ckpt.bytes;
    if (totalSize > SMALL) {
      small = path.join(work, 'small');
      log(`generating a ${fmtBytes(SMALL)} one for the profile in ${small}`);
      smallBytes = (await makeCheckpoint(small, SMALL)).bytes;
    }
    await execa('sync');

    /** Wall time, this process's CPU and MinIO's CPU around fn (outside work: sync before). */
    const measure = async (fn: () => Promise<number | void>): Promise<Sample> => {
      await execa('sync');
      const server0 = procCpu(minio.pid)?.self ?? NaN;
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      const childCpu = await fn();
      const ms = performance.now() - t0;
      const cpu1 = process.cpuUsage(cpu0);
      const server1 = procCpu(minio.pid)?.self ?? NaN;
      return { ms, cpu: typeof childCpu === 'number' ? childCpu : (cpu1.user + cpu1.system) / 1e6, serverCpu: server1 - server0 };
    };
    const removePrefix = async (prefix: string) => {
      await s5('rm', `s3://${bucket}/${prefix}/*`).catch(() => undefined);
    };
    const freshDir = async (name: string) => {
      const d = path.join(work, name);
      await rm(d, { recursive: true, force: true });
      await mkdir(d, { recursive: true });
      return d;
    };
    const dirBytes = async (d: string): Promise<number> => {
      let n = 0;
      for (const e of await readdir(d, { withFileTypes: true, recursive: true })) if (e.isFile()) n += (await stat(path.join(e.parentPath, e.name))).size;
      return n;
    };

    type Tool = 'refinery' | 's5cmd' | 's5cmd-verified';
    const tools: Tool[] = ['refinery', 's5cmd'];
    const downTools: Tool[] = ['refinery', 's5cmd', 's5cmd-verified'];
    const up: Record<Tool, Sample[]> = { refinery: [], s5cmd: [], 's5cmd-verified': [] };
    const down: Record<Tool, Sample[]> = { refinery: [], s5cmd: [], 's5cmd-verified': [] };

    if (!args.has('only-interference')) await transfers();
    async function transfers(): Promise<void> {
      // A warm-up round trip (connections, MinIO's first writes), not counted.
      await commitDirectory(store, src, 'warmup');
      await removePrefix('warmup');

      for (let rep = 0; rep < reps; rep++) {
        // Interleaved, rotating which tool goes first.
        const order = tools.map((_, i) => tools[(i + rep) % tools.length]!);
        log(`rep ${rep + 1}/${reps}: uploads (${order.join(', ')})`);
        const committed = `ref-${rep}`;
        for (const tool of order) {
          if (tool === 'refinery') up.refinery.push(await measure(async () => void (await commitDirectory(store, src, committed))));
          if (tool === 's5cmd') up.s5cmd.push(await measure(async () => (await s5('cp', `${src}/*`, `s3://${bucket}/s5-${rep}/`)).cpu));
        }
        await removePrefix(`s5-${rep}`);
        // Every tool downloads the same objects: the ones Refinery committed this rep.
        const artifact = (await readCommitted(store, committed))!;
        const downOrder = downTools.map((_, i) => downTools[(i + rep) % downTools.length]!);
        log(`rep ${rep + 1}/${reps}: downloads (${downOrder.join(', ')})`);
        for (const tool of downOrder) {
          const dest = await freshDir(`down-${tool}`);
          if (tool === 'refinery') down.refinery.push(await measure(async () => void (await downloadCommitted(store, (await readCommitted(store, committed))!, dest))));
          if (tool === 's5cmd') down.s5cmd.push(await measure(async () => (await s5('cp', `s3://${bucket}/${artifact.filesPrefix}/*`, `${dest}/`)).cpu));
          if (tool === 's5cmd-verified') {
            // s5cmd's own CPU is not counted here (it is a child process): client CPU is Node's hashing only.
            down['s5cmd-verified'].push(await measure(async () => void (await s5cmdDownloadVerified(s5cmd, s5env, store, (await readCommitted(store, committed))!, dest))));
          }
          const got = await dirBytes(dest);
          if (got !== ckpt.bytes) throw new Error(`${tool} downloaded ${got} bytes, expected ${ckpt.bytes}`);
          await rm(dest, { recursive: true, force: true });
        }
        await removePrefix(committed);
      }

      // ---------------------------------------------------------------------------------------
      // Profile: the pieces of Refinery's upload and download, one at a time.
      log('profile: hashing alone, minio-js transfers without the manifest hash');
      const profile: [string, Sample][] = [];
      const hashAll = async (concurrency: number) => {
        const names = (await readdir(small, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
        let i = 0;
        await Promise.all(Array.from({ length: concurrency }, async () => {
          while (i < names.length) await sha256File(names[i++]!);
        }));
        return names;
      };
      profile.push(['sha256 of every file (read + hash, 4 at a time)', await measure(async () => void (await hashAll(4)))]);
      const names = await hashAll(1);
      const putAll = async (client: ObjectStore['client'], prefix: string, concurrency: number) => {
        let i = 0;
        await Promise.all(Array.from({ length: concurrency }, async () => {
          while (i < names.length) {
            const f = names[i++]!;
            await client.fPutObject(bucket, `${prefix}/${path.relative(small, f)}`, f);
          }
        }));
      };
      profile.push(['minio-js fPutObject only (no manifest hash), 4 at a time', await measure(() => putAll(store.client, 'p-put', 4))]);
      await removePrefix('p-put');
      const { Client } = await import('minio');
      const unsigned = new Client({ endPoint: store.config.endPoint, port: store.config.port, useSSL: false, accessKey: store.config.accessKey, secretKey: store.config.secretKey, region: store.config.region });
      unsigned.enableSHA256 = false;
      profile.push(['  same, UNSIGNED-PAYLOAD (no SigV4 payload sha256)', await measure(() => putAll(unsigned, 'p-unsigned', 4))]);
      const committed = await commitDirectory(store, small, 'p-ref');
      const dest = await freshDir('p-get');
      profile.push(['minio-js getObject → file only (no hash), 4 at a time', await measure(async () => {
        let i = 0;
        const files = committed.manifest.files;
        await Promise.all(Array.from({ length: 4 }, async () => {
          while (i < files.length) {
            const f = files[i++]!;
            const target = path.join(dest, f.path);
            await mkdir(path.dirname(target), { recursive: true });
            const { pipeline } = await import('node:stream/promises');
            const { createWriteStream } = await import('node:fs');
            await pipeline(await store.client.getObject(bucket, `p-ref/files/${f.path}`), createWriteStream(target));
          }
        }));
      })]);
      await rm(dest, { recursive: true, force: true });
      const large = committed.manifest.files.find((f) => f.path === 'model.safetensors')!;
      const destLarge = await freshDir('p-large');
      profile.push([`the large file alone (${fmtBytes(large.size)}), downloadCommitted`, await measure(async () => void (await downloadCommitted(store, { ...committed, manifest: { ...committed.manifest, files: [large] } }, destLarge)))]);
      await rm(destLarge, { recursive: true, force: true });
      await mkdir(destLarge);
      profile.push([`the large file alone, s5cmd`, await measure(async () => (await s5('cp', `s3://${bucket}/p-ref/files/model.safetensors`, `${destLarge}/`)).cpu)]);
      await rm(destLarge, { recursive: true, force: true });
      for (const p of ['p-unsigned', 'p-ref']) await removePrefix(p);

      // ---------------------------------------------------------------------------------------
      const mibps = (bytes: number, ms: number) => bytes / 1024 ** 2 / (ms / 1000);
      const row = (what: string, samples: Sample[], base: Sample[]) => {
        const ms = median(samples.map((s) => s.ms));
        const baseMs = median(base.map((s) => s.ms));
        return [what, fx(ms / 1000), fx(mibps(ckpt.bytes, ms), 0), fx(baseMs / ms), fx(median(samples.map((s) => s.cpu)) / (ckpt.bytes / 1024 ** 3)), fx(median(samples.map((s) => s.serverCpu)) / (ckpt.bytes / 1024 ** 3))];
      };
      const upRatio = median(up.s5cmd.map((s) => s.ms)) / median(up.refinery.map((s) => s.ms));
      const downRatio = median(down.s5cmd.map((s) => s.ms)) / median(down.refinery.map((s) => s.ms));
      const s5vDown = median(down.s5cmd.map((s) => s.ms)) / median(down['s5cmd-verified'].map((s) => s.ms));

      console.log(`\ncheckpoint transfer: ${fmtBytes(ckpt.bytes)} in ${ckpt.files} files (1 × 70 %, 4 × 6.25 %, ${ckpt.files - 5} small), ${reps} interleaved reps, medians${quick ? ' (--quick)' : ''}`);
      console.log(`machine: ${loadBefore} at the start, ${machineNote()} now`);
      console.log(`s5cmd ${S5CMD_VERSION} defaults (256 workers, 5 parts × 50 MiB per file); Refinery: storage/commit.ts (8 files in flight, 32 MiB parts, ≤ 6 parts in flight)\n`);
      const header = ['', 'time s', 'MiB/s', 'throughput vs s5cmd', 'client CPU s/GiB', 'MinIO CPU s/GiB'];
      console.log(table(header, [
        row('upload   refinery commitDirectory', up.refinery, up.s5cmd),
        row('upload   s5cmd cp', up.s5cmd, up.s5cmd),
        row('download refinery downloadCommitted', down.refinery, down.s5cmd),
        row('download s5cmd cp', down.s5cmd, down.s5cmd),
        row('download s5cmd + sha256 check of every file', down['s5cmd-verified'], down.s5cmd),
      ]));
      console.log(`\nprofile on a ${fmtBytes(smallBytes)} directory of the same shape (one run each; throughput over the whole directory unless said otherwise)`);
      console.log(table(['', 'time s', 'MiB/s', 'client CPU s'], profile.map(([what, s]) => {
        const bytes = what.startsWith('the large file') ? large.size : smallBytes;
        return [what, fx(s.ms / 1000), fx(mibps(bytes, s.ms), 0), fx(s.cpu)];
      })));
      console.log('\ntargets');
      console.log(table(['target', 'measured', ''], [
        ['upload ≥ 0.9× s5cmd', `${fx(upRatio)}×`, verdict(upRatio >= 0.9)],
        ['download ≥ 0.9× s5cmd', `${fx(downRatio)}×`, verdict(downRatio >= 0.9)],
        ['(reference: s5cmd + the same sha256 check, download)', `${fx(s5vDown)}×`, verdict(s5vDown >= 0.9)],
        ['download vs s5cmd + the same check', `${fx(median(down['s5cmd-verified'].map((s) => s.ms)) / median(down.refinery.map((s) => s.ms)))}×`, ''],
      ]));

    }
    if (!args.has('skip-interference')) {
      // The unit of upload in the interference test: a 64 MiB directory of the same shape.
      const unit = path.join(work, 'unit');
      const unitBytes = (await makeCheckpoint(unit, 64 * 1024 ** 2)).bytes;
      await interference(store, unit, unitBytes);
    }
  } finally {
    if (!args.has('keep')) await rm(work, { recursive: true, force: true });
    await stack.stop();
  }
}

// -------------------------------------------------------------------------------------------
// Step time of a job while checkpoints upload. One job run; uploads are switched on and off while
// it trains, in fixed windows (on: commits of a checkpoint-shaped directory back to back, then the
// delete; off: nothing), many times, so that both conditions are interleaved on the same process
// and slow drifts of the machine's other load cancel out. A step counts for a condition only if
// it lies wholly inside an "on" window or wholly outside all of them.

// refinery: as the training activity commits (activities/checkpoint-uploader.ts): the worker
// process, its large files through the native mover at low CPU and I/O priority; normal: the same
// at normal priority (before); niced: the whole commit in a process of its own at nice 19.
type UploadKind = 'refinery' | 'normal' | 'niced';

interface Window {
  kind: UploadKind;
  from: number;
  to: number;
  uploadMs: number;
  bytes: number;
}

const TSX_LOADER = path.join(REPO_ROOT, 'node_modules', 'tsx', 'dist', 'esm', 'index.mjs');

async function interference(store: ObjectStore, unitDir: string, unitBytes: number): Promise<void> {
  const { plan } = await validateSpec(path.join(REPO_ROOT, 'demo', 'pipeline.yaml'));
  const sft = plan.stages.find((s) => s.kind === 'sft')!;
  const work = await mkdtemp(path.join(tmpdir(), 'refinery-bench-interf-'));
  const windowMs = quick ? 4000 : 6000;
  const kinds: UploadKind[] = quick ? ['refinery', 'normal'] : ['refinery', 'normal', 'niced'];
  // --job-threads N: OMP/MKL threads of the jobs (torch uses every core by default)
  const jobEnv: Record<string, string> = args.get('job-threads') ? { OMP_NUM_THREADS: args.get('job-threads')!, MKL_NUM_THREADS: args.get('job-threads')! } : {};
  const results: (string | number)[][] = [];
  const worst: Record<UploadKind, number> = { refinery: -Infinity, normal: -Infinity, niced: -Infinity };
  const s5 = await ensureS5cmd();
  const s5env = { ...process.env, AWS_ACCESS_KEY_ID: store.config.accessKey, AWS_SECRET_ACCESS_KEY: store.config.secretKey, AWS_REGION: 'us-east-1' };
  try {
    const tiny = path.join(work, 'tiny-llama');
    log('building the tiny model (python -m refinery_jobs.make_tiny_model)');
    const data = ['sft.jsonl', 'preference.jsonl', 'prompts.jsonl'].map((f) => path.join(REPO_ROOT, 'demo', 'data', f));
    await execa(jobsPython(), ['-m', 'refinery_jobs.make_tiny_model', '--out', tiny, '--data', ...data], { cwd: JOBS_CWD });
    // Both run until stopped (max_steps far away), no checkpoints of their own.
    const jobs = [
      {
        name: 'sft on the tiny model (CPU, torch)',
        argv: pythonJobArgv('sft'),
        cycles: quick ? 4 : 3,
        config: jobConfigFor({ ...sft, hyper: { ...sft.hyper, max_steps: 100000, save_steps: 100000 } }, { output: path.join(work, 's/out'), checkpoints: path.join(work, 's/ck') }, { model: tiny }, { train: sft.dataset!.path, eval: null }),
      },
      ...(quick
        ? []
        : [{
            name: 'test job (sleeps 50 ms a step)',
            argv: testJobArgv(),
            cycles: 2,
            config: jobConfigFor({ ...sft, hyper: { ...sft.hyper, max_steps: 100000, save_steps: 100000 }, jobParams: { step_seconds: 0.05 } }, { output: path.join(work, 't/out'), checkpoints: path.join(work, 't/ck') }, {}, { train: null, eval: null }),
          }]),
    ];
    for (const job of jobs) {
      log(`interference: ${job.name}; ${job.cycles} × (${kinds.join(', ')}) upload windows of ${windowMs / 1000} s, each followed by as long without`);
      const windows: Window[] = [];
      let started!: () => void;
      const firstStep = new Promise<void>((resolve) => (started = resolve));
      const stop = new AbortController();
      let finished = false;
      const running = runPlainJob(job.argv, job.config, path.join(work, `job-${jobs.indexOf(job)}`), (e) => e.event.event === 'progress' && started(), jobEnv, stop.signal).finally(() => {
        finished = true;
        started();
      });
      // The low-priority uploader: one process for the whole run, paused outside its windows.
      let niced: ReturnType<typeof execa> | undefined;
      let nicedBytes = 0;
      if (kinds.includes('niced')) {
        niced = execa('nice', ['-n', '19', process.execPath, '--import', TSX_LOADER, path.join(REPO_ROOT, 'bench', 'lib', 'commit-cli.ts'), unitDir, `interference-niced-${jobs.indexOf(job)}`, 'loop'], { reject: false, buffer: false, stdout: 'pipe' });
        const lines = createInterface({ input: niced.stdout! });
        await new Promise<void>((resolve) => lines.once('line', () => resolve()));
        niced.kill('SIGSTOP');
        lines.on('line', (l) => (nicedBytes += Number(/^committed (\d+)/.exec(l)?.[1] ?? 0)));
      }
      // Whatever ends the loader (an upload that throws included) stops the job: `running` must end.
      const loader = (async () => {
        await firstStep;
        await sleep(2000); // past the first steps
        let n = 0;
        for (let cycle = 0; cycle < job.cycles && !finished; cycle++) {
          for (const kind of kinds) {
            if (finished) break;
            const prefixes: string[] = [];
            const from = performance.now();
            let bytes = 0;
            if (kind === 'niced') {
              const before = nicedBytes;
              niced!.kill('SIGCONT');
              await sleep(windowMs);
              niced!.kill('SIGSTOP');
              bytes = nicedBytes - before;
            } else {
              while (performance.now() - from < windowMs) {
                const prefix = `interference-${n++}`;
                prefixes.push(prefix);
                await commitDirectory(store, unitDir, prefix, undefined, kind === 'refinery' ? { lowPriority: true } : {});
                bytes += unitBytes;
              }
            }
            const uploadMs = performance.now() - from;
            // Old checkpoints are pruned while the job trains too: the delete is part of the window.
            for (const prefix of prefixes) await execa(s5, ['--endpoint-url', process.env.REFINERY_S3_ENDPOINT!, 'rm', `s3://${store.bucket}/${prefix}/*`], { env: s5env, reject: false });
            const to = performance.now();
            windows.push({ kind, from, to, uploadMs, bytes });
            await sleep(windowMs);
          }
        }
        stop.abort();
        if (niced) {
          niced.kill('SIGCONT');
          niced.kill('SIGKILL');
          await niced;
          await execa(s5, ['--endpoint-url', process.env.REFINERY_S3_ENDPOINT!, 'rm', `s3://${store.bucket}/interference-niced-${jobs.indexOf(job)}/*`], { env: s5env, reject: false });
        }
      })().finally(() => stop.abort());
      const [run] = await Promise.all([running, loader]);
      const progress = run.events.filter((e) => e.event.event === 'progress');
      const steps: Record<UploadKind | 'alone', number[]> = { alone: [], refinery: [], normal: [], niced: [] };
      const firstWindow = windows[0]?.from ?? Infinity;
      for (let i = 1; i < progress.length; i++) {
        const a = progress[i - 1]!.t;
        const b = progress[i]!.t;
        if (b < firstWindow - 1000) continue; // warm-up
        const inside = windows.find((w) => a >= w.from && b <= w.to);
        const overlaps = windows.some((w) => b > w.from && a < w.to);
        if (inside) steps[inside.kind].push(b - a);
        else if (!overlaps) steps.alone.push(b - a);
      }
      const alone = median(steps.alone);
      // Paired estimate, robust to the machine's other load drifting: each window's median step
      // against the median step of the pauses just before and just after it.
      const stepsIn = (lo: number, hi: number) => progress.slice(1).map((e, j) => [progress[j]!.t, e.t] as const).filter(([a, b]) => a >= lo && b <= hi).map(([a, b]) => b - a);
      const paired: Record<UploadKind, number[]> = { refinery: [], normal: [], niced: [] };
      for (const [i, w] of windows.entries()) {
        const before = stepsIn(windows[i - 1]?.to ?? w.from - windowMs, w.from);
        const after = stepsIn(w.to, windows[i + 1]?.from ?? Infinity);
        const inside = median(stepsIn(w.from, w.to));
        const around = median([...before, ...after]);
        if (Number.isFinite(inside / around)) paired[w.kind].push(inside / around);
        log(`  window ${i + 1} ${w.kind.padEnd(9)} ${fx((w.to - w.from) / 1000, 1)} s: step ${fx(inside, 0)} ms, pauses around it ${fx(around, 0)} ms`);
      }
      for (const kind of kinds) {
        const w = windows.filter((x) => x.kind === kind);
        if (w.length === 0) continue;
        const upMiBps = w.reduce((s, x) => s + x.bytes, 0) / 1024 ** 2 / (w.reduce((s, x) => s + x.uploadMs, 0) / 1000);
        const slow = median(paired[kind]) - 1;
        if (Number.isFinite(slow)) worst[kind] = Math.max(worst[kind], slow);
        const label = { refinery: 'commitDirectory as the worker commits a checkpoint (mover at nice 10, ionice idle-ish)', normal: 'commitDirectory at normal priority', niced: 'commitDirectory, own process at nice 19 (paused outside its windows)' }[kind];
        results.push([job.name, `${label} (${fx(upMiBps, 0)} MiB/s)`, `${steps.alone.length}/${steps[kind].length}`, fx(alone), fx(median(steps[kind])), `${slow >= 0 ? '+' : ''}${fx(slow * 100, 1)} %`, paired[kind].map((x) => fx(x, 2)).join(' ')]);
      }
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  console.log(`\nstep time while checkpoints upload (${fmtBytes(unitBytes)} directory committed back to back in ${windowMs / 1000} s windows, alternating with ${windowMs / 1000} s without; one job run; medians${jobEnv.OMP_NUM_THREADS ? `; jobs with OMP_NUM_THREADS=${jobEnv.OMP_NUM_THREADS}` : ''})`);
  console.log(table(['job', 'concurrent upload', 'steps alone/with', 'step ms alone', 'step ms with', 'slower (paired)', 'per window: step in / pauses around'], results));
  console.log('"slower (paired)": median over windows of (median step inside the window / median step in the pauses just before and after it) − 1');
  // The issue's targets: ≤ 25 % when the job uses every core (2 here), ≤ 5 % when it leaves one free.
  const jobThreads = Number(jobEnv.OMP_NUM_THREADS ?? cpus().length);
  const target = jobThreads < cpus().length ? 0.05 : 0.25;
  const pct = (x: number) => `${x >= 0 ? '+' : ''}${fx(x * 100, 1)} %`;
  console.log(table(['target', 'measured', ''], [
    [`step time ≤ ${fx(target * 100, 0)} % slower during a Refinery checkpoint upload (worst job)`, pct(worst.refinery), verdict(worst.refinery <= target)],
    ['(before: the same commit at normal priority)', pct(worst.normal), ''],
    ...(kinds.includes('niced') ? [['(the whole commit in its own process at nice 19)', pct(worst.niced), verdict(worst.niced <= target)]] : []),
  ]));
}

await main();
