// gdr2 — caller-owned scratch reused across calls.
//
// Engines need per-slot scratch (a K×V state copy, chunk-sized matrices) and, in the
// chunk-parallel schedule, per-chunk intermediates. Without a Workspace they
// allocate it once per call (never inside the per-token or per-chunk loops); with
// one in Options::workspace, repeated calls of the same shape — a decode loop, a
// training step — allocate nothing after the first. A Workspace may serve any mix
// of engines and shapes (it keeps one pool per scratch type and regrows a pool when
// the shape changes) but only one call at a time. `bytes()` says how much it holds.
#pragma once

#include "tensor.hpp"

#include <array>
#include <memory>
#include <typeindex>
#include <unordered_map>
#include <vector>

namespace gdr2 {

class Workspace {
 public:
  /// A pool of at least `count` scratch objects of type S built as S(dims...); the
  /// same objects are returned by later calls with the same type and dims.
  template <class S, class... Dims>
  std::vector<S>& pool(Index count, Dims... dims) {
    static_assert(sizeof...(Dims) <= 4, "at most 4 scratch dimensions");
    return grow<S>(count, pad({Index(dims)...}), dims...);
  }

  /// Bytes held by every pool (as reported by each scratch type's `bytes()`).
  std::size_t bytes() const {
    std::size_t b = 0;
    for (const auto& [type, p] : pools_) b += p->bytes();
    return b;
  }

 private:
  struct Base {
    virtual ~Base() = default;
    virtual std::size_t bytes() const = 0;
  };
  template <class S>
  struct Holder final : Base {
    std::array<Index, 4> key{};
    std::vector<S> items;
    std::size_t bytes() const override {
      std::size_t b = 0;
      for (const auto& s : items) b += s.bytes();
      return b;
    }
  };

  static std::array<Index, 4> pad(std::initializer_list<Index> d) {
    std::array<Index, 4> a{-1, -1, -1, -1};
    std::size_t i = 0;
    for (Index x : d) a[i++] = x;
    return a;
  }

  template <class S, class... Dims>
  std::vector<S>& grow(Index count, const std::array<Index, 4>& key, Dims... dims) {
    auto& base = pools_[std::type_index(typeid(S))];
    auto* h = dynamic_cast<Holder<S>*>(base.get());
    if (!h || h->key != key) {
      base = std::make_unique<Holder<S>>();
      h = static_cast<Holder<S>*>(base.get());
      h->key = key;
    }
    h->items.reserve(std::size_t(count));
    while (Index(h->items.size()) < count) h->items.emplace_back(dims...);
    return h->items;
  }

  std::unordered_map<std::type_index, std::unique_ptr<Base>> pools_;
};

}  // namespace gdr2
