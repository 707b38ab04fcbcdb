/** minio-outage: kill -9 MinIO right after a checkpoint upload starts; down for --minio-outage seconds. */
import { layout } from '../../storage/layout.js';
import { sleep, waitFor } from '../../infra/harness/wait.js';
import { jobProgress, objectOnDisk, objectsOnDisk } from '../harness.js';
import type { FaultKindModule } from './kind.js';

export const minioOutage: FaultKindModule = {
  setup: ({ ctx }) => ({ params: { checkpoint_bytes: (ctx.opts.short ? 16 : 24) << 20 } }),
  async inject({ ctx, worker, runId, prefix, target, aimedAt, fault }) {
    const { rng, opts } = ctx;
    // Strike right after the worker got a checkpoint event: its upload is (most likely) under way.
    const p = await waitFor(async () => {
      const q = await jobProgress(worker.scratch, runId, target);
      return q && q.checkpoints.some((s) => s >= aimedAt) ? q : undefined;
    }, 90_000, 10);
    if (!p) throw new Error(`the job never checkpointed at or after step ${aimedAt}`);
    await sleep(rng.int(0, 60));
    await ctx.stack.killMinio();
    const now = (await jobProgress(worker.scratch, runId, target)) ?? p;
    const ckpt = p.checkpoints.filter((s) => s >= aimedAt)[0]!;
    const ckptPrefix = layout.checkpoint(`${prefix}/artifacts/${target}-${p.cacheKey}`, ckpt);
    const marker = objectOnDisk(ctx.stack.minioDataDir(), ctx.stack.info.bucket, `${ckptPrefix}/_COMMITTED`);
    const objects = await objectsOnDisk(ctx.stack.minioDataDir(), ctx.stack.info.bucket, ckptPrefix);
    Object.assign(fault, { stepAtFault: now.step, attemptAtFault: now.attempt });
    fault.notes.push(marker ? `checkpoint ${ckpt} was already committed when MinIO died` : `checkpoint ${ckpt} cut mid-upload (${objects} object(s) on disk, no commit marker)`);
    await sleep(opts.minioOutageMs);
    await ctx.stack.restartMinio().catch((err: unknown) => {
      ctx.fatal = `could not restart MinIO: ${(err as Error).message}`;
      throw err;
    });
    fault.detail = `kill -9 MinIO at step ${now.step} during the upload of checkpoint ${ckpt}; down ${opts.minioOutageMs / 1000} s`;
  },
};
