// FLOP and byte counts of the benchmarked operations (SPEC §3), per call.
#pragma once

#include <gdr2/gdr2.hpp>

namespace gdr2::bench {

/// Geometry of a benchmarked call: total tokens (B·T or ΣT) and head/feature sizes.
struct Shape {
  Index tokens, Hk, Hv, K, V;
};

/// Chunkwise WY forward (SPEC §3) per value head and full chunk of C tokens:
///   T, Aqk Grams           C(C−1)/2·2K + C(C+1)/2·2K
///   [Y U] solve            C(C−1)/2·2(K+V)
///   R = U − Y S0           2CKV
///   O = Qγ S0 + Aqk R      2CKV + C(C+1)/2·2V
///   S_C = γ S0 + Ktailᵀ R  2CKV
inline double chunk_forward_flops(const Shape& s, Index C) {
  const double c = double(C), K = double(s.K), V = double(s.V);
  const double per_chunk = c * (c - 1) * K + c * (c + 1) * K + c * (c - 1) * (K + V) + 6 * c * K * V + c * (c + 1) * V;
  return per_chunk * double(s.tokens) / c * double(s.Hv);
}

/// Recurrent step: r = S̄ᵀe (2KV), S = a·S + k δᵀ (3KV), o = Sᵀq (2KV) per token and head.
inline double recurrent_forward_flops(const Shape& s) { return 7.0 * double(s.K * s.V) * double(s.tokens * s.Hv); }

/// Chunk backward (SPEC §4) per value head and full chunk, not counting the
/// recomputation of the forward quantities it needs:
///   the fourteen C×K×V products (dQγ, dS0 ×3, dR, dKtail, dY, ...)   14CKV
///   the C×C×(K or V) products (dAqk, dR, dA, dZ, dĒ, dK̄ ×2, dQγ)     C²(4V + 6K)
///   dT = −Aᵀ dA Aᵀ (two triangular products)                          2C³/3
inline double chunk_backward_flops(const Shape& s, Index C) {
  const double c = double(C), K = double(s.K), V = double(s.V);
  const double per_chunk = 14 * c * K * V + c * c * (4 * V + 6 * K) + 2.0 * c * c * c / 3.0;
  return per_chunk * double(s.tokens) / c * double(s.Hv);
}

/// BPTT per token and head (SPEC §2), not counting the recomputed forward step:
/// dS += q doᵀ, dq = S do, dk = dS δ, dδ = dSᵀk, dS̄ = dS + e drᵀ, de = S̄ dr,
/// dg = rowsum(dS̄ ⊙ S̄) (2KV each) and dS = Diag(a) dS̄ (KV).
inline double recurrent_backward_flops(const Shape& s) { return 15.0 * double(s.K * s.V) * double(s.tokens * s.Hv); }

/// Fewest bytes of a forward: every input read once, o written once, and the state
/// read and written once per sequence (fp32).
template <class Policy, class T>
double forward_bytes(const Shape& s, Index sequences) {
  const double e = sizeof(T), n = double(s.tokens);
  double bytes = 2 * n * double(s.Hk * s.K) * e            // q, k
                 + 2 * n * double(s.Hv * s.V) * e;         // v, o
  bytes += n * double(s.Hv * Policy::decay_width(s.K)) * sizeof(accum_t<T>);  // g
  bytes += n * double(s.Hv * (Policy::erase_width(s.K) + Policy::write_width(s.V) + Policy::beta_width())) * e;
  bytes += 2.0 * double(sequences * s.Hv * s.K * s.V) * sizeof(accum_t<T>);  // S0, S_T
  return bytes;
}

}  // namespace gdr2::bench
