// Resharding between many random layout pairs (random shapes, uneven splits, replicas,
// pinned axes) on 2- and 3-axis meshes of the world size reproduces the data exactly, and
// no rank receives more than its target box; staged (pack / unpack), in place (strided
// pieces as MPI derived datatypes) and in one walk over large sources.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <random>

#include "comm/comm_set.hpp"
#include "shard/reshard.hpp"
#include "support/test_util.hpp"

using namespace shardflow;

namespace {

/// The value of global element `flat` (row-major index) of the test tensor.
template <class T>
T value_at(std::int64_t flat) {
  if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>)
    return T(static_cast<float>(flat % 997 - 498));  // exact in both 16-bit types
  else
    return static_cast<T>(flat * 3 + 1);
}

/// This rank's box of `l`, filled from the global formula.
template <class T>
std::vector<T> fill_local(const Layout& l, int rank) {
  const Box b = l.box(rank);
  std::vector<T> v(static_cast<std::size_t>(b.numel()));
  const Shape gs = row_major_strides(l.global_shape());
  const Shape ls = row_major_strides(b.extent);
  for (std::int64_t i = 0; i < b.numel(); ++i) {
    std::int64_t rem = i, g = 0;
    for (std::size_t d = 0; d < b.ndim(); ++d) {
      const std::int64_t c = rem / ls[d];
      rem -= c * ls[d];
      g += (c + b.offset[d]) * gs[d];
    }
    v[static_cast<std::size_t>(i)] = value_at<T>(g);
  }
  return v;
}

/// A random spec: each axis splits a random dimension or none; a random unused axis may be
/// pinned to a random index.
Layout random_layout(std::mt19937& g, const Shape& shape, const MeshShape& mesh) {
  std::vector<PartitionSpec::DimAxes> dims(shape.size());
  std::map<std::string, int> pinned;
  for (const auto& axis : mesh.axis_names()) {
    const int choice = std::uniform_int_distribution<int>(-1, static_cast<int>(shape.size()) - 1)(g);
    if (choice >= 0) {
      auto& d = dims[static_cast<std::size_t>(choice)];
      d.insert(d.begin() + std::uniform_int_distribution<int>(0, static_cast<int>(d.size()))(g), axis);
    } else if (std::uniform_int_distribution<int>(0, 3)(g) == 0) {
      pinned[axis] = std::uniform_int_distribution<int>(0, mesh.axis_size(axis) - 1)(g);
    }
  }
  return Layout(shape, PartitionSpec(dims), mesh, pinned);
}

/// The communicators of `mesh`, made with peer copies turned off (SHARDFLOW_PEER_COPY=0 while
/// they are made), as across nodes: the tests of the MPI paths' own choices use them, since
/// Auto prefers peer copies where the ranks can make them.
std::unique_ptr<comm::CommSet> comms_without_peer_copies(const Mesh& mesh) {
  const char* was = std::getenv("SHARDFLOW_PEER_COPY");
  const std::string before = was ? was : "";
  ::setenv("SHARDFLOW_PEER_COPY", "0", 1);
  auto comms = std::make_unique<comm::CommSet>(mesh, comm::Backend::Mpi);
  if (was)  // as the caller's environment had it
    ::setenv("SHARDFLOW_PEER_COPY", before.c_str(), 1);
  else
    ::unsetenv("SHARDFLOW_PEER_COPY");
  EXPECT_FALSE(comms->world().peer_copies());
  return comms;
}

template <class T>
void check_pair(comm::Communicator& world, const Layout& from, const Layout& to) {
  const int me = world.rank();
  auto src = fill_local<T>(from, me);
  auto got = shard::reshard(world, src, from, to);
  auto want = fill_local<T>(to, me);
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_TRUE(got[i] == want[i]) << from.to_string() << " -> " << to.to_string() << " element " << i;
}

