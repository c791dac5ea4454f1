#!/usr/bin/env bash
# Fuzz the checkpoint reader for a bounded time (docs/fuzzing.md).
#
#   scripts/fuzz.sh [SECONDS_PER_HARNESS=60] [HARNESS...]     harnesses: manifest checkpoint
#
# Installs clang/libFuzzer when missing (apt), builds the libFuzzer binaries with
# -fsanitize=fuzzer,address,undefined in build-fuzz/ (a separate clang configure with
# SHARDFLOW_FUZZ=ON; the normal build is untouched), runs each harness for SECONDS from
# the seeds in tests/fuzz/seeds/<harness>/ plus the regressions, and copies every crashing,
# timing-out or out-of-memory input into tests/fuzz/regressions/<harness>/. Exits 1 when
# a harness found something. Environment: JOBS (build parallelism, default 1),
# FUZZ_BUILD (build dir), FUZZ_FLAGS (extra libFuzzer flags).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
secs="${1:-60}"
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(manifest checkpoint)
build="${FUZZ_BUILD:-$here/build-fuzz}"
jobs="${JOBS:-1}"

need=()
command -v clang++-14 >/dev/null || need+=(clang-14)
ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 || need+=(libfuzzer-14-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "fuzz.sh: installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then apt-get install -y "${need[@]}"; else sudo apt-get install -y "${need[@]}"; fi
fi

if [ ! -f "$build/CMakeCache.txt" ]; then
  CC=clang-14 CXX=clang++-14 cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSHARDFLOW_FUZZ=ON -DSHARDFLOW_ENABLE_CUDA=OFF -DSHARDFLOW_ENABLE_NCCL=OFF -DSHARDFLOW_BUILD_PERF=OFF \
    -DSHARDFLOW_WERROR=OFF
fi
targets=()
for h in "${harnesses[@]}"; do targets+=("fuzz_$h"); done
cmake --build "$build" -j "$jobs" --target "${targets[@]}"

# allocator_may_return_null: as glibc does, an impossible malloc (a size field of a damaged
# HDF5 file, e.g. 4 EiB) returns NULL, which HDF5 checks and reports as an error.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
status=0
for h in "${harnesses[@]}"; do
  corpus="$build/corpus/$h"
  artifacts="$build/artifacts/$h"
  rm -rf "$artifacts"
  mkdir -p "$corpus" "$artifacts" "$here/tests/fuzz/regressions/$h"
  echo "fuzz.sh: fuzzing '$h' for ${secs}s"
  set +e
  (cd "$build" && "./tests/fuzz_$h" "$corpus" "$here/tests/fuzz/seeds/$h" "$here/tests/fuzz/regressions/$h" \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=16384 \
      -print_final_stats=1 -artifact_prefix="$artifacts/" ${FUZZ_FLAGS:-}) 2>&1 | tee "$build/fuzz_$h.log" | \
      grep -E '^(#[0-9]+ +(DONE|INITED)|stat::|==[0-9]+==ERROR|SUMMARY|.*runtime error|artifact_prefix|Test unit written)'
  rc=${PIPESTATUS[0]}
  set -e
  found=0
  for f in "$artifacts"/crash-* "$artifacts"/timeout-* "$artifacts"/oom-* "$artifacts"/leak-*; do
    [ -e "$f" ] || continue
    cp -n "$f" "$here/tests/fuzz/regressions/$h/"
    echo "fuzz.sh: $h: kept $(basename "$f") in tests/fuzz/regressions/$h/"
    found=1
  done
  if [ "$rc" != 0 ] || [ "$found" = 1 ]; then
    echo "fuzz.sh: $h FOUND A PROBLEM (exit $rc), log: $build/fuzz_$h.log"
    status=1
  else
    echo "fuzz.sh: $h: no crash in ${secs}s"
  fi
done
exit $status
