// The chunk engine's register-tiled kernels (small_gemm.hpp) against Eigen's own
// products, on sizes that leave every kind of remainder: row tiles shorter than the
// register tile, column packets and single columns past the last whole packet pair.
#include "common.hpp"

#include <gdr2/small_gemm.hpp>

#include <cstring>

using namespace gdr2;
using namespace gdr2::detail;

namespace {

// Tolerance: each C element is one k-long sum whose order differs from Eigen's
// (k ≤ 70 terms of O(1) products): ≤ k·eps relative, so 100·eps bounds it.
template <class Acc>
double tol() {
  return 100 * double(std::numeric_limits<Acc>::epsilon());
}

template <class Acc>
void check_small_gemm(Index m, Index n, Index k, Tri tri) {
  using Mat = Eigen::Matrix<Acc, Eigen::Dynamic, Eigen::Dynamic>;
  Mat A = Mat::Random(m, k);  // column-major: small_gemm reads A through strides
  if (tri == Tri::lower) A.template triangularView<Eigen::StrictlyUpper>().setZero();
  if (tri == Tri::upper) A.template triangularView<Eigen::StrictlyLower>().setZero();
  const RowMat<Acc> B = RowMat<Acc>::Random(k, n), C0 = RowMat<Acc>::Random(m, n);
  const RowMat<Acc> AB = A * B;
  INFO("m=" << m << " n=" << n << " k=" << k << " tri=" << int(tri));
  RowMat<Acc> C = C0;
  small_gemm<Update::set>(m, n, k, strided(A), B.data(), n, C.data(), n, tri);
  CHECK((C - AB).norm() <= tol<Acc>() * AB.norm());
  C = C0;
  small_gemm<Update::add>(m, n, k, strided(A), B.data(), n, C.data(), n, tri);
  CHECK((C - (C0 + AB)).norm() <= tol<Acc>() * (C0 + AB).norm());
  C = C0;
  small_gemm<Update::sub>(m, n, k, strided(A), B.data(), n, C.data(), n, tri);
  CHECK((C - (C0 - AB)).norm() <= tol<Acc>() * (C0 - AB).norm());
  // scale_add: C's rows scaled first (factors in [-1, 1], a row tile's rows each their own).
  const Vec<Acc> rs = Vec<Acc>::Random(m);
  const RowMat<Acc> scaled = rs.asDiagonal() * C0 + AB;
  C = C0;
  small_gemm<Update::scale_add>(m, n, k, strided(A), B.data(), n, C.data(), n, tri, false, rs.data());
  CHECK((C - scaled).norm() <= tol<Acc>() * scaled.norm());
  // lower_c: C's lower triangle is the product's (what lies above is not specified).
  C = C0;
  small_gemm<Update::add>(m, n, k, strided(A), B.data(), n, C.data(), n, tri, /*lower_c=*/true);
  const RowMat<Acc> want = C0 + AB;
  CHECK((C - want).template triangularView<Eigen::Lower>().toDenseMatrix().norm() <= tol<Acc>() * want.norm());
  // A read transposed (Aᵀ's strides) gives the product with Aᵀ.
  const Mat At = A.transpose();
  C = C0;
  small_gemm<Update::set>(m, n, k, strided_t(At), B.data(), n, C.data(), n, tri);
  CHECK((C - AB).norm() <= tol<Acc>() * AB.norm());
}

}  // namespace

TEMPLATE_TEST_CASE("kernels: small_gemm matches Eigen's product", "[kernels]", float, double) {
  for (Index m : {1, 3, 4, 7, 8, 13, 64})
    for (Index n : {1, 5, 16, 23, 37, 64, 70})
      for (Index k : {1, 9, 64})
        for (Tri tri : {Tri::full, Tri::lower, Tri::upper})
          if (tri == Tri::full || k == m) check_small_gemm<TestType>(m, n, k, tri);
}

TEMPLATE_TEST_CASE("kernels: transpose_into and transpose_product write Xᵀ and (X ⊙ F)ᵀ", "[kernels]", float, double) {
  for (Index n : {1, 15, 16, 37, 64})
    for (Index K : {3, 16, 40, 147}) {
      const RowMat<TestType> X = RowMat<TestType>::Random(n, K), F = RowMat<TestType>::Random(n, K);
      RowMat<TestType> Out = RowMat<TestType>::Constant(K, n, TestType(NAN));
      transpose_product(X, F, n, K, Out);
      const RowMat<TestType> want = X.cwiseProduct(F).transpose();
      INFO("n=" << n << " K=" << K);
      CHECK((Out - want).norm() == 0);  // one rounding per element, the same as Eigen's
      RowMat<TestType> Xt = RowMat<TestType>::Constant(K, n, TestType(NAN));
      transpose_into(X, n, K, Xt);
      CHECK((Xt - RowMat<TestType>(X.transpose())).norm() == 0);  // copies: exact
    }
}

TEMPLATE_TEST_CASE("kernels: copy_rows converts 16-bit rows exactly as convert does", "[kernels]", Eigen::bfloat16,
                   Eigen::half) {
  // The bf16 and fp16 fast paths (a shift; vcvtph2ps) against the element-wise convert:
  // widening is exact, so the copies must be bit-identical, specials and subnormals included.
  const Index T = 9, H = 3, D = 37;  // D not a multiple of 8: the scalar tail runs too
  Tensor<TestType> x(2, T, H, D);
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.f, 3.f);
  for (Index i = 0; i < x.size(); ++i) x[i] = TestType(normal(rng));
  const float specials[] = {0.f, -0.f, INFINITY, -INFINITY, 1e-6f, -3e-40f, 65504.f, 1e30f};
  for (int i = 0; i < 8; ++i) x[i * 5] = TestType(specials[i]);
  const auto v = View<const TestType>(x.view());
  for (Index b = 0; b < 2; ++b)
    for (Index h = 0; h < H; ++h) {
      RowMat<float> got = RowMat<float>::Constant(T, D + 3, NAN);
      copy_rows(v, b, 0, T, h, D, got.data(), got.cols());
      for (Index t = 0; t < T; ++t)
        for (Index i = 0; i < D; ++i) {
          const float want = convert<float>(v(b, t, h, i));
          INFO("b=" << b << " h=" << h << " t=" << t << " i=" << i);
          CHECK(std::memcmp(&got(t, i), &want, sizeof want) == 0);
        }
    }
}
