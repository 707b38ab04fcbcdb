import { defineConfig } from 'vitest/config';

// Two projects: pure unit tests, and integration tests against one real Temporal dev server and
// one MinIO started once per run (test/global-setup.ts). Forks, not threads: Temporal's native
// bridge does not survive worker threads (sdk-typescript #876).
export default defineConfig({
  test: {
    pool: 'forks',
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'], testTimeout: 60_000 } },
      {
        extends: true,
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          globalSetup: ['test/global-setup.ts'],
          testTimeout: 600_000,
          hookTimeout: 300_000,
          fileParallelism: false,
        },
      },
    ],
  },
});
