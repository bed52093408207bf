// gdr2 decode server: a serving-style loop over a pool of recurrent states.
//
// Requests arrive over time, each with a prompt and a number of tokens to generate.
// The server holds a fixed pool of P state slots ([P, Hv, K, V] fp32) and a decode
// batch of L lanes (a fixed batch shape, as a CUDA graph would want). On arrival a
// request gets a free lane and a free slot; the slot is zeroed and its prompt is
// prefilled — all prompts that arrive in the same step together, as one packed
// varlen batch with cu_seqlens and state_indices into the pool. Every step then
// runs one decode_step over all L lanes: lanes without a request carry slot −1
// and are skipped. A finished request frees its lane and slot, and a later request
// reuses them.
//
// There is no language model here: each request's token inputs (q, k, v, gates)
// are a fixed random stream. At the end every request's outputs and final state
// are compared with one fp64 reference call over its whole stream.
//
//   ./decode_server
#include <gdr2/gdr2.hpp>

#include <cstdio>
#include <deque>
#include <vector>

using namespace gdr2;
using T = Eigen::bfloat16;  // activations in bf16, state and gates in fp32

namespace {

constexpr Index Hk = 2, Hv = 4, K = 32, V = 32;
constexpr Index kSlots = 3;  // state pool size P
constexpr Index kLanes = 4;  // decode batch size L (more lanes than slots: some always idle)

struct Request {
  int id;
  int arrival;  // step at which it arrives
  Index prompt, generate;
  RandomProblem<GDR2, T> tokens;  // its whole stream: prompt then generated tokens
  Tensor<float> o;                // outputs for every token, filled as they are computed
  Tensor<float> final_state;      // its state when it finished (copied out of the pool)
  Index done = 0;                 // tokens processed so far
  int lane = -1, slot = -1, finished_at = -1;
  std::vector<int> slots_used;

  Request(int id_, int arrival_, Index prompt_, Index generate_)
      : id(id_), arrival(arrival_), prompt(prompt_), generate(generate_), tokens(config(prompt_ + generate_, id_)) {
    o = tokens.make_output();
    final_state = Tensor<float>(1, Hv, K, V);
  }
  static ProblemConfig config(Index T_, int seed) {
    ProblemConfig c;
    c.B = 1, c.T = T_, c.Hk = Hk, c.Hv = Hv, c.K = K, c.V = V;
    c.initial_state = false;  // a new request starts from a zero state
    c.g_min = -1.0;
    c.seed = std::uint64_t(1000 + seed);
    return c;
  }
};

/// Copy `len` tokens starting at `src_t` of a [1, T, H, D] tensor into row
/// (dst_b, dst_t) onwards of another [B', T', H, D] tensor.
template <class X>
void copy_tokens(const Tensor<X>& src, Index src_t, Index len, Tensor<X>& dst, Index dst_b, Index dst_t) {
  if (src.empty()) return;
  const Index row = src.shape()[2] * src.shape()[3];
  const X* from = src.data() + src_t * row;
  X* to = dst.data() + (dst_b * dst.shape()[1] + dst_t) * row;
  std::copy(from, from + len * row, to);
}

/// Inputs of one engine call, gathered from several requests (a packed prefill
/// batch [1, ΣT, H, D] or the decode batch [L, 1, H, D]).
struct Batch {
  Tensor<T> q, k, v, b, w;
  Tensor<float> g;
  Batch(Index B, Index T_)
      : q(B, T_, Hk, K), k(B, T_, Hk, K), v(B, T_, Hv, V), b(B, T_, Hv, K), w(B, T_, Hv, V), g(B, T_, Hv, K) {}
  void gather(const Request& r, Index t0, Index len, Index dst_b, Index dst_t) {
    const auto& s = r.tokens;
    copy_tokens(s.q, t0, len, q, dst_b, dst_t);
    copy_tokens(s.k, t0, len, k, dst_b, dst_t);
    copy_tokens(s.v, t0, len, v, dst_b, dst_t);
    copy_tokens(s.b, t0, len, b, dst_b, dst_t);
    copy_tokens(s.w, t0, len, w, dst_b, dst_t);
    copy_tokens(s.g, t0, len, g, dst_b, dst_t);
  }
  Problem<T> problem() const {
    Problem<T> p;
    p.q = q.view(), p.k = k.view(), p.v = v.view(), p.b = b.view(), p.w = w.view(), p.g = g.view();
    return p;
  }
};

}  // namespace

