#include "deck_devices.hpp"

#include "core/error.hpp"

namespace shardflow::app {

Deck load_deck_on_devices(const std::string& path, std::vector<std::string> sets, int devices, const std::string& cmd) {
  const std::string defaults = path.empty() ? deck_to_toml(Deck{}) : std::string();
  auto load = [&](const std::vector<std::string>& s) {
    return path.empty() ? parse_deck(defaults, "(defaults)", ".", s) : load_deck(path, s);
  };
  Deck deck = load(sets);
  if (devices == 0) return deck;
  SHARDFLOW_REQUIRE_INPUT(devices >= 1, cmd, ": --devices ", devices, " must be >= 1");
  const int others = deck.mesh.size() / deck.mesh.data;
  SHARDFLOW_REQUIRE_INPUT(devices % others == 0, cmd, ": --devices ", devices,
                          " is not a multiple of the deck's non-data axes (", others, " devices in ",
                          deck.mesh.to_mesh_shape().to_string(), "); set the mesh with --set mesh.<axis>=N");
  if (devices == deck.mesh.size()) return deck;
  sets.push_back("mesh.data=" + std::to_string(devices / others));
  return load(sets);
}

}  // namespace shardflow::app
