// gdr2 CUDA backend — the description of a problem's inputs that every kernel family
// reads (forward, decode, backward): device pointers, element strides and gate head
// counts of q, k, v, b, w, β and g, filled from a Problem by one function. Plain old
// data shared by host code and kernels; nothing here is public API.
#pragma once

namespace gdr2 {
namespace cuda {
namespace detail {

/// Element strides of a token-major activation [B, T, H, D] (the D stride is 1).
struct Strides3 {
  long long b = 0, t = 0, h = 0;
};

/// The inputs of a call: device pointers (16-bit or fp32 elements for q, k, v, b, w, β;
/// fp32 for g), their strides, the head count of each gate tensor (Hk or Hv), and the
/// problem's sizes (N sequences; `group` = Hv / Hk value heads per key head).
struct InputViews {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* b = nullptr;
  const void* w = nullptr;
  const void* beta = nullptr;
  const float* g = nullptr;
  Strides3 sq, sk, sv, sb, sw, sbeta, sg;
  int hg_g = 1, hg_b = 1, hg_w = 1, hg_beta = 1;
  int B = 0, T = 0, Hk = 0, Hv = 0, N = 0, group = 1;
  float scale = 1.f;
};

/// (batch, token, head) strides of a rank-4 view.
template <class View>
Strides3 strides3(const View& v) {
  return {v.stride[0], v.stride[1], v.stride[2]};
}

/// The InputViews of a gdr2::Problem whose views hold device memory, validated into `d`
/// (gdr2::Dims).
template <class Problem, class Dims>
void fill_input_views(const Problem& p, const Dims& d, InputViews& f) {
  f.q = p.q.data;
  f.k = p.k.data;
  f.v = p.v.data;
  f.b = p.b.data;
  f.w = p.w.data;
  f.beta = p.beta.data;
  f.g = p.g.data;
  f.sq = strides3(p.q);
  f.sk = strides3(p.k);
  f.sv = strides3(p.v);
  f.sb = strides3(p.b);
  f.sw = strides3(p.w);
  f.sbeta = strides3(p.beta);
  f.sg = strides3(p.g);
  f.hg_g = p.g.given() ? int(p.g.shape[2]) : 1;
  f.hg_b = p.b.given() ? int(p.b.shape[2]) : 1;
  f.hg_w = p.w.given() ? int(p.w.shape[2]) : 1;
  f.hg_beta = p.beta.given() ? int(p.beta.shape[2]) : 1;
  f.B = int(d.B);
  f.T = int(d.T);
  f.Hk = int(d.Hk);
  f.Hv = int(d.Hv);
  f.N = int(d.N);
  f.group = int(d.group);
  f.scale = float(d.scale);
}

}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
