#pragma once
// The command line of the deck-driven benchmarks (bench_recompute, bench_memory):
//   [deck] [--set section.key=value ...] [--NAME N ...]
// where each --NAME is an integer option the benchmark declares with its variable. Any
// other argument is the deck.
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace shardflow::perf {

struct DeckArgs {
  std::string deck;
  std::vector<std::string> sets;
};

inline DeckArgs parse_deck_args(int argc, char** argv, std::string default_deck,
                                std::initializer_list<std::pair<const char*, int*>> ints) {
  DeckArgs a{std::move(default_deck), {}};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    bool taken = false;
    for (const auto& [name, value] : ints)
      if (arg == name && i + 1 < argc) {
        *value = std::stoi(argv[++i]);
        taken = true;
      }
    if (taken) continue;
    if (arg == "--set")
      while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) a.sets.push_back(argv[++i]);
    else
      a.deck = arg;
  }
  return a;
}

}  // namespace shardflow::perf
