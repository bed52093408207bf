// gdr2 CUDA backend, backward — the host's emulation of a thread block's threads, one
// after another between barriers, for finding missing barriers without a GPU.
//
// The host execution of the kernel bodies (run_backward_host) normally lets one host
// thread stand for the whole block (`Blk{0, 1}`): every phase's writes then precede every
// later read whatever the barriers say, so a missing barrier cannot show. HostBlockThreads runs
// the block's `nthr` threads instead, each as a coroutine with its own stack: thread 0 up to
// its next barrier, then thread 1, …, then the next phase, in ascending or descending order
// of thread index. A read of another thread's write with no barrier between them then sees
// the old value in one of the two orders — deterministically. Asynchronous copies
// (copy_tile, copy_raw4) land at the issuing thread's next barrier, as cp.async's do under
// Blk::sync (`keep`: the newest committed group stays in flight), so a read of a copied tile
// before its barrier sees the old bytes too. The parts of the bodies that stand for the
// whole block on the host (host_tiles, row_sums, the applies' anchored sums) run on thread 0
// of their block or warp group.
//
// Every live thread must reach the same number of barriers: a barrier that only some threads
// reach (a hang or undefined behaviour on the device) is reported as an error.
#pragma once

#include <ucontext.h>

#include <cstddef>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace gdr2 {
namespace cuda {
namespace detail {
namespace bwd {

class HostBlockThreads {
 public:
  /// The emulation the calling (emulated) thread runs in; null outside one.
  static HostBlockThreads*& current() {
    static thread_local HostBlockThreads* h = nullptr;
    return h;
  }

  /// `nthr` threads per block, phases run in descending order of thread index if `descending`.
  HostBlockThreads(int nthr, bool descending) : descending_(descending), th_(std::size_t(nthr)) {
    for (Thread& t : th_) t.stack.reset(new char[kStack]);  // not touched: pages come on use
  }

  /// Runs body(tid) for every tid in [0, nthr), phase by phase. False (and error()) when the
  /// threads disagreed on the barriers.
  bool run(const std::function<void(int)>& body) {
    body_ = &body;
    HostBlockThreads* const outer = current();
    current() = this;
    for (std::size_t i = 0; i < th_.size(); ++i) {
      Thread& t = th_[i];
      t.done = false;
      t.barriers = 0;
      t.groups = 0;
      t.pending.clear();
      getcontext(&t.ctx);
      t.ctx.uc_stack.ss_sp = t.stack.get();
      t.ctx.uc_stack.ss_size = kStack;
      t.ctx.uc_link = &main_;
      makecontext(&t.ctx, reinterpret_cast<void (*)()>(&HostBlockThreads::entry), 0);
    }
    bool ok = true;
    for (int live = int(th_.size()); live > 0 && ok;) {
      live = 0;
      for (std::size_t k = 0; k < th_.size(); ++k) {
        cur_ = int(descending_ ? th_.size() - 1 - k : k);
        if (th_[cur_].done) continue;
        swapcontext(&main_, &th_[cur_].ctx);  // back at this thread's next barrier or end
        live += th_[cur_].done ? 0 : 1;
      }
      // every thread still running waits at the same barrier
      int expect = -1;
      for (std::size_t i = 0; i < th_.size() && ok; ++i) {
        if (th_[i].done) continue;
        if (expect < 0) expect = th_[i].barriers;
        if (th_[i].barriers != expect) {
          error_ = "thread " + std::to_string(i) + " is at barrier " + std::to_string(th_[i].barriers) +
                   " while another is at barrier " + std::to_string(expect);
          ok = false;
        }
      }
    }
    if (!ok) {  // the threads left in their coroutines are abandoned with their stacks
      for (Thread& t : th_) t.done = true;
    }
    current() = outer;
    return ok;
  }
  const std::string& error() const { return error_; }

  /// The calling thread's barrier (Blk::sync): its copies land (all, or all but the newest
  /// committed group when `keep`), then it waits for the other threads.
  void barrier(int keep) {
    Thread& t = th_[cur_];
    land(t, keep ? t.groups - 1 : t.groups + 1);
    ++t.barriers;
    swapcontext(&t.ctx, &main_);
  }
  /// An asynchronous copy of `bytes` from src to dst issued by the calling thread.
  void copy(void* dst, const void* src, std::size_t bytes) { th_[cur_].pending.push_back({dst, src, bytes, -1}); }
  /// The calling thread's copies issued since its last commit become one group.
  void commit() {
    Thread& t = th_[cur_];
    for (Copy& c : t.pending)
      if (c.group < 0) c.group = t.groups;
    ++t.groups;
  }

 private:
  static constexpr std::size_t kStack = std::size_t(1) << 18;
  struct Copy {
    void* dst;
    const void* src;
    std::size_t bytes;
    int group;  // -1: not committed yet
  };
  struct Thread {
    ucontext_t ctx;
    std::unique_ptr<char[]> stack;
    bool done = false;
    int barriers = 0, groups = 0;
    std::vector<Copy> pending;
  };

  /// Copies of committed groups below `below` land; `below` past every group: all of them,
  /// the uncommitted ones too (cp.async.wait_all commits them first).
  static void land(Thread& t, int below) {
    const bool all = below > t.groups;
    std::size_t kept = 0;
    for (Copy& c : t.pending) {
      if (all || (c.group >= 0 && c.group < below))
        std::memcpy(c.dst, c.src, c.bytes);
      else
        t.pending[kept++] = c;
    }
    t.pending.resize(kept);
  }
  static void entry() {
    HostBlockThreads* h = current();
    const int tid = h->cur_;
    (*h->body_)(tid);
    Thread& t = h->th_[tid];
    land(t, t.groups + 1);  // a thread's last copies land after it ends
    t.done = true;  // uc_link returns to run()
  }

  bool descending_;
  std::vector<Thread> th_;
  ucontext_t main_{};
  int cur_ = 0;
  const std::function<void(int)>* body_ = nullptr;
  std::string error_;
};

}  // namespace bwd
}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
