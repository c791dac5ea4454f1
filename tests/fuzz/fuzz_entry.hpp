#pragma once
// The bodies of the checkpoint-reader fuzz harnesses, compiled both into the libFuzzer
// binaries (scripts/fuzz.sh, clang, -fsanitize=fuzzer,address,undefined) and into the
// normal test suite's replay test (test_fuzz_replay), which runs every stored seed and
// regression input through them. See docs/fuzzing.md.
//
// An input is *rejected* when the reader throws shardflow::Error (InputError included): the
// expected outcome for malformed input. Anything else escaping (another exception, hence
// std::terminate), a crash, a sanitizer report or a hang is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

namespace shardflow::fuzz {

enum class Outcome { Accepted, Rejected };

/// Once per process, after MPI_Init and Kokkos::initialize: saves the pristine checkpoint
/// (on MPI_COMM_SELF) into a fresh temporary directory that the checkpoint harness uses.
void init_checkpoint_harness();

/// Manifest text -> Manifest::parse, validate, coverage_problem per tensor; an accepted
/// manifest must survive a to_json/parse round trip unchanged (aborts otherwise).
/// `why` (optional) receives the rejection message.
Outcome fuzz_manifest(const std::uint8_t* data, std::size_t size, std::string* why = nullptr);

/// data[0] picks the file the rest of the input replaces in a copy of the pristine
/// checkpoint: even -> manifest.json, odd -> shard-0.h5. Then restore (onto the saved
/// layout and dtypes), verify and describe run on it. Accepted means restore succeeded.
/// `restored_ok` (optional) is set when restore succeeded and every value equals the saved one;
/// `why` (optional) receives restore's rejection message.
Outcome fuzz_checkpoint(const std::uint8_t* data, std::size_t size, bool* restored_ok = nullptr,
                        std::string* why = nullptr);

/// Writes the seed inputs of both harnesses: <dir>/manifest/*, <dir>/checkpoint/*.
void write_seeds(const std::string& dir);

/// Removes the temporary directory of the checkpoint harness.
void cleanup();

}  // namespace shardflow::fuzz
