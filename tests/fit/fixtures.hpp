#pragma once
// Small builders for the fit tests: a GPU, a node of identical GPUs, requests, a cluster, an
// 8-GPU board's links.
#include <catch2/catch.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "gpuslice/fit/fit.hpp"
#include "gpuslice/fit/model.hpp"
#include "gpuslice/fit/topology.hpp"

namespace fixtures {

inline constexpr std::uint64_t k_gib = std::uint64_t{1} << 30;

inline gpuslice::fit::device gpu(std::string uuid, std::uint64_t mem_gib = 16,
                                 std::string type = "NVIDIA-Tesla V100", std::int32_t numa = 0) {
  gpuslice::fit::device d;
  d.uuid = std::move(uuid);
  d.type = std::move(type);
  d.memory_total = mem_gib * k_gib;
  d.numa = numa;
  return d;
}

inline gpuslice::fit::node node_of(std::string name, std::size_t gpus, std::uint64_t mem_gib = 16,
                                   std::string type = "NVIDIA-Tesla V100") {
  gpuslice::fit::node n;
  n.name = name;
  n.cpu_total = 64000;
  n.memory_total = 256 * k_gib;
  for (std::size_t i = 0; i < gpus; ++i) {
    auto d = gpu(name + "-gpu" + std::to_string(i), mem_gib, type);
    d.index = static_cast<std::uint32_t>(i);
    n.devices.push_back(d);
  }
  return n;
}

inline gpuslice::fit::container_request req(std::uint32_t count, std::uint64_t mem_gib,
                                            std::uint32_t cores_percent = 0) {
  gpuslice::fit::container_request r;
  r.count = count;
  r.memory = mem_gib * k_gib;
  r.cores_percent(cores_percent);
  return r;
}

inline gpuslice::fit::pod_request pod(std::vector<gpuslice::fit::container_request> cs) {
  return gpuslice::fit::pod_request{std::move(cs)};
}

/// The cluster of \p nodes; the test fails when they do not make one.
inline gpuslice::fit::cluster make_cluster(std::vector<gpuslice::fit::node> nodes) {
  auto c = gpuslice::fit::cluster::make(std::move(nodes));
  REQUIRE(c.ok());
  return std::move(c).value();
}

/// NVLink-like 8-GPU board: pairs (0-1, 2-3, ...) strongest, quads next, the rest weakest.
inline gpuslice::fit::link_matrix board8() {
  gpuslice::fit::link_matrix m(8);
  for (std::size_t a = 0; a < 8; ++a) {
    for (std::size_t b = a + 1; b < 8; ++b) {
      m.set(a, b, a / 2 == b / 2 ? 100 : a / 4 == b / 4 ? 50 : 10);
    }
  }
  return m;
}

}  // namespace fixtures
