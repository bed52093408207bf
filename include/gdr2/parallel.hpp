// gdr2 — executors: where the engines' independent work items run.
//
// The library never starts a thread on its own. An engine splits its work into
// items (a (sequence, head) pair, say) and hands them to the Executor in its
// Options: SerialExecutor (the default), ThreadPoolExecutor over an Eigen
// ThreadPool the caller owns, or FunctionExecutor over the caller's own
// parallel-for. Each executor runs `concurrency()` tasks; a task pulls items
// from a shared counter and gets a slot number in [0, concurrency) so that
// per-slot workspaces can be allocated once per call, not per item.
#pragma once

#include "tensor.hpp"

#include <atomic>
#include <functional>

#if !defined(GDR2_NO_THREADPOOL)
#include <unsupported/Eigen/CXX11/ThreadPool>
#endif

namespace gdr2 {

/// Runs `n` tasks, possibly concurrently, and returns when all have finished.
class Executor {
 public:
  virtual ~Executor() = default;
  /// How many tasks may run at once (≥ 1); engines size per-slot workspaces by it.
  virtual int concurrency() const = 0;
  /// Run task(0), ..., task(n-1) and wait for all of them. n ≤ concurrency().
  virtual void run_tasks(int n, const std::function<void(int)>& task) const = 0;
};

/// Runs everything on the calling thread.
class SerialExecutor final : public Executor {
 public:
  int concurrency() const override { return 1; }
  void run_tasks(int n, const std::function<void(int)>& task) const override {
    for (int i = 0; i < n; ++i) task(i);
  }
};

#if !defined(GDR2_NO_THREADPOOL)
/// Runs tasks on a caller-owned Eigen::ThreadPool (the calling thread takes one task).
class ThreadPoolExecutor final : public Executor {
 public:
  explicit ThreadPoolExecutor(Eigen::ThreadPoolInterface& pool) : pool_(&pool) {}
  int concurrency() const override { return pool_->NumThreads() + 1; }
  void run_tasks(int n, const std::function<void(int)>& task) const override {
    if (n <= 0) return;
    Eigen::Barrier done(static_cast<unsigned>(n - 1));
    for (int i = 1; i < n; ++i) {
      pool_->Schedule([&task, &done, i] {
        task(i);
        done.Notify();
      });
    }
    task(0);
    done.Wait();
  }

 private:
  Eigen::ThreadPoolInterface* pool_;
};
#endif

/// Adapts a caller's parallel-for: `pfor(n, body)` must call body(i) once for each
/// i in [0, n), on any threads, and return when all calls have returned.
class FunctionExecutor final : public Executor {
 public:
  using ParallelFor = std::function<void(int, const std::function<void(int)>&)>;
  FunctionExecutor(int concurrency, ParallelFor pfor) : concurrency_(concurrency < 1 ? 1 : concurrency), pfor_(std::move(pfor)) {}
  int concurrency() const override { return concurrency_; }
  void run_tasks(int n, const std::function<void(int)>& task) const override { pfor_(n, task); }

 private:
  int concurrency_;
  ParallelFor pfor_;
};

/// The executor used when Options carry none.
inline const Executor& default_executor() {
  static const SerialExecutor serial;
  return serial;
}

/// Call body(item, slot) for every item in [0, n), balancing items dynamically over
/// min(n, concurrency) tasks; `slot` identifies the task (for per-slot workspaces).
/// Every task ends with store_fence(), so bodies may write with stream_row.
template <class Body>
void parallel_for(const Executor& ex, Index n, Body&& body) {
  if (n <= 0) return;
  const int tasks = static_cast<int>(std::min<Index>(n, ex.concurrency()));
  if (tasks == 1) {
    for (Index i = 0; i < n; ++i) body(i, 0);
    store_fence();
    return;
  }
  std::atomic<Index> next{0};
  ex.run_tasks(tasks, [&](int slot) {
    for (Index i = next.fetch_add(1); i < n; i = next.fetch_add(1)) body(i, slot);
    store_fence();  // the body's non-temporal stores (stream_row) before the task ends
  });
}

}  // namespace gdr2
