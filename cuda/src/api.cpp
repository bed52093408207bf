// gdr2 CUDA backend — host side: validation (host memory only), planning, dispatch.
#include <gdr2/cuda/gdr2_cuda.hpp>

#include "backward_record.hpp"
#include "params.hpp"
#include "tile_maps.hpp"

#include <atomic>
#include <climits>
#include <string>
#include <type_traits>

namespace gdr2 {
namespace cuda {

int device_sm_count() {
  static std::atomic<int> cache[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
    (void)cudaGetLastError();
    return 0;
  }
  int n = cache[dev].load(std::memory_order_relaxed);
  if (n > 0) return n;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  cache[dev].store(n, std::memory_order_relaxed);
  return n;
}

namespace {

using detail::ForwardParams;

template <class T>
constexpr detail::DType dtype_of() {
  return std::is_same_v<T, Eigen::bfloat16> ? detail::DType::bf16 : detail::DType::f16;
}

template <class Policy>
constexpr bool policy_supported() {
  return (Policy::decay == Decay::channel && Policy::gates == Gates::channel) ||
         (Policy::decay == Decay::channel && Policy::gates == Gates::tied) ||
         (Policy::decay == Decay::scalar && Policy::gates == Gates::tied);
}

Status device_error(const char* what, cudaError_t e) {
  return {Code::device_error, std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")"};
}

/// 16-byte aligned rows: base pointer aligned, batch/token/head strides multiples of `mult` elements.
template <class X>
Status check_rows16(const char* name, const View<X>& v, Index mult) {
  if (!v.given()) return {};
  if (reinterpret_cast<std::uintptr_t>(v.data) % 16 != 0)
    return {Code::unsupported, std::string(name) + " must be 16-byte aligned for the CUDA engine"};
  for (int i = 0; i < 3; ++i) {
    if (v.stride[i] % mult != 0) {
      return {Code::unsupported, std::string(name) + " stride[" + std::to_string(i) + "] = " +
                                     std::to_string(v.stride[i]) + " must be a multiple of " + std::to_string(mult) +
                                     " elements (16-byte rows) for the CUDA engine"};
    }
  }
  return {};
}

Status check_fits_int(const Dims& d) {
  if (d.T > INT_MAX / 2 || d.B * d.Hv > INT_MAX / 2 || d.N > INT_MAX / 2)
    return {Code::unsupported, "sizes beyond 2^30 tokens / heads are not supported by the CUDA engine"};
  return {};
}

template <class Policy, class T>
void fill_inputs(const Problem<T>& p, const Dims& d, ForwardParams& f) {
  detail::fill_input_views(p, d, f);
  f.K = int(d.K);
  f.V = int(d.V);
}

struct Plan {
  ForwardParams f;
  detail::Path path = detail::Path::fused;
  std::size_t records_bytes = 0, offsets_bytes = 0, flags_bytes = 0, workspace_bytes = 0;
  std::size_t chunk_states_bytes = 0;  // ChunkOptions::chunk_states
  std::size_t backward_records_bytes = 0;  // ChunkOptions::backward_records
};

static_assert(detail::bwd::Rec<128>::floats == detail::bwd_rec_floats(128) &&
                  detail::bwd::Rec<64>::floats == detail::bwd_rec_floats(64),
              "the backward record's layout and its public size agree");

constexpr std::size_t align256(std::size_t x) { return (x + 255) / 256 * 256; }

template <class Policy, class T>
Status plan_forward(const Problem<T>& p, const Outputs<T, float>* out, const ChunkOptions& opt, Plan& plan) {
  if constexpr (!policy_supported<Policy>()) {
    return {Code::unsupported, std::string("the CUDA engine implements the gdr2, kda and gdn gate policies, not ") +
                                   Policy::name()};
  } else {
    Dims d;
    Options o;  // chunk size 64, no host-side scan of (device) data
    GDR2_RETURN_IF_ERROR(validate_problem<Policy>(p, o, /*chunked=*/true, d));
    if (out) GDR2_RETURN_IF_ERROR(validate_outputs(*out, d));
    if (d.K != d.V || (d.K != 64 && d.K != 128)) {
      return {Code::unsupported, "the CUDA engine supports K = V = 64 or 128, got K = " + std::to_string(d.K) +
                                     ", V = " + std::to_string(d.V)};
    }
    GDR2_RETURN_IF_ERROR(check_fits_int(d));
    GDR2_RETURN_IF_ERROR(check_rows16("q", p.q, 8));
    GDR2_RETURN_IF_ERROR(check_rows16("k", p.k, 8));
    GDR2_RETURN_IF_ERROR(check_rows16("v", p.v, 8));
    GDR2_RETURN_IF_ERROR(check_rows16("b", p.b, 8));
    GDR2_RETURN_IF_ERROR(check_rows16("w", p.w, 8));
    if (Policy::decay == Decay::channel) GDR2_RETURN_IF_ERROR(check_rows16("g", p.g, 4));
    if (out) GDR2_RETURN_IF_ERROR(check_rows16("o", out->o, 8));

    ForwardParams& f = plan.f;
    fill_inputs<Policy>(p, d, f);
    if (out) {
      f.o = out->o.data;
      f.so = detail::strides3(out->o);
      f.sT = out->final_state.data;
      for (int i = 0; i < 4; ++i) f.sT_stride[i] = out->final_state.stride[i];
    }
    f.s0 = p.initial_state.data;
    for (int i = 0; i < 4; ++i) f.s0_stride[i] = p.initial_state.stride[i];
    if (p.state_indices) f.state_pool = int(p.initial_state.shape[0]);

    // chunks
    const Index C = 64;
    long long total = 0;
    if (p.cu_seqlens.given()) {
      for (Index n = 0; n < d.N; ++n) total += (p.cu_seqlens[n + 1] - p.cu_seqlens[n] + C - 1) / C;
    } else {
      f.chunks_per_seq = int((d.T + C - 1) / C);
      total = (long long)d.N * f.chunks_per_seq;
    }
    f.total_chunks = total;
    plan.chunk_states_bytes = detail::chunk_states_bytes(total, d.Hv, d.K, d.V);
    plan.backward_records_bytes = detail::backward_records_bytes(total, d.Hv, int(d.K));
    const int sms = device_sm_count();
    f.num_sms = sms > 0 ? sms : 132;

    detail::Path path = opt.path == ForwardPath::fused   ? detail::Path::fused
                        : opt.path == ForwardPath::split ? detail::Path::split
                                                         : detail::Path::automatic;
    const long long heads = (long long)d.N * d.Hv;
    if (path == detail::Path::automatic)
      path = detail::forward_fused_automatic(heads, f.num_sms) ? detail::Path::fused : detail::Path::split;
    plan.path = path;
    if (path == detail::Path::split) {
      int vs = int(d.V);
      if (opt.value_slice != 0) {
        if (opt.value_slice != 16 && opt.value_slice != 32 && opt.value_slice != 64 && opt.value_slice != 128)
          return {Code::invalid_argument, "value_slice must be 0, 16, 32, 64 or 128, got " + std::to_string(opt.value_slice)};
        if (opt.value_slice > d.V)
          return {Code::invalid_argument, "value_slice " + std::to_string(opt.value_slice) + " exceeds V = " + std::to_string(d.V)};
        vs = opt.value_slice;
      } else if (opt.overlap && heads * 4 <= f.num_sms) {
        // overlapped: the narrowest slices that keep the state blocks within a quarter of
        // the SMs (measured, B=1 T=32768 H=16: 64 columns 1.40 ms, 128 columns 2.37 ms)
        while (vs > 16 && heads * (d.V / (vs / 2)) * 4 <= f.num_sms) vs /= 2;
      } else {
        while (vs > 16 && heads * (d.V / vs) < f.num_sms) vs /= 2;
      }
      f.vslice = vs;
      // overlap prep and state pass when the state blocks leave most SMs to the prep
      // (one block per SM: the state blocks must stay a small minority of the grid)
      const long long nstate = heads * (d.V / vs);
      f.overlap = (opt.overlap && nstate * 4 <= f.num_sms && sms > 0) ? 1 : 0;
      plan.records_bytes = align256(std::size_t(total) * std::size_t(d.Hv) *
                                    detail::record_bytes(int(d.K), Policy::gates == Gates::tied));
      plan.offsets_bytes = p.cu_seqlens.given() ? align256(std::size_t(d.N + 1) * 4) : 0;
    }
    plan.flags_bytes = f.overlap ? align256(std::size_t(total) * std::size_t(d.Hv) * 4) : 0;
    plan.workspace_bytes = plan.records_bytes + plan.offsets_bytes + plan.flags_bytes;
    return {};
  }
}

template <class Policy>
cudaError_t dispatch_forward(const ForwardParams& f, detail::DType dt, detail::Path path, cudaStream_t s) {
  if constexpr (Policy::decay == Decay::channel && Policy::gates == Gates::channel)
    return detail::launch_chunk_forward<0, 0>(f, dt, path, s);
  else if constexpr (Policy::decay == Decay::channel && Policy::gates == Gates::tied)
    return detail::launch_chunk_forward<0, 1>(f, dt, path, s);
  else
    return detail::launch_chunk_forward<1, 1>(f, dt, path, s);
}

template <class Policy>
cudaError_t dispatch_decode(const ForwardParams& f, detail::DType dt, cudaStream_t s) {
  if constexpr (Policy::decay == Decay::channel && Policy::gates == Gates::channel)
    return detail::launch_decode<0, 0>(f, dt, s);
  else if constexpr (Policy::decay == Decay::channel && Policy::gates == Gates::tied)
    return detail::launch_decode<0, 1>(f, dt, s);
  else
    return detail::launch_decode<1, 1>(f, dt, s);
}

}  // namespace

template <class Policy, class T>
Status chunk_forward_workspace_size(const Problem<T>& p, std::size_t& bytes, const ChunkOptions& opt) {
  Plan plan;
  GDR2_RETURN_IF_ERROR(plan_forward<Policy>(p, static_cast<const Outputs<T, float>*>(nullptr), opt, plan));
  bytes = plan.workspace_bytes;
  return {};
}

template <class Policy, class T>
Status chunk_states_size(const Problem<T>& p, std::size_t& bytes) {
  Plan plan;
  GDR2_RETURN_IF_ERROR(plan_forward<Policy>(p, static_cast<const Outputs<T, float>*>(nullptr), ChunkOptions{}, plan));
  bytes = plan.chunk_states_bytes;
  return {};
}

template <class Policy, class T>
Status backward_records_size(const Problem<T>& p, std::size_t& bytes) {
  Plan plan;
  GDR2_RETURN_IF_ERROR(plan_forward<Policy>(p, static_cast<const Outputs<T, float>*>(nullptr), ChunkOptions{}, plan));
  bytes = plan.backward_records_bytes;
  return {};
}

template <class Policy, class T>
Status chunk_forward(const Problem<T>& p, const Outputs<T, float>& out, const DeviceSequences& dev, void* workspace,
                     std::size_t workspace_bytes, cudaStream_t stream, const ChunkOptions& opt) {
  Plan plan;
  GDR2_RETURN_IF_ERROR(plan_forward<Policy>(p, &out, opt, plan));
  if (p.cu_seqlens.given() && !dev.cu_seqlens)
    return {Code::invalid_argument, "cu_seqlens given: its device copy (DeviceSequences::cu_seqlens) is required"};
  if (!p.cu_seqlens.given() && dev.cu_seqlens)
    return {Code::invalid_argument, "DeviceSequences::cu_seqlens given but Problem::cu_seqlens (host copy) is not"};
  if (p.state_indices && !dev.state_indices)
    return {Code::invalid_argument, "state_indices given: its device copy (DeviceSequences::state_indices) is required"};
  if (!p.state_indices && dev.state_indices)
    return {Code::invalid_argument, "DeviceSequences::state_indices given but Problem::state_indices (host copy) is not"};
  if (workspace_bytes < plan.workspace_bytes) {
    return {Code::invalid_argument, "workspace of " + std::to_string(workspace_bytes) + " bytes, " +
                                        std::to_string(plan.workspace_bytes) +
                                        " needed (chunk_forward_workspace_size)"};
  }
  if (plan.workspace_bytes > 0 && (!workspace || reinterpret_cast<std::uintptr_t>(workspace) % 256 != 0))
    return {Code::invalid_argument, "workspace must be a non-null, 256-byte aligned device pointer"};
  GDR2_RETURN_IF_ERROR(detail::check_chunk_states(opt.chunk_states, opt.chunk_states_bytes, plan.chunk_states_bytes));
  GDR2_RETURN_IF_ERROR(detail::check_backward_records(opt.backward_records, opt.backward_records_bytes,
                                                      plan.backward_records_bytes, opt.chunk_states != nullptr));
  ForwardParams& f = plan.f;
  f.chunk_states = opt.chunk_states;
  if (opt.backward_records) {
    // the fused kernel writes the records and sets the flag after them to 1; elsewhere the
    // flag says 0 and the backward fills the records itself
    int* written = reinterpret_cast<int*>(static_cast<char*>(opt.backward_records) + plan.backward_records_bytes - 256);
    if (plan.path == detail::Path::fused && f.K == 128 && !p.state_indices) {
      f.bwd_rec = static_cast<char*>(opt.backward_records);
      f.bwd_rec_written = written;
    } else if (const cudaError_t e = cudaMemsetAsync(written, 0, sizeof(int), stream); e != cudaSuccess) {
      return device_error("gdr2::cuda::chunk_forward", e);
    }
  }
  f.cu_seqlens = dev.cu_seqlens;
  f.cu_wide = p.cu_seqlens.wide ? 1 : 0;
  f.state_indices = dev.state_indices;
  if (plan.path == detail::Path::split) {
    f.records = workspace;
    if (plan.offsets_bytes)
      f.chunk_offsets = reinterpret_cast<const std::int32_t*>(static_cast<char*>(workspace) + plan.records_bytes);
    if (plan.flags_bytes)
      f.flags = reinterpret_cast<int*>(static_cast<char*>(workspace) + plan.records_bytes + plan.offsets_bytes);
  }
  const bool maps = opt.input_copy != InputCopy::cp_async;
  if (maps) detail::encode_input_maps(f, Policy::gates == Gates::channel, Policy::decay == Decay::channel);
  const cudaError_t e = dispatch_forward<Policy>(f, dtype_of<T>(), plan.path, stream);
  if (e != cudaSuccess) return device_error("gdr2::cuda::chunk_forward", e);
  return {};
}

template <class Policy, class T>
Status decode(const Problem<T>& p, const Outputs<T, float>& out, const std::int32_t* state_indices_device,
              cudaStream_t stream, int value_slice) {
  if constexpr (!policy_supported<Policy>()) {
    return {Code::unsupported, std::string("the CUDA engine implements the gdr2, kda and gdn gate policies, not ") +
                                   Policy::name()};
  } else {
    if (p.state_indices)
      return {Code::invalid_argument,
              "decode takes the state slots as a device array argument; leave Problem::state_indices unset"};
    if (p.cu_seqlens.given()) return {Code::unsupported, "decode takes [B, T, H, D] batches, not packed varlen"};
    if (!p.initial_state.given() || !out.final_state.given())
      return {Code::invalid_argument, "decode needs the state pool as initial_state and as final_state (may alias)"};
    Problem<T> q = p;
    q.initial_state = {};
    Dims d;
    GDR2_RETURN_IF_ERROR(validate_problem<Policy>(q, Options{}, /*chunked=*/false, d));
    if (d.K != d.V || (d.K != 64 && d.K != 128)) {
      return {Code::unsupported, "the CUDA engine supports K = V = 64 or 128, got K = " + std::to_string(d.K) +
                                     ", V = " + std::to_string(d.V)};
    }
    if (d.T > 64) return {Code::unsupported, "decode takes at most 64 tokens per call; use chunk_forward for prefill"};
    GDR2_RETURN_IF_ERROR(check_fits_int(d));
    const Index pool = p.initial_state.shape[0];
    GDR2_RETURN_IF_ERROR(gdr2::detail::check_view("initial_state", p.initial_state, {pool, d.Hv, d.K, d.V},
                                            "([P, Hv, K, V], the state pool)", false));
    GDR2_RETURN_IF_ERROR(gdr2::detail::check_view("final_state", out.final_state, {pool, d.Hv, d.K, d.V},
                                            "([P, Hv, K, V], the same pool size as initial_state)", false));
    if (pool < 1) return {Code::invalid_argument, "the state pool is empty"};
    if (!state_indices_device && pool < d.N)
      return {Code::invalid_argument, "without state indices the pool needs one slot per sequence: " +
                                          std::to_string(pool) + " < B = " + std::to_string(d.N)};
    if (!out.o.given()) return {Code::invalid_argument, "output o is required"};
    GDR2_RETURN_IF_ERROR(gdr2::detail::check_view("o", out.o, {d.B, d.T, d.Hv, d.V}, "([B, T, Hv, V], like v)"));
    if (value_slice != 0 && value_slice != 32 && value_slice != 128)
      return {Code::invalid_argument, "decode value_slice must be 0, 32 or 128, got " + std::to_string(value_slice)};
    if (value_slice == 128 && d.V != 128)
      return {Code::invalid_argument, "decode value_slice 128 needs V = 128"};
    if (d.T == 0) return {};
    ForwardParams f;
    fill_inputs<Policy>(p, d, f);
    f.o = out.o.data;
    f.so = detail::strides3(out.o);
    f.s0 = p.initial_state.data;
    f.sT = out.final_state.data;
    for (int i = 0; i < 4; ++i) {
      f.s0_stride[i] = p.initial_state.stride[i];
      f.sT_stride[i] = out.final_state.stride[i];
    }
    f.state_indices = state_indices_device;
    f.state_pool = int(pool);
    // automatic: whole-row blocks once there are enough sequence-heads to fill the GPU
    const int sms = device_sm_count() > 0 ? device_sm_count() : 132;
    f.vslice = value_slice != 0 ? value_slice : (d.V == 128 && d.N * d.Hv >= 4LL * sms ? 128 : 32);
    const cudaError_t e = dispatch_decode<Policy>(f, dtype_of<T>(), stream);
    if (e != cudaSuccess) return device_error("gdr2::cuda::decode", e);
    return {};
  }
}

#define GDR2_CUDA_API(POLICY, TYPE)                                                                            \
  template Status chunk_forward_workspace_size<POLICY, TYPE>(const Problem<TYPE>&, std::size_t&,                \
                                                            const ChunkOptions&);                              \
  template Status chunk_states_size<POLICY, TYPE>(const Problem<TYPE>&, std::size_t&);                         \
  template Status backward_records_size<POLICY, TYPE>(const Problem<TYPE>&, std::size_t&);                     \
  template Status chunk_forward<POLICY, TYPE>(const Problem<TYPE>&, const Outputs<TYPE, float>&,                \
                                              const DeviceSequences&, void*, std::size_t, cudaStream_t,          \
                                              const ChunkOptions&);                                            \
  template Status decode<POLICY, TYPE>(const Problem<TYPE>&, const Outputs<TYPE, float>&, const std::int32_t*, \
                                       cudaStream_t, int);
GDR2_CUDA_API(GDR2, Eigen::bfloat16)
GDR2_CUDA_API(GDR2, Eigen::half)
GDR2_CUDA_API(KDA, Eigen::bfloat16)
GDR2_CUDA_API(KDA, Eigen::half)
GDR2_CUDA_API(GDN, Eigen::bfloat16)
GDR2_CUDA_API(GDN, Eigen::half)
#undef GDR2_CUDA_API

}  // namespace cuda
}  // namespace gdr2