TEST(Reshard, RandomLayoutPairsRoundTripExactly) {
  const int n = test::world_size();
  Kokkos::DefaultHostExecutionSpace exec;
  std::mt19937 g(20261121);
  const std::vector<std::string> names{"data", "fsdp", "tensor"};
  int pairs = 0, pipelined = 0;
  for (int k : {2, 3}) {
    for (auto sizes : test::factorisations(n, k)) {
      MeshShape ms(std::vector<std::string>(names.begin(), names.begin() + k), sizes);
      Mesh mesh(ms);
      comm::CommSet comms(mesh, comm::Backend::Mpi);
      for (int trial = 0; trial < 12; ++trial) {
        Shape shape;
        const int nd = std::uniform_int_distribution<int>(1, 3)(g);
        for (int d = 0; d < nd; ++d) shape.push_back(std::uniform_int_distribution<int>(0, 11)(g));
        if (trial == 0) shape.assign(static_cast<std::size_t>(nd), 1);  // tiny: most ranks empty
        Layout a = random_layout(g, shape, ms), b = random_layout(g, shape, ms);
        shard::ReshardPlan plan(a, b, mesh.rank());
        ASSERT_EQ(plan.recv_elems() + plan.local_piece().numel(), b.local_numel(mesh.rank()))
            << "a rank receives more than its target box";
        ASSERT_LE(plan.send_elems(), a.local_numel(mesh.rank()) * mesh.size());
        switch (trial % 4) {
          case 0:
            check_pair<float>(comms.world(), a, b);
            break;
          case 1:
            check_pair<std::int64_t>(comms.world(), a, b);
            break;
          case 2:
            check_pair<bf16>(comms.world(), a, b);
            break;
          default:
            check_pair<double>(comms.world(), a, b);
            break;
        }
        // and back, through a persistent operation run twice, staged, in place, with every
        // piece that can go in rounds moved in rounds of one row (the slots reused), and with
        // every piece copied straight between the ranks' buffers (when they can)
        for (auto path : {shard::ReshardPath::Staged, shard::ReshardPath::InPlace, shard::ReshardPath::Pipelined,
                          shard::ReshardPath::PeerCopy}) {
          if (path == shard::ReshardPath::PeerCopy && !comms.world().peer_copies()) continue;
          shard::Resharder<float> back(comms.world(), shard::ReshardPlan(b, a, mesh.rank()), exec, path, 1);
          if (path != shard::ReshardPath::Pipelined) {
            EXPECT_EQ(back.in_place(), path == shard::ReshardPath::InPlace);
          }
          EXPECT_EQ(back.peer_copy(), path == shard::ReshardPath::PeerCopy);
          pipelined += static_cast<int>(back.pipelined_sends());
          auto src = fill_local<float>(b, mesh.rank());
          std::vector<float> dst(static_cast<std::size_t>(a.local_numel(mesh.rank())), -1.f);
          for (int rep = 0; rep < 2; ++rep) {
            back.run(shard::Resharder<float>::ConstView(src.data(), src.size()),
                     shard::Resharder<float>::View(dst.data(), dst.size()));
            EXPECT_EQ(dst, fill_local<float>(a, mesh.rank()))
                << b.to_string() << " -> " << a.to_string() << " path " << static_cast<int>(path)
                << (back.in_place() ? " in place" : "") << (back.peer_copy() ? " peer copy" : "");
            std::fill(dst.begin(), dst.end(), -1.f);
          }
        }
        ++pairs;
      }
    }
  }
  EXPECT_GT(pairs, 0);
  int any = 0;
  MPI_Allreduce(&pipelined, &any, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (n > 1) {
    EXPECT_GT(any, 0) << "no random pair sent a piece in rounds";
  }
}

// Rows -> columns: each piece received is a row block of the target (contiguous: written in
// place, no unpack) while each piece sent is a column block of the source (strided: packed).
// Columns -> rows is the mirror. Rows -> replicated (an all-gather) is direct on both sides.
// Each runs twice on fresh buffers (the persistent exchange is rebound to them).
TEST(Reshard, ContiguousPiecesMoveInPlaceAndEqualTheStagedPath) {
  const int n = test::world_size();
  Mesh mesh(MeshShape({"data", "fsdp"}, {n, 1}));
  comm::CommSet comms(mesh, comm::Backend::Mpi);
  const Shape shape{4 * n + 3, 7 * n + 2};
  Layout rows(shape, PartitionSpec{{"data"}, {}}, mesh.shape());
  Layout cols(shape, PartitionSpec{{}, {"data"}}, mesh.shape());
  Layout all = Layout::replicated(shape, mesh.shape());
  struct Case {
    const Layout *from, *to;
    bool send, recv;
  };
  const bool multi = n > 1;
  for (const Case& c : {Case{&rows, &cols, false, multi}, Case{&cols, &rows, multi, false},
                        Case{&rows, &all, multi, multi}}) {
    shard::Resharder<float> op(comms.world(), shard::ReshardPlan(*c.from, *c.to, mesh.rank()));
    const std::string what = c.from->to_string() + " -> " + c.to->to_string();
    if (!op.plan().sends().empty()) {
      EXPECT_EQ(op.direct_send(), c.send) << what;
    }
    if (!op.plan().recvs().empty()) {
      EXPECT_EQ(op.direct_recv(), c.recv) << what;
    }
    for (int rep = 0; rep < 2; ++rep) {
      const auto src = fill_local<float>(*c.from, mesh.rank());
      std::vector<float> dst(static_cast<std::size_t>(c.to->local_numel(mesh.rank())), -7.f);
      op.run(shard::Resharder<float>::ConstView(src.data(), src.size()),
             shard::Resharder<float>::View(dst.data(), dst.size()));
      EXPECT_EQ(dst, fill_local<float>(*c.to, mesh.rank())) << what;
    }
  }
}

// Sources of 4 MiB and more are packed and kept in one walk over the source rows, slab by
// slab (Resharder::fused_walk): random layout pairs of tensors of 21 MB, uneven splits,
// replicas and pinned axes among them, reproduce the data exactly, run twice each (peer
// copies off).
TEST(Reshard, LargeSourcesPackAndKeepInOneWalk) {
  const int n = test::world_size();
  std::mt19937 g(20261204);
  const std::vector<std::string> names{"data", "fsdp", "tensor"};
  const std::vector<Shape> shapes{{2051, 2563}, {13, 411, 977}, {5 * 1024 * 1024 + 5}, {1543, 3, 1117}};
  int fused = 0, rows = 0, unpacks = 0;
  for (int k : {1, 2}) {
    for (auto sizes : test::factorisations(n, k)) {
      MeshShape ms(std::vector<std::string>(names.begin(), names.begin() + k), sizes);
      Mesh mesh(ms);
      const auto comms_off = comms_without_peer_copies(mesh);
      comm::CommSet& comms = *comms_off;
      for (const Shape& shape : shapes) {
        for (int trial = 0; trial < 3; ++trial) {
          Layout a = random_layout(g, shape, ms), b = random_layout(g, shape, ms);
          shard::Resharder<float> op(comms.world(), shard::ReshardPlan(a, b, mesh.rank()));
          fused += op.fused_walk() ? 1 : 0;
          rows += op.row_walk() ? 1 : 0;
          unpacks += op.unpack_walk() ? 1 : 0;
          const auto src = fill_local<float>(a, mesh.rank());
          const auto want = fill_local<float>(b, mesh.rank());
          std::vector<float> dst(want.size(), -1.f);
          for (int rep = 0; rep < 2; ++rep) {
            op.run(shard::Resharder<float>::ConstView(src.data(), src.size()),
                   shard::Resharder<float>::View(dst.data(), dst.size()));
            // every rank learns whether any rank's result was wrong (a rank returning alone
            // would leave the others waiting in the next exchange)
            int bad = dst == want ? 0 : 1, any_bad = 0;
            MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
            EXPECT_TRUE(dst == want) << a.to_string() << " -> " << b.to_string() << " (fused walk " << op.fused_walk()
                                     << ", row walk " << op.row_walk() << ", unpack walk " << op.unpack_walk()
                                     << ", run " << rep << ")";
            ASSERT_EQ(any_bad, 0) << "a rank's result was wrong";
            std::fill(dst.begin(), dst.end(), -1.f);
          }
        }
      }
    }
  }
  int any = 0, any_rows = 0, any_unpacks = 0;
  MPI_Allreduce(&fused, &any, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&rows, &any_rows, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&unpacks, &any_unpacks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (n > 1) {
    EXPECT_GT(any_unpacks, 0) << "no pair took the destination's row walk";
    EXPECT_GT(any, 0) << "no pair took the fused walk";
    EXPECT_GT(any_rows, 0) << "no pair took the row walk";
    EXPECT_LT(any_rows, any) << "every fused pair took the row walk: the slab walk went untested";
  }
}

// The row walk (Resharder::row_walk): each source row read once, its runs copied to the
// staging buffer and the destination in ascending order. Row splits becoming column
// splits (uneven, with several pieces per row at 4 ranks), a split of the middle
// dimension of a 3-D tensor, and f64 (runs scaled by the element size). Peer copies off.
template <class T>
void row_walk_case(const Shape& shape, const PartitionSpec& from, const PartitionSpec& to, const MeshShape& ms) {
  Mesh mesh(ms);
  const auto comms_off = comms_without_peer_copies(mesh);
  comm::CommSet& comms = *comms_off;
  Layout a(shape, from, ms), b(shape, to, ms);
  shard::Resharder<T> op(comms.world(), shard::ReshardPlan(a, b, mesh.rank()));
  const auto src = fill_local<T>(a, mesh.rank());
  const auto want = fill_local<T>(b, mesh.rank());
  std::vector<T> dst(want.size(), T(-1));
  op.run(typename shard::Resharder<T>::ConstView(src.data(), src.size()),
         typename shard::Resharder<T>::View(dst.data(), dst.size()));
  EXPECT_TRUE(dst == want) << a.to_string() << " -> " << b.to_string() << " (row walk " << op.row_walk()
                           << ", unpack walk " << op.unpack_walk() << ")";
  // a row split becoming a column split packs strided pieces (the source's row walk); the
  // other way round the pieces leave as contiguous runs of the source and land strided in
  // the destination (the destination's row walk)
  if (mesh.size() > 1 && op.plan().local_piece().numel() > 0) {
    if (!op.direct_send() && !op.plan().sends().empty()) {  // (or in rounds: each a walk of its rows)
      EXPECT_TRUE(op.row_walk() || op.pipelined_sends() == op.plan().sends().size())
          << a.to_string() << " -> " << b.to_string();
    }
    if (!op.direct_recv() && !op.plan().recvs().empty()) {  // (or in rounds: each walked into its rows)
      EXPECT_TRUE(op.unpack_walk() || op.pipelined_recvs() == op.plan().recvs().size())
          << a.to_string() << " -> " << b.to_string();
    }
  }
  // run again into a dirty destination: every element is written
  std::fill(dst.begin(), dst.end(), T(-2));
  op.run(typename shard::Resharder<T>::ConstView(src.data(), src.size()),
         typename shard::Resharder<T>::View(dst.data(), dst.size()));
  EXPECT_TRUE(dst == want) << a.to_string() << " -> " << b.to_string() << " (second run)";
}

TEST(Reshard, RowSplitsWalkTheSourceOnceInOrder) {
  const int n = test::world_size();
  const MeshShape flat({"data"}, {n});
  row_walk_case<float>({1031 * n + 3, 777}, PartitionSpec{{"data"}, {}}, PartitionSpec{{}, {"data"}}, flat);
  row_walk_case<float>({1031 * n + 3, 777}, PartitionSpec{{}, {"data"}}, PartitionSpec{{"data"}, {}}, flat);
  row_walk_case<double>({517 * n + 1, 611}, PartitionSpec{{"data"}, {}}, PartitionSpec{{}, {"data"}}, flat);
  row_walk_case<float>({301, 4 * n + 1, 457}, PartitionSpec{{"data"}, {}, {}}, PartitionSpec{{}, {"data"}, {}}, flat);
  if (n == 4) {
    const MeshShape two({"data", "tensor"}, {2, 2});
    row_walk_case<float>({2053, 769}, PartitionSpec{{"data", "tensor"}, {}}, PartitionSpec{{"data"}, {"tensor"}}, two);
  }
}

// Pieces moved in rounds (Resharder::piece_rounds): a row split becoming a column split
// (uneven; f32 and f64; a 3-D middle split; a 2 x 2 mesh) packs each piece in rounds of a
// few source rows through the slots, reused many times over, and each round lands in place
// (Out); a column split becoming a row split sends each piece straight from the source and
// receives it in rounds of a few target rows through the slots, each round walked into the
// destination rows (In). The kept piece is copied in the same walks. Exact twice (the second
// time into a dirty destination), with the source untouched and work done between start()
// and finish(). Auto: Out from a sender's box of kPipeBytes, In at every size. Peer copies off.
/// Runs `op` once as start() + work + finish() from `s` (which holds `src`) into `d`: the
/// result equals `want` on every rank, and `s` still holds `src`.
template <class T>
void run_checked(shard::Resharder<T>& op, const T* s, const std::vector<T>& src, T* d, const std::vector<T>& want,
                 const std::string& what) {
  comm::Request r = op.start(typename shard::Resharder<T>::ConstView(s, src.size()),
                             typename shard::Resharder<T>::View(d, want.size()));
  volatile double busy = 0;  // the caller computes while the exchange is in flight
  for (int i = 0; i < 20000; ++i) busy = busy + 1.0;
  op.finish(r);
  const bool ok = std::equal(d, d + want.size(), want.begin());
  int bad = ok ? 0 : 1, any_bad = 0;
  MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  EXPECT_TRUE(ok) << what;
  ASSERT_EQ(any_bad, 0) << what << ": a rank's result was wrong";
  EXPECT_TRUE(std::equal(s, s + src.size(), src.begin())) << what << ": the source changed";
}

/// Runs `op` from `src` twice (run_checked; the second time into a dirty destination).
template <class T>
void run_split_twice(shard::Resharder<T>& op, const std::vector<T>& src, const std::vector<T>& want,
                     const std::string& what) {
  const auto keep = src;
  std::vector<T> dst(want.size(), T(-1));
  for (int rep = 0; rep < 2; ++rep) {
    run_checked(op, src.data(), keep, dst.data(), want, what + " (run " + std::to_string(rep) + ")");
    if (::testing::Test::HasFatalFailure()) return;
    std::fill(dst.begin(), dst.end(), T(-2));
  }
}

enum class Walked { None, Out, In };
template <class T>
void pipelined_case(const Shape& shape, const PartitionSpec& from, const PartitionSpec& to, const MeshShape& ms,
                    std::int64_t round_bytes, Walked expect, shard::ReshardPath path) {
  Mesh mesh(ms);
  const auto comms_off = comms_without_peer_copies(mesh);
  comm::CommSet& comms = *comms_off;
  Layout a(shape, from, ms), b(shape, to, ms);
  shard::Resharder<T> op(comms.world(), shard::ReshardPlan(a, b, mesh.rank()), Kokkos::DefaultHostExecutionSpace(),
                         path, round_bytes);
  const std::string what = a.to_string() + " -> " + b.to_string();
  const auto src = fill_local<T>(a, mesh.rank());
  const auto want = fill_local<T>(b, mesh.rank());
  if (expect != Walked::None && mesh.size() > 1) {
    EXPECT_EQ(op.pipelined_sends(), op.plan().sends().size()) << what;
    EXPECT_EQ(op.pipelined_recvs(), op.plan().recvs().size()) << what;
    const Box walked = expect == Walked::Out ? a.box(mesh.rank()) : b.box(mesh.rank());
    const std::int64_t row_bytes = walked.numel() / walked.extent[0] * static_cast<std::int64_t>(sizeof(T));
    const std::int64_t per = std::max<std::int64_t>(1, round_bytes / row_bytes);
    EXPECT_EQ(expect == Walked::Out ? op.pipeline_rounds() : op.pipeline_in_rounds(),
              (walked.extent[0] + per - 1) / per)
        << what;
    EXPECT_EQ(expect == Walked::Out ? op.pipeline_in_rounds() : op.pipeline_rounds(), 0) << what;
  } else {
    EXPECT_EQ(op.pipelined_sends(), 0u) << what;
    EXPECT_EQ(op.pipelined_recvs(), 0u) << what;
  }
  run_split_twice(op, src, want, what + " (" + std::to_string(op.pipeline_rounds()) + " rounds)");
}

TEST(Reshard, PipelinedPiecesMoveInRoundsExactly) {
  const int n = test::world_size();
  const MeshShape flat({"data"}, {n});
  const auto forced = shard::ReshardPath::Pipelined;
  const PartitionSpec r2{{"data"}, {}}, c2{{}, {"data"}};
  const PartitionSpec r3{{"data"}, {}, {}}, m3{{}, {"data"}, {}};
  for (const bool out : {true, false}) {
    const Walked w = out ? Walked::Out : Walked::In;
    const PartitionSpec &f2 = out ? r2 : c2, &t2 = out ? c2 : r2, &f3 = out ? r3 : m3, &t3 = out ? m3 : r3;
    pipelined_case<float>({97 * n + 3, 777}, f2, t2, flat, 16 << 10, w, forced);  // 5 rows a round
    pipelined_case<float>({97 * n + 3, 777}, f2, t2, flat, 1, w, forced);         // 1 row a round
    pipelined_case<float>({97 * n + 3, 777}, f2, t2, flat, 1 << 30, w, forced);   // one round
    pipelined_case<double>({59 * n + 1, 611}, f2, t2, flat, 20000, w, forced);
    pipelined_case<float>({31, 4 * n + 1, 457}, f3, t3, flat, 8 << 10, w, forced);
    if (n == 4) {
      const MeshShape two({"data", "tensor"}, {2, 2});
      const PartitionSpec rows2{{"data", "tensor"}, {}}, mixed{{"tensor"}, {"data"}};
      pipelined_case<float>({203, 769}, out ? rows2 : mixed, out ? mixed : rows2, two, 16 << 10, w, forced);
    }
    // Auto: Out from a walked box of kPipeBytes (1 KiB rows), not below; In at every size;
    // neither for runs under kRowRunBytes (128-byte runs of 256-byte rows at 2 ranks)
    const auto rows = [&](std::int64_t bytes) { return bytes / 1024 * n; };
    using R = shard::Resharder<float>;
    pipelined_case<float>({rows(R::kPipeBytes), 256}, f2, t2, flat, R::kPipeRoundBytes, w, shard::ReshardPath::Auto);
    pipelined_case<float>({rows(R::kPipeBytes / 2), 256}, f2, t2, flat, R::kPipeRoundBytes,
                          out ? Walked::None : Walked::In, shard::ReshardPath::Auto);
    if (n == 2) {
      pipelined_case<float>({4099, 64}, f2, t2, flat, R::kPipeRoundBytes, Walked::None, shard::ReshardPath::Auto);
    }
  }
  // a row split gathered whole moves whole rows: nothing in rounds
  pipelined_case<float>({97 * n + 3, 777}, r2, PartitionSpec{{}, {}}, flat, 16 << 10, Walked::None, forced);
}

// Peer copies (Resharder::peer_copy): every piece copied straight between the ranks' buffers
// by one of them. Row splits becoming column splits (the senders write: short runs through
// the slot, several slots and several calls per piece) and back (the receivers read into
// short runs directly, more runs than one call takes); rows of 8 KiB (written directly); a
// 3-D middle split; f64; a 2 x 2 mesh at 4 ranks; an uneven row split gathered whole (one
// run on both sides). Exact twice (the second time into a dirty destination), the source
// untouched, work done between start() and finish(). Auto's rule: from kPeerCopyBytes when
// a sender writes, from kPeerReadBytes when every piece is read; without peer copies
// (SHARDFLOW_PEER_COPY=0) the forced path is refused naming the communicator.
template <class T>
void peer_case(comm::CommSet& comms, const Shape& shape, const PartitionSpec& from, const PartitionSpec& to,
               shard::ReshardPath path, bool expect) {
  const Mesh& mesh = comms.mesh();
  Layout a(shape, from, mesh.shape()), b(shape, to, mesh.shape());
  shard::Resharder<T> op(comms.world(), shard::ReshardPlan(a, b, mesh.rank()), Kokkos::DefaultHostExecutionSpace(),
                         path);
  const std::string what = a.to_string() + " -> " + b.to_string();
  EXPECT_EQ(op.peer_copy(), expect) << what;
  const auto src = fill_local<T>(a, mesh.rank());
  const auto want = fill_local<T>(b, mesh.rank());
  run_split_twice(op, src, want, what + (op.peer_copy() ? " (peer copy)" : ""));
}

TEST(Reshard, PeerCopiesMovePiecesExactly) {
  const int n = test::world_size();
  const MeshShape flat({"data"}, {n});
  Mesh mesh(flat);
  comm::CommSet comms(mesh, comm::Backend::Mpi);
  const char* off_env = std::getenv("SHARDFLOW_PEER_COPY");
  if (n > 1 && !(off_env && std::string(off_env) == "0")) {
    EXPECT_TRUE(comms.world().peer_copies()) << "ranks of one node that cannot copy each other's memory";
  }
  const bool can = comms.world().peer_copies() && n > 1;
  const auto forced = shard::ReshardPath::PeerCopy;
  using R = shard::Resharder<float>;
  const PartitionSpec r2{{"data"}, {}}, c2{{}, {"data"}};
  const PartitionSpec r3{{"data"}, {}, {}}, m3{{}, {"data"}, {}};
  if (can) {
    for (const bool out : {true, false}) {
      const PartitionSpec &f2 = out ? r2 : c2, &t2 = out ? c2 : r2, &f3 = out ? r3 : m3, &t3 = out ? m3 : r3;
      peer_case<float>(comms, {1031 * n + 3, 777}, f2, t2, forced, true);         // > 1 slot, > 1024 runs a piece
      peer_case<float>(comms, {67 * n + 1, 4096 * n + 4}, f2, t2, forced, true);  // runs of 16 KiB
      peer_case<double>(comms, {517 * n + 1, 611}, f2, t2, forced, true);
      peer_case<float>(comms, {301, 4 * n + 1, 457}, f3, t3, forced, true);
      // Auto: 1 KiB rows (512-byte runs at 2 ranks)
      const auto rows = [&](std::int64_t bytes) { return bytes / 1024; };
      peer_case<float>(comms, {rows(R::kPeerCopyBytes), 256}, f2, t2, shard::ReshardPath::Auto, out);
      peer_case<float>(comms, {rows(R::kPeerCopyBytes / 2), 256}, f2, t2, shard::ReshardPath::Auto, false);
      peer_case<float>(comms, {rows(R::kPeerReadBytes), 256}, f2, t2, shard::ReshardPath::Auto, true);
    }
    // an uneven row split gathered whole: one run on both sides
    peer_case<float>(comms, {1031 * n + 3, 77}, r2, PartitionSpec{{}, {}}, forced, true);
    if (n == 4) {
      Mesh m22(MeshShape({"data", "tensor"}, {2, 2}));
      comm::CommSet c22(m22, comm::Backend::Mpi);
      const PartitionSpec rows2{{"data", "tensor"}, {}}, mixed{{"tensor"}, {"data"}};
      peer_case<float>(c22, {2053, 769}, rows2, mixed, forced, true);
      peer_case<float>(c22, {2053, 769}, mixed, rows2, forced, true);
    }
  }
  // refused without peer copies, naming the communicator
  const auto off = comms_without_peer_copies(mesh);
  Layout a({8 * n, 8}, r2, flat), b({8 * n, 8}, c2, flat);
  try {
    R op(off->world(), shard::ReshardPlan(a, b, mesh.rank()), Kokkos::DefaultHostExecutionSpace(), forced);
    ADD_FAILURE() << "no throw";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'world'"), std::string::npos) << e.what();
  }
  peer_case<float>(*off, {1031 * n + 3, 777}, r2, c2, shard::ReshardPath::Auto, false);
}

// Node buffers (comm::NodeBuffer): the ranks' sources and destinations in memory the other
// ranks of the node map, so that each piece a rank copies goes through a mapping of its
// peer's buffer (one pass, no kernel copy): the senders write into the mapped destinations
// (row splits becoming column splits, short runs, fused with the kept piece), the receivers
// read the mapped sources (back); 8 KiB rows; f64; a 3-D middle split; an uneven row split
// gathered whole; a 2 x 2 mesh at 4 ranks. Exact twice, the source untouched, and every piece
// of every rank copied through a mapping (the sum of node_copies() over the ranks is the
// number of pieces). Then half the ranks with node buffers (the pieces into the others'
// memory go through the kernel), and buffers replaced between runs (the new ones mapped, not
// the old).
template <class T>
std::size_t node_case(comm::CommSet& comms, const Shape& shape, const PartitionSpec& from, const PartitionSpec& to,
                      shard::ReshardPath path, bool node_here = true) {
  const Mesh& mesh = comms.mesh();
  Layout a(shape, from, mesh.shape()), b(shape, to, mesh.shape());
  shard::Resharder<T> op(comms.world(), shard::ReshardPlan(a, b, mesh.rank()), Kokkos::DefaultHostExecutionSpace(),
                         path);
  const std::string what = a.to_string() + " -> " + b.to_string() + (node_here ? " (node buffers)" : " (vectors)");
  EXPECT_TRUE(op.peer_copy()) << what;
  const auto src = fill_local<T>(a, mesh.rank());
  const auto want = fill_local<T>(b, mesh.rank());
  std::vector<T> vsrc = src, vdst(want.size());
  std::size_t copies = 0;
  for (int rep = 0; rep < 2; ++rep) {
    // fresh buffers each time: the second run's are new memory files (and, once the first
    // are freed, likely the same descriptors)
    // the views start inside the buffers (not at a line), the destination's further in
    comm::NodeBuffer nsrc((src.size() + 3) * sizeof(T)), ndst((want.size() + 21) * sizeof(T));
    T* s = node_here ? nsrc.as<T>() + 3 : vsrc.data();
    T* d = node_here ? ndst.as<T>() + 21 : vdst.data();
    std::copy(src.begin(), src.end(), s);
    std::fill(d, d + want.size(), T(-1));
    run_checked(op, s, src, d, want, what + " (run " + std::to_string(rep) + ")");
    copies = op.node_copies();
  }
  return copies;
}

std::size_t sum_over_ranks(std::size_t v) {
  unsigned long x = v, all = 0;
  MPI_Allreduce(&x, &all, 1, MPI_UNSIGNED_LONG, MPI_SUM, MPI_COMM_WORLD);
  return static_cast<std::size_t>(all);
}

TEST(NodeBuffer, FindNamesTheBufferHoldingARange) {
  comm::NodeBuffer none;
  EXPECT_EQ(none.data(), nullptr);
  comm::NodeBuffer b(3 * 4096 + 100);
  ASSERT_NE(b.data(), nullptr);
  char* p = b.as<char>();
  p[0] = 1;
  p[b.bytes() - 1] = 2;  // the whole size is usable
  const comm::NodeRef whole = comm::NodeBuffer::find(p, b.bytes());
  EXPECT_GT(whole.id, 0);
  EXPECT_GE(whole.fd, 0);
  EXPECT_EQ(whole.bytes, static_cast<std::int64_t>(b.bytes()));
  EXPECT_EQ(whole.offset, 0);
  const comm::NodeRef inner = comm::NodeBuffer::find(p + 4100, 8000);
  EXPECT_EQ(inner.id, whole.id);
  EXPECT_EQ(inner.offset, 4100);
  EXPECT_EQ(comm::NodeBuffer::find(p + 4100, b.bytes() - 4099).id, 0) << "a range past the end";
  std::vector<char> other(64);
  EXPECT_EQ(comm::NodeBuffer::find(other.data(), other.size()).id, 0) << "memory of no node buffer";
  comm::NodeBuffer c(100);
  EXPECT_NE(comm::NodeBuffer::find(c.data(), 100).id, whole.id);
  comm::NodeBuffer moved = std::move(b);  // the registration moves with the memory
  EXPECT_EQ(comm::NodeBuffer::find(p, 10).id, whole.id);
  moved = comm::NodeBuffer();
  EXPECT_EQ(comm::NodeBuffer::find(p, 10).id, 0) << "a freed buffer";
}

TEST(Reshard, NodeBuffersAreCopiedThroughMappings) {
  const int n = test::world_size();
  Mesh mesh(MeshShape({"data"}, {n}));
  comm::CommSet comms(mesh, comm::Backend::Mpi);
  if (n == 1 || !comms.world().peer_copies()) GTEST_SKIP() << "no peer copies between the ranks";
  const auto forced = shard::ReshardPath::PeerCopy;
  const PartitionSpec r2{{"data"}, {}}, c2{{}, {"data"}};
  const PartitionSpec r3{{"data"}, {}, {}}, m3{{}, {"data"}, {}};
  const std::size_t pieces = static_cast<std::size_t>(n) * static_cast<std::size_t>(n - 1);
  for (const bool out : {true, false}) {
    const PartitionSpec &f2 = out ? r2 : c2, &t2 = out ? c2 : r2, &f3 = out ? r3 : m3, &t3 = out ? m3 : r3;
    EXPECT_EQ(sum_over_ranks(node_case<float>(comms, {1031 * n + 3, 777}, f2, t2, forced)), pieces);
    EXPECT_EQ(sum_over_ranks(node_case<float>(comms, {67 * n + 1, 4096 * n + 4}, f2, t2, forced)), pieces);
    EXPECT_EQ(sum_over_ranks(node_case<double>(comms, {517 * n + 1, 611}, f2, t2, forced)), pieces);
    EXPECT_EQ(sum_over_ranks(node_case<float>(comms, {301, 4 * n + 1, 457}, f3, t3, forced)), pieces);
    // Auto: 1 KiB rows (512-byte runs at 2 ranks), 16 MiB (read by the receivers from kPeerReadBytes)
    EXPECT_EQ(sum_over_ranks(node_case<float>(comms, {16384, 256}, f2, t2, shard::ReshardPath::Auto)), pieces);
  }
  EXPECT_EQ(sum_over_ranks(node_case<float>(comms, {1031 * n + 3, 77}, r2, PartitionSpec{{}, {}}, forced)), pieces);
  if (n == 4) {
    Mesh m22(MeshShape({"data", "tensor"}, {2, 2}));
    comm::CommSet c22(m22, comm::Backend::Mpi);
    const PartitionSpec rows2{{"data", "tensor"}, {}}, mixed{{"tensor"}, {"data"}};
    const std::size_t p22 = sum_over_ranks(
        shard::ReshardPlan(Layout({2053, 769}, rows2, m22.shape()), Layout({2053, 769}, mixed, m22.shape()), m22.rank())
            .sends()
            .size());
    EXPECT_EQ(sum_over_ranks(node_case<float>(c22, {2053, 769}, rows2, mixed, forced)), p22);
    EXPECT_EQ(sum_over_ranks(node_case<float>(c22, {2053, 769}, mixed, rows2, forced)), p22);
  }
  // the even ranks' buffers node buffers, the odd ranks' vectors: rows -> columns is written
  // by the senders, so the pieces into the even ranks' destinations go through mappings
  const bool even = comms.world().rank() % 2 == 0;
  const std::size_t into_even = static_cast<std::size_t>((n + 1) / 2) * static_cast<std::size_t>(n - 1);
  EXPECT_EQ(sum_over_ranks(node_case<float>(comms, {1031 * n + 3, 777}, r2, c2, forced, even)), into_even);
  // without node buffers nothing is mapped
  EXPECT_EQ(sum_over_ranks(node_case<float>(comms, {1031 * n + 3, 777}, r2, c2, forced, false)), 0u);
  // node buffers that may not be mapped (SHARDFLOW_NODE_MAP=0, as where the system refuses):
  // every piece through the kernel, exact
  ::setenv("SHARDFLOW_NODE_MAP", "0", 1);
  for (const bool out : {true, false})
    EXPECT_EQ(sum_over_ranks(node_case<float>(comms, {1031 * n + 3, 777}, out ? r2 : c2, out ? c2 : r2, forced)), 0u);
  ::unsetenv("SHARDFLOW_NODE_MAP");
}

// Replicated -> sharded moves no data between ranks (each takes its piece of its own copy).
TEST(Reshard, ReplicatedToShardedIsLocal) {
  const int n = test::world_size();
  Mesh mesh(MeshShape({"fsdp"}, {n}));
  Layout rep = Layout::replicated({4 * n + 3, 5}, mesh.shape());
  Layout sh({4 * n + 3, 5}, PartitionSpec{{"fsdp"}, {}}, mesh.shape());
  shard::ReshardPlan plan(rep, sh, mesh.rank());
  EXPECT_TRUE(plan.sends().empty());
  EXPECT_TRUE(plan.recvs().empty());
  EXPECT_EQ(plan.local_piece(), sh.box(mesh.rank()));
}

TEST(Reshard, MismatchedLayoutsThrowNamingThem) {
  const int n = test::world_size();
  Mesh mesh(MeshShape({"fsdp"}, {n}));
  comm::CommSet comms(mesh, comm::Backend::Mpi);
  Layout a = Layout::replicated({6, 4}, mesh.shape());
  Layout b = Layout::replicated({6, 5}, mesh.shape());
  try {
    shard::ReshardPlan p(a, b, mesh.rank());
    FAIL() << "no throw";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("[6, 5]"), std::string::npos) << e.what();
  }
  Layout c = Layout::replicated({6, 4}, MeshShape({"data"}, {n}));
  EXPECT_THROW(shard::ReshardPlan(a, c, mesh.rank()), InputError);
  std::vector<float> tooshort(1);
  if (a.local_numel(mesh.rank()) > 1) {
    EXPECT_THROW(shard::reshard(comms.world(), tooshort, a, a), InputError);
  }
}

}  // namespace
