#pragma once
// Request: the handle of a started (non-blocking) communication. test() makes progress
// and says whether it is complete; wait() blocks until it is. A default-constructed
// Request is complete. Destroying a pending Request waits for it (buffers stay valid).
//
// A Request either borrows the state of a persistent Collective (no allocation per start)
// or owns the state of a one-shot call.
#include <memory>

namespace shardflow::comm {

namespace detail {
/// A started communication that can be progressed. Backends implement it.
class Pending {
 public:
  virtual ~Pending() = default;
  /// Progress; true once complete (and stays true until the next start).
  virtual bool test() = 0;
  /// Block until complete.
  virtual void wait() = 0;
};
}  // namespace detail

class Request {
 public:
  Request() = default;
  /// Borrowed state (a persistent operation outlives its requests).
  explicit Request(detail::Pending* borrowed) : pending_(borrowed) {}
  /// Owned state (one-shot calls).
  explicit Request(std::unique_ptr<detail::Pending> owned) : pending_(owned.get()), owned_(std::move(owned)) {}
  Request(Request&& o) noexcept : pending_(o.pending_), owned_(std::move(o.owned_)) { o.pending_ = nullptr; }
  Request& operator=(Request&& o) noexcept;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
  ~Request();

  /// Progress; true when complete.
  bool test();
  /// Block until complete; rethrows a library error.
  void wait();
  /// True until the communication has been seen complete by test() or wait().
  bool pending() const { return pending_ != nullptr; }

 private:
  detail::Pending* pending_ = nullptr;
  std::unique_ptr<detail::Pending> owned_;
};

/// Wait for every request in the range.
template <class It>
void wait_all(It first, It last) {
  for (; first != last; ++first) first->wait();
}

}  // namespace shardflow::comm
