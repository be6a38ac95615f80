// ParallelFor: work items spread over the calling thread and XLA:CPU's intra-op thread pool (FFI kernels).
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ablax {

// Runs fn(c) for c in [0, n) on the calling thread and the pool's; returns when all are done.
template <typename Fn>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, Fn fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  // Late workers may start after the caller returned: they hold the state, and find no chunk left before
  // touching fn (which lives on the caller's stack).
  auto work = [state, n, fnp = &fn] {
    for (int64_t c; (c = state->next.fetch_add(1)) < n;) {
      (*fnp)(c);
      if (state->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

}  // namespace ablax
