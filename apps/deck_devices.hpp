#pragma once
// The deck a sizing command (`compile`, `simulate`) works on: a deck file or the defaults,
// with --set overrides, and its data axis grown (or shrunk) to --devices.
#include <string>
#include <vector>

#include "config/deck.hpp"

namespace shardflow::app {

/// The deck at `path` ("" for the default deck: the quickstart model on one device) with
/// `sets` applied and, when devices > 0, mesh.data set so that the mesh has `devices`
/// devices in all. `cmd` names the command in errors (InputError: devices < 1, or not a
/// multiple of the deck's other axes).
Deck load_deck_on_devices(const std::string& path, std::vector<std::string> sets, int devices, const std::string& cmd);

}  // namespace shardflow::app
