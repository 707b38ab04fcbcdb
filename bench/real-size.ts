/**
 * A model at real size through every transfer a run makes, beside s5cmd doing the same transfer:
 *   push            `refinery model push DIR --name NAME` (the CLI: hash, then upload what is missing)
 *   input download  the stage's input as the worker's input cache fills it (downloadCommitted: every file verified)
 *   checkpoint      a checkpoint commit (commitCheckpoint, fenced by the lease epoch)
 *   output          the stage's output commit (fenced: the first marker wins)
 * each one in a process of its own whose peak RSS is read from the kernel (VmHWM), as is s5cmd's.
 *
 *   npx tsx bench/real-size.ts [--quick] [--size 10G] [--reps 1] [--keep]
 *
 * --quick: 1 GiB. The model: four equal safetensors shards (all but ~20 MiB of the size) plus the
 * usual small files (config, generation config, index, a 10 MiB tokenizer.json, tokenizer config).
 * Each part's objects are removed after it (a 10 GiB model in the bucket once at a time: the disk
 * holds the source, one download and one copy in MinIO). Throughput ratio: s5cmd's time / Refinery's.
 * Targets (issue "real sizes"): upload and download ≥ 0.9× s5cmd; CLI and worker peak RSS ≤ 400 MiB.
 */
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { REPO_ROOT } from '../config/paths.js';
import { layout } from '../storage/layout.js';
import { ObjectStore } from '../storage/object-store.js';
import { treeSha256 } from '../storage/tree-hash.js';
import { runMeasuringPeakRss } from '../test/helpers/peak-rss.js';
import { fmtBytes, fx, log, machineNote, median, parseArgs, parseSize, table, verdict, writeRandomFile } from './lib/common.js';
import { ensureS5cmd, S5CMD_VERSION } from './lib/s5cmd.js';
import { startBenchStack } from './lib/stack.js';

const args = parseArgs({ values: ['size', 'reps'], flags: ['keep'] });
const totalSize = parseSize(args.get('size') ?? (args.quick ? '1G' : '10G'));
const reps = Number(args.get('reps') ?? 1);
const MiB = 1024 ** 2;
const RSS_LIMIT = 400 * MiB;
const TSX = path.join(REPO_ROOT, 'node_modules', 'tsx', 'dist', 'esm', 'index.mjs');
const BIN = path.join(REPO_ROOT, 'bin', 'refinery');

/** A Hugging Face model directory of random weights: four shards and the small files beside them. */
async function makeModel(dir: string, size: number): Promise<number> {
  await mkdir(dir, { recursive: true });
  const small: [string, number][] = [
    ['config.json', 700],
    ['generation_config.json', 200],
    ['model.safetensors.index.json', 24_000],
    ['tokenizer.json', 10 * MiB],
    ['tokenizer_config.json', 50_000],
    ['special_tokens_map.json', 600],
  ];
  const smallBytes = small.reduce((a, [, n]) => a + n, 0);
  const shard = Math.floor((size - smallBytes) / 4);
  for (let i = 1; i <= 4; i++) small.push([`model-0000${i}-of-00004.safetensors`, shard]);
  let bytes = 0;
  for (const [name, n] of small) {
    await writeRandomFile(path.join(dir, name), n);
    bytes += n;
  }
  return bytes;
}

interface Run {
  ms: number;
  peakRss: number;
}

