// Which llama.cpp tools a gguf job is given (config/worker.ts llamaCppToolEnv): the worker's own
// REFINERY_LLAMA_CPP_CONVERT / REFINERY_LLAMA_QUANTIZE first, else what infra/bootstrap.sh recorded
// in toolchain.json; nothing else from either place.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { llamaCppToolEnv } from '../../config/worker.js';

describe('llamaCppToolEnv', () => {
  let state: string;
  beforeAll(async () => {
    state = await mkdtemp(path.join(os.tmpdir(), 'refinery-llama-tools-'));
  });
  afterAll(async () => {
    await rm(state, { recursive: true, force: true });
  });

  it('defaults to the tools in toolchain.json, and only those two paths', async () => {
    await writeFile(
      path.join(state, 'toolchain.json'),
      JSON.stringify({ python: '/c/py/bin/python', minio: '/c/minio', llamaCppConvert: '/c/llama.cpp/src/convert_hf_to_gguf.py', llamaQuantize: '/c/llama.cpp/bin/llama-quantize' }),
    );
    expect(llamaCppToolEnv({ REFINERY_STATE_DIR: state, REFINERY_S3_SECRET_KEY: 'secret' })).toEqual({
      REFINERY_LLAMA_CPP_CONVERT: '/c/llama.cpp/src/convert_hf_to_gguf.py',
      REFINERY_LLAMA_QUANTIZE: '/c/llama.cpp/bin/llama-quantize',
    });
  });

  it("the worker's own settings win, one by one", () => {
    expect(llamaCppToolEnv({ REFINERY_STATE_DIR: state, REFINERY_LLAMA_QUANTIZE: '/opt/llama.cpp/build/bin/llama-quantize' })).toEqual({
      REFINERY_LLAMA_CPP_CONVERT: '/c/llama.cpp/src/convert_hf_to_gguf.py',
      REFINERY_LLAMA_QUANTIZE: '/opt/llama.cpp/build/bin/llama-quantize',
    });
  });

  it('passes the Ollama Modelfile check (infra/ollama-check) the same way', async () => {
    await writeFile(path.join(state, 'toolchain.json'), JSON.stringify({ ollamaCheck: '/c/ollama-check-0123/refinery-ollama-check' }));
    expect(llamaCppToolEnv({ REFINERY_STATE_DIR: state })).toEqual({ REFINERY_OLLAMA_CHECK: '/c/ollama-check-0123/refinery-ollama-check' });
    expect(llamaCppToolEnv({ REFINERY_STATE_DIR: state, REFINERY_OLLAMA_CHECK: '/opt/refinery-ollama-check' })).toEqual({
      REFINERY_OLLAMA_CHECK: '/opt/refinery-ollama-check',
    });
  });

  it('nothing when neither names them (the job then fails with a config error naming the variable)', async () => {
    await writeFile(path.join(state, 'toolchain.json'), JSON.stringify({ python: '/c/py/bin/python' }));
    expect(llamaCppToolEnv({ REFINERY_STATE_DIR: state })).toEqual({});
    await writeFile(path.join(state, 'toolchain.json'), '{ not json');
    expect(llamaCppToolEnv({ REFINERY_STATE_DIR: state })).toEqual({});
    expect(llamaCppToolEnv({ REFINERY_STATE_DIR: path.join(state, 'absent') })).toEqual({});
  });
});
