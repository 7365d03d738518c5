#pragma once
// The openb GPU node list as a fit::cluster, half filled (GPU memory) with random fractional
// pods under HAMi's spread policy: the starting point bench_fit and bench_hami_frag measure
// decisions from, so their figures describe the same cluster.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gpuslice/fit/fit.hpp"
#include "openb_nodes.hpp"

namespace gpuslice_bench {

/// The rows of \p path as fit nodes: CPU and memory from the row, one device per GPU with the
/// model's memory, the first half of a node's GPUs on NUMA node 0 and the rest on 1. \p adjust,
/// when given, edits each node before it is kept (bench_fit gives 8-GPU nodes NVLink boards).
inline std::optional<std::vector<gpuslice::fit::node>> openb_fit_nodes(
    const std::string& path, const std::function<void(gpuslice::fit::node&)>& adjust = {}) {
  auto rows = read_openb_rows(path);
  if (!rows) return std::nullopt;
  std::vector<gpuslice::fit::node> nodes;
  for (const auto& row : *rows) {
    gpuslice::fit::node n;
    n.name = row.sn;
    n.cpu_total = row.cpu_milli;
    n.memory_total = row.memory_mib << 20;
    const auto count = row.gpus;
    for (unsigned long i = 0; i < count; ++i) {
      gpuslice::fit::device d;
      d.uuid = row.sn + "-gpu" + std::to_string(i);
      d.index = static_cast<std::uint32_t>(i);
      d.type = row.model;
      d.numa = static_cast<std::int32_t>(i * 2 / std::max<unsigned long>(count, 1));
      d.memory_total = model_memory(row.model);
      n.devices.push_back(d);
    }
    if (adjust) adjust(n);
    nodes.push_back(std::move(n));
  }
  return nodes;
}

/// \p nodes as a cluster with half its GPU memory taken by random single-GPU pods (1-12 GiB,
/// 10-50% cores, 1-8 CPUs) placed by HAMi's spread; deterministic for \p seed.
inline std::optional<gpuslice::fit::cluster> half_filled(std::vector<gpuslice::fit::node> nodes,
                                                         std::uint32_t seed) {
  using namespace gpuslice::fit;
  constexpr std::uint64_t k_gib = std::uint64_t{1} << 30;
  constexpr double k_prefill_fraction = 0.5;
  auto c = cluster::make(std::move(nodes));
  if (!c) return std::nullopt;
  std::mt19937 rng(seed);
  double total = 0, used = 0;
  for (const auto& n : c->nodes()) {
    for (const auto& d : n.devices) total += static_cast<double>(d.memory_total);
  }
  while (used < k_prefill_fraction * total) {
    container_request r;
    r.count = 1;
    r.memory = (1 + rng() % 12) * k_gib;
    r.cores_percent(10 * (1 + rng() % 5));
    r.cpu = 1000 * (1 + rng() % 8);
    auto d = c->fit(pod_request{{r}}, hami_scorer(hami_policy::spread, gpu_policy::spread));
    if (!d || !d->placed) break;
    (void)c->reserve(*d);
    used += static_cast<double>(r.memory);
  }
  return std::move(c).value();
}

}  // namespace gpuslice_bench
