// gdr2 CUDA backend — the layout of the backward's chunk records, which the backward's prep
// writes (stage 1) and the fused forward writes when asked (ChunkOptions::backward_records):
// plain constants, shared by the kernels of both and the host code that sizes the buffers.
// Nothing here is public API.
#pragma once

namespace gdr2 {
namespace cuda {
namespace detail {
namespace bwd {

/// One chunk-head's fp32 record (floats, row-major; K = V = D, 64-token chunks): A and Aqk
/// [64][64], Y and U [64][D], Qγ and Ktail [64][D], γ_C [D]. With the fp16 record inside it
/// (rec16_in_record) the Qγ, Ktail, Y, γ_C and Aqk slots are not written (grad-1 reads the
/// fp16 record's), and the A slot's first 8 KB hold A as fp16 (A16: [64][64] swz128, zero
/// above the diagonal 16-blocks, as the fp16 record's Aqk). Where the fused forward wrote the
/// records (the flag after them is 1: BackwardParams::rec_written), U's slot holds R = U − Y S_c
/// instead, the chunk's R as the forward's state step formed and used it: Rᵀ as an fp16 [D][64]
/// swz128 image (R16: its first 16 KB; value v's 64 tokens are row v).
template <int D>
struct Rec {
  static constexpr long long C = 64;
  static constexpr long long A = 0, Aqk = C * C, Y = 2 * C * C, U = Y + C * D, Qg = U + C * D, Kt = Qg + C * D,
                             gC = Kt + C * D, floats = gC + D;
  static constexpr long long A16 = A;  // (floats; 2·C·C fp16 values)
  static constexpr long long R16 = U;  // (floats; D·C fp16 values)
};

/// The fp16 record of one chunk-head for the fp16 reverse pass (bytes): Qγ·2^{−f}, Ktail,
/// Y·2^{−f} as [64][D] fp16 swz128 tiles, Aqk [64][64] fp16 swz128 (zero above the
/// diagonal 16-blocks), γ_C·2^{−f} [D] fp32, then f (int32), where f = ⌊log2 max_d γ_0⌋
/// (≥ −126) of the chunk's largest first-token decay keeps every scaled value in fp16 range.
template <int D>
struct Rec16 {
  static constexpr int C = 64;
  static constexpr int tile = C * D * 2;
  static constexpr int qg = 0, kt = tile, y = 2 * tile, aqk = 3 * tile, gc = aqk + C * C * 2, f = gc + D * 4,
                       bytes = f + 16;
  /// in grad-1's workspace the records lie `stride` bytes apart, each on a 1024-byte boundary:
  /// the reverse pass's one bulk copy per record then starts on a 128-byte line (v58c)
  static constexpr int stride = (bytes + 1023) / 1024 * 1024;
  /// it also fits the fp32 record from its Qγ on (D = 128; not D = 64, by 16 bytes)
  static constexpr bool fits_record = bytes <= 4 * (Rec<D>::floats - Rec<D>::Qg);
};

}  // namespace bwd
}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
