#pragma once
// The mesh axis names, in one place. Every other file names an axis through these.
#include <string>

namespace shardflow::axis {

inline constexpr const char* data = "data";
inline constexpr const char* fsdp = "fsdp";
inline constexpr const char* tensor = "tensor";
inline constexpr const char* pipeline = "pipeline";
inline constexpr const char* expert = "expert";
/// Context parallelism: the sequence of every micro-batch is split over it (ring attention).
inline constexpr const char* context = "context";
/// Artifex calls the tensor-parallel axis "model"; decks and ParallelismConfig accept it as `tensor`.
inline constexpr const char* model_alias = "model";

/// `tensor` for "model", the name itself otherwise.
inline std::string canonical(const std::string& name) { return name == model_alias ? tensor : name; }

}  // namespace shardflow::axis
