/**
 * `node --import tsx bench/lib/transfer-op.ts <op> …`: one of the worker's transfers in a process of
 * its own, so the real-size benchmark can read its peak RSS from the kernel (test/helpers/peak-rss.ts)
 * the way it reads s5cmd's. Storage settings from the environment. Prints `{"ms": …}`.
 *   download <artifactPrefix> <dest>          a stage's input, as the worker's input cache fills it (verified)
 *   checkpoint <dir> <artifactPrefix> <step>  a checkpoint commit (fenced by lease epoch 1)
 *   output <dir> <artifactPrefix>             a stage output commit (fenced: first marker wins)
 */
import { commitCheckpoint } from '../../storage/checkpoints.js';
import { commitDirectory, downloadCommitted, readCommitted } from '../../storage/commit.js';
import { layout } from '../../storage/layout.js';
import { ObjectStore } from '../../storage/object-store.js';

const [op, a, b, c] = process.argv.slice(2);
const store = new ObjectStore();
const t0 = performance.now();
if (op === 'download' && a && b) {
  const artifact = await readCommitted(store, a);
  if (!artifact) throw new Error(`${a}: not committed`);
  await downloadCommitted(store, artifact, b);
} else if (op === 'checkpoint' && a && b && c) {
  await commitCheckpoint(store, b, Number(c), a, { epoch: 1 });
} else if (op === 'output' && a && b) {
  await commitDirectory(store, a, layout.output(b), { stage: 'bench' }, { fence: { epoch: 1, marker: 'first' } });
} else {
  throw new Error('usage: transfer-op.ts download <prefix> <dest> | checkpoint <dir> <artifactPrefix> <step> | output <dir> <artifactPrefix>');
}
console.log(JSON.stringify({ ms: performance.now() - t0 }));
