// Linear layers: y = x · wᵀ and its two backward products, all through gemm.
#include "nn/impl/gemm.hpp"
#include "nn/kernels.hpp"

namespace shardflow::nn {

template <class Scalar, class Exec>
void Linear<Scalar, Exec>::forward(typename V::CMat x, typename V::CMat w, typename V::Mat y, bool accumulate) {
  SHARDFLOW_REQUIRE(x.extent(1) == w.extent(1) && y.extent(0) == x.extent(0) && y.extent(1) == w.extent(0),
                    "Linear::forward: x is [", x.extent(0), ", ", x.extent(1), "], w is [", w.extent(0), ", ",
                    w.extent(1), "], y is [", y.extent(0), ", ", y.extent(1), "]; want y [T, out] = x [T, in] · w [out, in]ᵀ");
  detail::gemm("N", "T", 1.0, x, w, accumulate ? 1.0 : 0.0, y);
}

template <class Scalar, class Exec>
void Linear<Scalar, Exec>::backward_input(typename V::CMat dy, typename V::CMat w, typename V::Mat dx,
                                          bool accumulate) {
  SHARDFLOW_REQUIRE(dy.extent(1) == w.extent(0) && dx.extent(0) == dy.extent(0) && dx.extent(1) == w.extent(1),
                    "Linear::backward_input: dy is [", dy.extent(0), ", ", dy.extent(1), "], w is [", w.extent(0),
                    ", ", w.extent(1), "], dx is [", dx.extent(0), ", ", dx.extent(1), "]");
  detail::gemm("N", "N", 1.0, dy, w, accumulate ? 1.0 : 0.0, dx);
}

template <class Scalar, class Exec>
void Linear<Scalar, Exec>::backward_weight(typename V::CMat dy, typename V::CMat x, typename V::Mat dw,
                                           bool accumulate) {
  SHARDFLOW_REQUIRE(dy.extent(0) == x.extent(0) && dw.extent(0) == dy.extent(1) && dw.extent(1) == x.extent(1),
                    "Linear::backward_weight: dy is [", dy.extent(0), ", ", dy.extent(1), "], x is [", x.extent(0),
                    ", ", x.extent(1), "], dw is [", dw.extent(0), ", ", dw.extent(1), "]");
  detail::gemm("T", "N", 1.0, dy, x, accumulate ? 1.0 : 0.0, dw);
}

template struct Linear<float>;
template struct Linear<double>;

}  // namespace shardflow::nn
