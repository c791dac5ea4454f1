// Byte corpus, mesh-independent batch draw, replica slicing.
#include "data/loader.hpp"

#include <filesystem>

#include <fstream>
#include <iterator>

#include "core/error.hpp"
#include "layout/layout.hpp"
#include "nn/philox.hpp"

namespace shardflow::data {

namespace {
/// floor(a · b / 2⁶⁴), exactly, in portable C++.
uint64_t mul_high(uint64_t a, uint64_t b) {
  const uint64_t a_lo = a & 0xFFFFFFFFull, a_hi = a >> 32, b_lo = b & 0xFFFFFFFFull, b_hi = b >> 32;
  const uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
  const uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xFFFFFFFFull) + lo_hi;
  return hi_hi + (hi_lo >> 32) + (cross >> 32);
}
}  // namespace

Corpus::Corpus(std::vector<uint8_t> bytes, std::string name) : bytes_(std::move(bytes)), name_(std::move(name)) {}

Corpus Corpus::load(const std::string& path) {
  std::error_code ec;
  SHARDFLOW_REQUIRE_INPUT(!std::filesystem::is_directory(path, ec), "corpus file '", path,
                          "' is a directory, not a file of bytes (train.data or --tokens)");
  std::ifstream in(path, std::ios::binary);
  SHARDFLOW_REQUIRE_INPUT(in.good(), "corpus file '", path, "' cannot be opened (missing or unreadable)");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  SHARDFLOW_REQUIRE_INPUT(!in.bad(), "corpus file '", path, "' could not be read");
  return Corpus(std::move(bytes), path);
}

std::vector<int64_t> batch_offsets(uint64_t seed, int64_t step, int64_t batch, int64_t seq, int64_t corpus_len) {
  SHARDFLOW_REQUIRE(batch >= 0 && seq >= 1 && corpus_len >= seq + 2, "batch_offsets: batch ", batch, ", seq ", seq,
                    ", corpus length ", corpus_len, " (want corpus length >= seq + 2)");
  const uint64_t range = static_cast<uint64_t>(corpus_len - seq);  // offsets 0 .. len − S − 1
  const uint64_t key = nn::mix64(seed);
  std::vector<int64_t> out(static_cast<size_t>(batch));
  for (int64_t j = 0; j < batch; ++j) {
    const uint64_t x = nn::Philox4x32::generate64(static_cast<uint64_t>(j),
                                                  static_cast<uint64_t>(step) ^ (0xDA7Aull << 48), key);
    out[static_cast<size_t>(j)] =
        static_cast<int64_t>(mul_high(x, range));
  }
  return out;
}

Slice replica_slice(int64_t batch, int64_t replicas, int64_t replica) {
  SHARDFLOW_REQUIRE(replicas >= 1 && replica >= 0 && replica < replicas && batch >= 0, "replica_slice: replica ",
                    replica, " of ", replicas, " for a batch of ", batch);
  return Slice{split_offset(batch, replicas, replica), split_extent(batch, replicas, replica)};
}

DataLoader::DataLoader(Corpus corpus, uint64_t seed, int64_t batch, int64_t seq)
    : corpus_(std::move(corpus)), seed_(seed), batch_(batch), seq_(seq) {
  SHARDFLOW_REQUIRE_INPUT(batch >= 1, "data loader: batch must be >= 1, got ", batch);
  SHARDFLOW_REQUIRE_INPUT(seq >= 1, "data loader: sequence length must be >= 1, got ", seq);
  SHARDFLOW_REQUIRE_INPUT(corpus_.size() >= seq + 2, "corpus '", corpus_.name(), "' has ", corpus_.size(),
                          " bytes, fewer than sequence length + 2 = ", seq + 2);
}

Batch DataLoader::slice(int64_t step, int64_t begin, int64_t count) const {
  SHARDFLOW_REQUIRE(begin >= 0 && count >= 0 && begin + count <= batch_, "data loader: sequences [", begin, ", ",
                    begin + count, ") lie outside the global batch of ", batch_);
  const std::vector<int64_t> all = batch_offsets(seed_, step, batch_, seq_, corpus_.size());
  Batch b;
  b.step = step;
  b.seq = seq_;
  b.first = begin;
  b.offsets.assign(all.begin() + begin, all.begin() + begin + count);
  b.inputs.resize(static_cast<size_t>(count * seq_));
  b.targets.resize(static_cast<size_t>(count * seq_));
  const uint8_t* data = corpus_.bytes().data();
  for (int64_t i = 0; i < count; ++i) {
    const uint8_t* src = data + b.offsets[static_cast<size_t>(i)];
    for (int64_t s = 0; s < seq_; ++s) {
      b.inputs[static_cast<size_t>(i * seq_ + s)] = src[s];
      b.targets[static_cast<size_t>(i * seq_ + s)] = src[s + 1];
    }
  }
  return b;
}

Batch DataLoader::global_batch(int64_t step) const { return slice(step, 0, batch_); }

Batch DataLoader::replica_batch(int64_t step, int64_t replicas, int64_t replica) const {
  const Slice s = replica_slice(batch_, replicas, replica);
  return slice(step, s.begin, s.count);
}

}  // namespace shardflow::data
