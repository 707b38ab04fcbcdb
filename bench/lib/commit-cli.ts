/**
 * `node --import tsx bench/lib/commit-cli.ts <dir> <prefix>`: storage/commit.ts's commitDirectory in
 * a process of its own, so that the checkpoint-transfer benchmark can run it under `nice` (the
 * "upload at low CPU priority" variant of its interference test). Storage settings from the
 * environment, as everywhere.
 */
import { commitDirectory } from '../../storage/commit.js';
import { ObjectStore } from '../../storage/object-store.js';

const [dir, prefix] = process.argv.slice(2);
if (!dir || !prefix) throw new Error('usage: commit-cli.ts <dir> <prefix>');
await commitDirectory(new ObjectStore(), dir, prefix);
