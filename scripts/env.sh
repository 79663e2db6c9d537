# Sourced by the README commands and .ci/run: one place for build settings.
# The target directory lives outside the clone so repeat runs (and CI on the
# same machine) reuse compiled dependencies.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/agentd/target}"
# Link Debian's optimised librocksdb instead of compiling RocksDB from source.
export ROCKSDB_LIB_DIR="${ROCKSDB_LIB_DIR:-/usr/lib/$(gcc -print-multiarch)}"
export ROCKSDB_INCLUDE_DIR="${ROCKSDB_INCLUDE_DIR:-/usr/include}"
export LIBCLANG_PATH="${LIBCLANG_PATH:-$(ls -d /usr/lib/llvm-*/lib 2>/dev/null | tail -n 1)}"
mkdir -p "$CARGO_TARGET_DIR"
