#pragma once
// The verify pass, run before the first step: for every communicator group of the mesh,
// the ranks exchange the sequence of collectives their graphs will issue on it (and the
// point-to-point messages they will send and receive) and check that they agree. When
// they do not, every rank throws the same Error naming the first collective that differs
// (its index, kind, tensor, and the world ranks involved) instead of hanging later.
// The pass itself issues the same fixed sequence of MPI calls on every rank, whatever the
// graphs contain, so it cannot hang on mismatched graphs.
#include <string>

#include "graph/task_graph.hpp"
#include "comm/mesh.hpp"

namespace shardflow::graph {

/// Canonical communicator key of a group of mesh axes: the axes in declared mesh order
/// joined by '+', e.g. "data+fsdp". As input, "world" is accepted for every axis.
std::string comm_key(const Mesh& mesh, const std::vector<std::string>& axes);
/// The axes of a communicator key (inverse of comm_key); throws naming the key.
std::vector<std::string> comm_key_axes(const Mesh& mesh, const std::string& key);

/// Collective over mesh.world(). Throws shardflow::Error on every rank when any
/// communicator's sequences differ.
void verify(const TaskGraph& g, const Mesh& mesh);

}  // namespace shardflow::graph
