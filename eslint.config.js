// Lint: typescript-eslint's recommended rules, no floating promises anywhere, and no Node
// built-ins in workflow code (it runs in Temporal's deterministic sandbox).
import tseslint from 'typescript-eslint';

export default tseslint.config(
  // test/fixtures holds recorded histories and a recorded workflow bundle: generated, not ours to lint.
  { ignores: ['node_modules/**', '.refinery/**', 'jobs/**', 'demo/**', 'docs/**', 'test/fixtures/**'] },
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['workflows/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', {
        patterns: [
          { group: ['node:*', 'fs', 'path', 'child_process', 'os', 'crypto'], message: 'Workflow code must not use Node built-ins.' },
          { group: ['../activities/*', '../storage/*', '../worker/*'], message: 'Workflows import activities as types only.', allowTypeImports: true },
        ],
      }],
    },
  },
  { files: ['*.js'], ...tseslint.configs.disableTypeChecked },
);
