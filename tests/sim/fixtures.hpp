#pragma once
// Small builders for the FGD policy tests (test_openb, test_openb_score, test_frag).
#include <cstdint>

#include "gpuslice/fit/openb.hpp"

namespace fixtures {

/// A pod asking for \p cpu milli-CPU, \p n GPUs of \p m milli-GPU each and \p mem MiB.
inline gpuslice::fit::openb_pod pod(std::int64_t cpu, int n, int m, std::int64_t mem = 0) {
  gpuslice::fit::openb_pod p;
  p.cpu = cpu;
  p.mem = mem;
  p.n = n;
  p.m = m;
  return p;
}

}  // namespace fixtures
