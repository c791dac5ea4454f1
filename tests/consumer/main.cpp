// Uses the installed shardflow: builds a layout and checks the uneven rule.
#include <cstdio>

#include "layout/layout.hpp"

int main() {
  shardflow::MeshShape mesh({"data", "tensor"}, {2, 3});
  shardflow::Layout layout({10, 7}, shardflow::PartitionSpec{{"data"}, {"tensor"}}, mesh);
  auto box = layout.box(mesh.rank_of({1, 2}));
  std::printf("box %s\n", box.to_string().c_str());
  // rows 5..9 (10 split in 2), columns 5..6 (7 split in 3: 3,2,2)
  return (box.offset[0] == 5 && box.extent[0] == 5 && box.offset[1] == 5 && box.extent[1] == 2) ? 0 : 1;
}