async function main(): Promise<void> {
  const s5cmd = await ensureS5cmd();
  log('starting a private MinIO');
  const stack = await startBenchStack({ temporal: false });
  const minio = stack.minio!;
  const store = new ObjectStore();
  const bucket = store.bucket;
  const work = await mkdtemp(path.join(tmpdir(), 'refinery-bench-size-'));
  const s5env = { ...process.env, AWS_ACCESS_KEY_ID: minio.accessKey, AWS_SECRET_ACCESS_KEY: minio.secretKey, AWS_REGION: 'us-east-1' };
  const loadBefore = machineNote();
  try {
    const model = path.join(work, 'model');
    log(`generating a ${fmtBytes(totalSize)} model (4 shards + small files) in ${model}`);
    const bytes = await makeModel(model, totalSize);
    await execa('sync');

    const measured = async (file: string, argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<Run> => {
      await execa('sync');
      const t0 = performance.now();
      const r = await runMeasuringPeakRss(file, argv, { env });
      const ms = performance.now() - t0;
      if (r.exitCode !== 0) throw new Error(`${path.basename(file)} ${argv.join(' ')} failed (${r.exitCode}): ${r.stderr.slice(-2000)}`);
      return { ms, peakRss: r.peakRssSumBytes };
    };
    const s5 = (...argv: string[]) => measured(s5cmd, ['--endpoint-url', minio.endpoint, ...argv], s5env);
    const op = (...argv: string[]) => measured(process.execPath, ['--import', TSX, path.join(REPO_ROOT, 'bench', 'lib', 'transfer-op.ts'), ...argv]);
    // MinIO frees a deleted object's space in the background (its trash): at 10 GiB a part, the
    // next part must wait for it, or the drive reaches MinIO's free-space threshold.
    // MinIO moves a deleted object into its trash and frees the space minutes later: at 10 GiB a
    // part the drive would reach MinIO's free-space threshold. This private MinIO's trash is emptied
    // after each removal (nothing is in flight then).
    const trash = path.join(stack.stateDir, 'minio', 'data', '.minio.sys', 'tmp', '.trash');
    const removePrefix = async (prefix: string) => {
      await execa(s5cmd, ['--endpoint-url', minio.endpoint, 'rm', `s3://${bucket}/${prefix}/*`], { env: s5env, reject: false });
      for (const entry of await readdir(trash).catch(() => [])) await rm(path.join(trash, entry), { recursive: true, force: true });
    };
    const freshDir = async (name: string) => {
      const d = path.join(work, name);
      await rm(d, { recursive: true, force: true });
      await mkdir(d, { recursive: true });
      return d;
    };

    const parts = ['push', 'input download', 'checkpoint commit', 'output commit'] as const;
    type Part = (typeof parts)[number];
    const results = new Map<Part, { refinery: Run[]; s5cmd: Run[] }>(parts.map((p) => [p, { refinery: [], s5cmd: [] }]));
    const treeSha = await treeSha256(model);
    for (let rep = 1; rep <= reps; rep++) {
      const prefix = `size-${rep}`;
      // push: the CLI; s5cmd copies the same directory up.
      log(`rep ${rep}: push`);
      results.get('push')!.refinery.push(await measured(BIN, ['model', 'push', model, '--name', `bench-${rep}`, '--prefix', prefix, '--json']));
      results.get('push')!.s5cmd.push(await s5('cp', `${model}/*`, `s3://${bucket}/s5-${prefix}/push/`));
      await removePrefix(`s5-${prefix}/push`);

      // input download: what the push stored, into a cache dir (every file verified against the manifest).
      log(`rep ${rep}: input download`);
      const modelKey = layout.model(prefix, treeSha);
      results.get('input download')!.refinery.push(await op('download', modelKey, await freshDir('cache')));
      await freshDir('cache');
      await s5('cp', `${model}/*`, `s3://${bucket}/s5-${prefix}/in/`); // its copy to download (not measured)
      results.get('input download')!.s5cmd.push(await s5('cp', `s3://${bucket}/s5-${prefix}/in/*`, `${await freshDir('cache')}/`));
      await freshDir('cache');
      await removePrefix(`s5-${prefix}/in`);
      await removePrefix(prefix);

      // checkpoint and output commits of a directory this size (a full fine-tune's weights).
      log(`rep ${rep}: checkpoint commit`);
      results.get('checkpoint commit')!.refinery.push(await op('checkpoint', model, `${prefix}/artifacts/sft-bench`, '100'));
      await removePrefix(prefix);
      results.get('checkpoint commit')!.s5cmd.push(await s5('cp', `${model}/*`, `s3://${bucket}/s5-${prefix}/ckpt/`));
      await removePrefix(`s5-${prefix}/ckpt`);
      log(`rep ${rep}: output commit`);
      results.get('output commit')!.refinery.push(await op('output', model, `${prefix}/artifacts/sft-bench`));
      await removePrefix(prefix);
      results.get('output commit')!.s5cmd.push(await s5('cp', `${model}/*`, `s3://${bucket}/s5-${prefix}/out/`));
      await removePrefix(`s5-${prefix}/out`);
    }

    const rows = parts.map((p) => {
      const r = results.get(p)!;
      const [mr, ms] = [median(r.refinery.map((x) => x.ms)), median(r.s5cmd.map((x) => x.ms))];
      const rss = Math.max(...r.refinery.map((x) => x.peakRss));
      return [p, fx(mr / 1000, 1), fx(bytes / MiB / (mr / 1000), 0), fx(ms / 1000, 1), fx(bytes / MiB / (ms / 1000), 0), `${fx(ms / mr)}×`, fmtBytes(rss), fmtBytes(Math.max(...r.s5cmd.map((x) => x.peakRss)))];
    });
    console.log(`\nreal size: ${fmtBytes(bytes)} model (4 shards of ${fmtBytes(Math.floor(bytes / 4))} + 6 small files), ${reps} rep(s), medians`);
    console.log(`machine: ${loadBefore} at the start, ${machineNote()} at the end; s5cmd ${S5CMD_VERSION} at its defaults; MinIO on the same machine`);
    console.log(table(['part', 'refinery s', 'MiB/s', 's5cmd s', 'MiB/s', 'throughput vs s5cmd', 'refinery peak RSS', 's5cmd peak RSS'], rows));
    const ratio = (p: Part) => median(results.get(p)!.s5cmd.map((x) => x.ms)) / median(results.get(p)!.refinery.map((x) => x.ms));
    const peak = Math.max(...parts.flatMap((p) => results.get(p)!.refinery.map((x) => x.peakRss)));
    console.log('\ntargets');
    console.log(
      table(
        ['target', 'measured', ''],
        [
          ['upload (push, checkpoint, output) ≥ 0.9× s5cmd (worst)', `${fx(Math.min(ratio('push'), ratio('checkpoint commit'), ratio('output commit')))}×`, verdict(Math.min(ratio('push'), ratio('checkpoint commit'), ratio('output commit')) >= 0.9)],
          ['input download (verified) ≥ 0.9× s5cmd', `${fx(ratio('input download'))}×`, verdict(ratio('input download') >= 0.9)],
          ['CLI and worker peak RSS ≤ 400 MiB', fmtBytes(peak), verdict(peak <= RSS_LIMIT)],
        ],
      ),
    );
  } finally {
    if (!args.has('keep')) await rm(work, { recursive: true, force: true });
    await stack.stop();
  }
}

await main();
