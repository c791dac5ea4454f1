#pragma once
// The data pipeline of MODEL.md: a byte corpus; step n draws B start offsets with a
// counter-based generator keyed by (seed, n), each uniform in [0, len − S − 1], and takes
// S + 1 bytes from each. The draw does not depend on the mesh: every rank can compute the
// global batch of any step, and data-parallel replica r of R takes the contiguous slice of
// sequences given by the project's uneven rule (the first B mod R replicas get one extra).
//
// Offset j (0-based) of step n: with the 64-bit counter halves lo = j and
// hi = n XOR (0xDA7A · 2⁴⁸) and key = mix64(seed) (nn/philox.hpp), x = the first 64 bits of
// Philox4x32-10, and offset = floor(x · (len − S) / 2⁶⁴) (Lemire's multiply-shift range
// map; exact, no modulo). The trainer passes its optimizer step number as n (1, 2, ...).
#include <cstdint>
#include <string>
#include <vector>

namespace shardflow::data {

/// A byte corpus held in memory.
class Corpus {
 public:
  Corpus() = default;
  Corpus(std::vector<uint8_t> bytes, std::string name);
  /// Reads the whole file; InputError naming the path when it cannot be opened or read.
  static Corpus load(const std::string& path);
  const std::vector<uint8_t>& bytes() const { return bytes_; }
  int64_t size() const { return static_cast<int64_t>(bytes_.size()); }
  const std::string& name() const { return name_; }

 private:
  std::vector<uint8_t> bytes_;
  std::string name_;
};

/// The B start offsets of step n (each in [0, corpus_len − seq − 1]).
std::vector<int64_t> batch_offsets(uint64_t seed, int64_t step, int64_t batch, int64_t seq, int64_t corpus_len);

/// Sequences [begin, begin + count) of a global batch.
struct Slice {
  int64_t begin = 0;
  int64_t count = 0;
};
/// The slice of a global batch of `batch` sequences that data-parallel replica `replica`
/// of `replicas` takes (uneven rule: split_extent / split_offset).
Slice replica_slice(int64_t batch, int64_t replicas, int64_t replica);

/// Tokens of some sequences of one step: inputs[i·S + s] = byte o_i + s and
/// targets[i·S + s] = byte o_i + s + 1 for s in [0, S).
struct Batch {
  int64_t step = 0;
  int64_t seq = 0;
  int64_t first = 0;  // index of the first sequence in the global batch
  std::vector<int64_t> offsets;  // start offsets of these sequences
  std::vector<int32_t> inputs;   // [count · S]
  std::vector<int32_t> targets;  // [count · S]
  int64_t count() const { return static_cast<int64_t>(offsets.size()); }
};

class DataLoader {
 public:
  /// Throws InputError naming the corpus and the sizes when the corpus is shorter than
  /// S + 2 bytes, and for batch < 1 or seq < 1.
  DataLoader(Corpus corpus, uint64_t seed, int64_t batch, int64_t seq);
  /// All B sequences of step n.
  Batch global_batch(int64_t step) const;
  /// The slice of step n's global batch that replica `replica` of `replicas` takes.
  Batch replica_batch(int64_t step, int64_t replicas, int64_t replica) const;
  /// Sequences [begin, begin + count) of step n's global batch.
  Batch slice(int64_t step, int64_t begin, int64_t count) const;

  const Corpus& corpus() const { return corpus_; }
  int64_t batch() const { return batch_; }
  int64_t seq() const { return seq_; }
  uint64_t seed() const { return seed_; }

 private:
  Corpus corpus_;
  uint64_t seed_ = 0;
  int64_t batch_ = 0;
  int64_t seq_ = 0;
};

}  // namespace shardflow::data