int main() {
  // id, arrival step, prompt length, tokens to generate
  std::deque<Request> requests;
  const int plan[][4] = {{0, 0, 37, 6}, {1, 0, 5, 9}, {2, 1, 70, 3}, {3, 2, 12, 5},
                         {4, 4, 1, 8},  {5, 6, 23, 2}, {6, 6, 9, 4}};
  for (const auto& r : plan) requests.emplace_back(r[0], r[1], r[2], r[3]);

  std::printf("decode_server: GDR-2, %ld state slots, %ld decode lanes, Hk=%ld Hv=%ld K=%ld V=%ld, bf16 inputs, fp32 state\n",
              long(kSlots), long(kLanes), long(Hk), long(Hv), long(K), long(V));

  Tensor<float> pool(kSlots, Hv, K, V);
  std::vector<int> free_slots, free_lanes;
  for (int s = int(kSlots) - 1; s >= 0; --s) free_slots.push_back(s);  // LIFO: a freed slot is reused first
  for (int l = int(kLanes) - 1; l >= 0; --l) free_lanes.push_back(l);
  std::vector<Request*> lane_req(size_t(kLanes), nullptr);
  std::deque<Request*> waiting;
  std::vector<bool> slot_used_before(size_t(kSlots), false);
  size_t next_arrival = 0;
  int finished = 0;

  for (int step = 0; finished < int(requests.size()); ++step) {
    // 1. Arrivals wait in a queue; admit while a lane and a slot are free.
    while (next_arrival < requests.size() && requests[next_arrival].arrival <= step)
      waiting.push_back(&requests[next_arrival++]);
    std::vector<Request*> admitted;
    while (!waiting.empty() && !free_slots.empty() && !free_lanes.empty()) {
      Request* r = waiting.front();
      waiting.pop_front();
      r->slot = free_slots.back(), free_slots.pop_back();
      r->lane = free_lanes.back(), free_lanes.pop_back();
      r->slots_used.push_back(r->slot);
      lane_req[size_t(r->lane)] = r;
      admitted.push_back(r);
    }

    // 2. Prefill the admitted prompts together: one packed varlen call whose
    //    sequences read and write their own pool slots (zeroed first).
    if (!admitted.empty()) {
      std::vector<std::int32_t> cu{0}, slots;
      for (Request* r : admitted) cu.push_back(cu.back() + std::int32_t(r->prompt));
      Batch batch(1, cu.back());
      for (size_t i = 0; i < admitted.size(); ++i) {
        Request* r = admitted[i];
        batch.gather(*r, 0, r->prompt, 0, cu[i]);
        slots.push_back(r->slot);
        for (Index j = 0; j < Hv * K * V; ++j) pool[r->slot * Hv * K * V + j] = 0;
      }
      Problem<T> p = batch.problem();
      p.cu_seqlens = SeqOffsets(cu.data(), Index(cu.size()));
      p.state_indices = slots.data();
      p.initial_state = pool.view();
      Tensor<float> o(1, cu.back(), Hv, V);
      check(chunk_forward<GDR2>(p, Outputs<float, float>{o.view(), pool.view()}));
      std::printf("step %2d  prefill", step);
      for (size_t i = 0; i < admitted.size(); ++i) {
        Request* r = admitted[i];
        copy_tokens(o, cu[i], r->prompt, r->o, 0, 0);
        r->done = r->prompt;
        std::printf("  r%d (prompt %ld) -> lane %d, slot %d%s", r->id, long(r->prompt), r->lane, r->slot,
                    slot_used_before[size_t(r->slot)] ? " (reused)" : "");
        slot_used_before[size_t(r->slot)] = true;
      }
      std::printf("\n");
    }

    // 3. One decode step over the whole lane batch; idle lanes carry slot −1.
    Batch batch(kLanes, 1);
    std::vector<std::int32_t> slots(size_t(kLanes), -1);
    for (Index l = 0; l < kLanes; ++l) {
      Request* r = lane_req[size_t(l)];
      if (!r) continue;
      batch.gather(*r, r->done, 1, l, 0);
      slots[size_t(l)] = r->slot;
    }
    Tensor<float> o(kLanes, 1, Hv, V);
    check(decode_step<GDR2>(batch.problem(), pool.view(), slots.data(), o.view()));
    std::printf("step %2d  decode   lanes [", step);
    for (Index l = 0; l < kLanes; ++l) {
      Request* r = lane_req[size_t(l)];
      if (r) std::printf(" r%d@%d", r->id, r->slot);
      else std::printf("  -1 ");
    }
    std::printf(" ]");

    // 4. Collect outputs; finished requests free their lane and slot.
    for (Index l = 0; l < kLanes; ++l) {
      Request* r = lane_req[size_t(l)];
      if (!r) continue;
      copy_tokens(o, l, 1, r->o, 0, r->done);  // lane l's one token is row l of o
      if (++r->done == r->prompt + r->generate) {
        for (Index j = 0; j < Hv * K * V; ++j) r->final_state[j] = pool[r->slot * Hv * K * V + j];
        std::printf("  r%d done (slot %d free)", r->id, r->slot);
        free_slots.push_back(r->slot);
        free_lanes.push_back(r->lane);
        lane_req[size_t(l)] = nullptr;
        r->finished_at = step;
        ++finished;
      }
    }
    std::printf("\n");
  }

  // 5. Every request against one fp64 call over its whole stream.
  std::printf("\n  request  arrived  finished  prompt  generated  slot  rel. err o   rel. err S_T\n");
  bool all_ok = true;
  for (auto& r : requests) {
    const auto ref = reference_forward<GDR2>(r.tokens.problem());
    check(ref.status);
    const double eo = rel_error(r.o.view(), ref.o.view());
    const double es = rel_error(r.final_state.view(), ref.final_state.view());
    all_ok = all_ok && eo < 1e-5 && es < 1e-5;
    std::printf("  r%d       %2d       %2d        %3ld     %2ld         %d     %.2e     %.2e\n", r.id, r.arrival,
                r.finished_at, long(r.prompt), long(r.generate), r.slots_used[0], eo, es);
  }
  std::printf("\n  every request matches its one-shot fp64 reference (< 1e-5): %s\n", all_ok ? "yes" : "NO");
  return all_ok ? 0 : 1;
}
