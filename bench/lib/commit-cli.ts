/**
 * `node --import tsx bench/lib/commit-cli.ts <dir> <prefix> [loop]`: storage/commit.ts's
 * commitDirectory in a process of its own, so that the checkpoint-transfer benchmark can run it
 * at low CPU priority (`nice -n 19`) and pause/resume it (SIGSTOP/SIGCONT). With `loop` it
 * commits the directory again and again to <prefix>/<n>, deleting all but the last two like
 * checkpoint pruning, and prints "committed <bytes>" after each. Storage settings from the environment.
 */
import { commitDirectory } from '../../storage/commit.js';
import { ObjectStore } from '../../storage/object-store.js';

const [dir, prefix, mode] = process.argv.slice(2);
if (!dir || !prefix) throw new Error('usage: commit-cli.ts <dir> <prefix> [loop]');
const store = new ObjectStore();
console.log('ready');
for (let n = 0; ; n++) {
  const c = await commitDirectory(store, dir, `${prefix}/${n}`);
  if (mode !== 'loop') break;
  if (n >= 2) await store.remove((await store.list(`${prefix}/${n - 2}/`, true)).map((o) => o.key));
  console.log(`committed ${c.manifest.files.reduce((s, f) => s + f.size, 0)}`);
}
