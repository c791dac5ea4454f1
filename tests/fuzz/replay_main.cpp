// Replays every stored fuzz input (tests/fuzz/seeds/<harness>/*, tests/fuzz/regressions/
// <harness>/*) through the harness bodies of fuzz_entry.cpp, in the ordinary (g++) build.
// Passes when nothing crashes, every seed is accepted, and the checkpoint seeds restore
// the saved values exactly. Damaged shard files, including the two that made HDF5 1.10.8
// itself over-read and over-allocate (docs/fuzzing.md), are refused by the size and
// metadata checksum check before HDF5 opens them, in every build, ASan included.
// A regression input X may come with X.expect: a text that the
// rejection message must contain (so the test fails when the fix is undone, even where the
// original failure was undefined behaviour that only a sanitizer sees).
// `test_fuzz_replay [DIR]` replays DIR (default: the source tree's tests/fuzz);
// `test_fuzz_replay --write-seeds DIR` writes the seed inputs.
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz_entry.hpp"

namespace fs = std::filesystem;
using shardflow::fuzz::Outcome;

namespace {
std::vector<fs::path> files_in(const fs::path& dir) {
  std::vector<fs::path> out;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file() && e.path().filename().string()[0] != '.' && e.path().extension() != ".expect")
        out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

const char* name(Outcome o) { return o == Outcome::Accepted ? "accepted" : "rejected"; }
}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  Kokkos::initialize(argc, argv);
  int failures = 0;
  {
    shardflow::fuzz::init_checkpoint_harness();
    if (argc == 3 && std::string(argv[1]) == "--write-seeds") {
      shardflow::fuzz::write_seeds(argv[2]);
    } else {
      const fs::path root = argc > 1 ? fs::path(argv[1]) : fs::path(SHARDFLOW_FUZZ_DIR);
      int total = 0;
      for (const std::string harness : {"manifest", "checkpoint"}) {
        for (const std::string kind : {"seeds", "regressions"}) {
          for (const auto& f : files_in(root / kind / harness)) {
            const auto bytes = read_bytes(f);
            bool restored_ok = false;
            std::string why;
            const Outcome o = harness == "manifest"
                                  ? shardflow::fuzz::fuzz_manifest(bytes.data(), bytes.size(), &why)
                                  : shardflow::fuzz::fuzz_checkpoint(bytes.data(), bytes.size(), &restored_ok, &why);
            ++total;
            std::printf("%-10s %-11s %-40s %s\n", harness.c_str(), kind.c_str(), f.filename().c_str(), name(o));
            if (kind == "seeds" && o != Outcome::Accepted) {
              std::printf("  FAIL: a seed must be accepted\n");
              ++failures;
            }
            fs::path expect = f;
            expect += ".expect";
            if (fs::exists(expect)) {
              const auto e = read_bytes(expect);
              std::string text(e.begin(), e.end());
              while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
              if (o != Outcome::Rejected || why.find(text) == std::string::npos) {
                std::printf("  FAIL: expected a rejection containing '%s', got: %s\n", text.c_str(),
                            o == Outcome::Rejected ? why.c_str() : "accepted");
                ++failures;
              }
            }
            if (kind == "seeds" && harness == "checkpoint" && !restored_ok) {
              std::printf("  FAIL: the seed checkpoint did not restore the saved values\n");
              ++failures;
            }
          }
        }
        if (files_in(root / "seeds" / harness).empty()) {
          std::printf("FAIL: no seeds for harness '%s' under %s\n", harness.c_str(), root.c_str());
          ++failures;
        }
      }
      std::printf("%d inputs replayed, %d failures\n", total, failures);
    }
    shardflow::fuzz::cleanup();
  }
  Kokkos::finalize();
  MPI_Finalize();
  return failures == 0 ? 0 : 1;
}
