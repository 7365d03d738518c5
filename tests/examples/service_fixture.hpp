#pragma once
// The extender service over the sample cluster (examples/data): nodes gpu-a (4 x V100 32 GiB,
// GPU-a0 half used by a running pod), gpu-b (2 x T4 15 GiB) and cpu-c (no GPUs).
#include <memory>
#include <stdexcept>
#include <vector>

#include "extender.hpp"
#include "helpers.hpp"

namespace example_tests {

inline std::unique_ptr<gpuslice::extender::service> sample_service() {
  namespace kube = gpuslice::kube;
  const auto nodes = read_json(sample("nodes.json"));
  const auto pods = read_json(sample("pods.json"));
  std::vector<gpuslice::fit::node> parsed;
  for (const auto& n : *kube::items(nodes)) parsed.push_back(*kube::node_from_json(n));
  for (const auto& p : *kube::items(pods)) {
    if (!kube::charge_bound_pod(parsed, p)) throw std::runtime_error("sample pods do not charge");
  }
  auto s = gpuslice::extender::service::make(std::move(parsed), gpuslice::fit::hami_scorer{});
  if (!s) throw std::runtime_error(s.message());
  return std::move(*s);
}

}  // namespace example_tests
