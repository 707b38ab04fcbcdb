/**
 * Local stack manager: a Temporal dev server (SQLite-backed) and a MinIO server, run as detached
 * background processes under the state folder, with the same functions reused by the test setup.
 *
 *   tsx infra/stack.ts start  [--json] [--timeout <seconds>]   # idempotent
 *   tsx infra/stack.ts stop   [--json] [--grace <seconds>]     # data stays
 *   tsx infra/stack.ts status [--json]                          # exit 0 all up, 3 otherwise
 *
 * Why this file stays, as a facade only: it is the command scripts and tests run
 * (`tsx infra/stack.ts ...`), and the one import path of the stack API for test/, faults/ and bench/,
 * so none of them needs to know which of infra/stack/ holds what:
 *
 *   infra/stack/processes.ts  detached processes: log and pid files, ports, liveness, launch + probe
 *   infra/stack/temporal.ts   the Temporal dev server and its search attributes
 *   infra/stack/minio.ts      the MinIO server and its bucket
 *   infra/stack/stack.ts      both, from the environment: status, idempotent start, stop
 *   infra/stack/cli.ts        the command line (node:util parseArgs)
 *
 * Configuration comes from the environment (config/stack.ts lists it with the defaults); the
 * toolchain (binary paths) from config/toolchain.ts. Layout under the state folder
 * (REFINERY_STATE_DIR, default <repo>/.refinery):
 *
 *   toolchain.json          binary paths, written by `bash infra/bootstrap.sh`
 *   temporal/temporal.db    Temporal's SQLite store (history survives stop/start)
 *   minio/data/             MinIO's objects
 *   logs/{temporal,minio}.log
 *   run/{temporal,minio}.pid
 *
 * Expected failures (taken port, missing binary, a service that does not come up) throw a
 * `StackError` whose message is one line naming the fix; the CLI prints that line and exits 1.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { runCli } from './stack/cli.js';

export { StackError } from '../config/errors.js';
export { REFINERY_SEARCH_ATTRIBUTES, type SearchAttributeType } from '../config/search-attributes.js';
export { loadStackConfig, type StackConfig } from '../config/stack.js';
export { defaultToolchainPath, readToolchain, type Toolchain } from '../config/toolchain.js';
export { main } from './stack/cli.js';
export { ensureBucket, minioClient, probeMinio, startMinio, type MinioHandle, type S3Credentials, type StartMinioOptions } from './stack/minio.js';
export {
  getFreePort,
  isPortFree,
  isProcessAlive,
  servicePaths,
  type Probe,
  type ServiceHandle,
  type ServiceName,
  type ServicePaths,
} from './stack/processes.js';
export {
  stackStatus,
  startStack,
  stopStack,
  type ServiceStatus,
  type StackStatus,
  type StartStackOptions,
  type StopResult,
} from './stack/stack.js';
export { ensureSearchAttributes, probeTemporal, startTemporal, type StartTemporalOptions, type TemporalHandle } from './stack/temporal.js';

function isEntryPoint(): boolean {
  const script = process.argv[1];
  if (!script) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) runCli();
