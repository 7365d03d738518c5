#pragma once
// The openb GPU node list (Alibaba cluster-trace-gpu-v2023, openb_node_list_gpu_node.csv) as
// the benchmarks read it: its rows, the per-GPU memory assumed for each model, and the
// --nodes=PATH flag (or GPUSLICE_OPENB_NODES) that names the file, taken before the benchmarks
// run. Shared by bench_fit and bench_extender; each builds its own nodes from the rows.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace gpuslice_bench {

/// What a benchmark says when the node list cannot be read.
inline constexpr const char* k_openb_nodes_missing =
    "openb node list not found: pass --nodes=PATH or GPUSLICE_OPENB_NODES";

/// Per-GPU memory in bytes by the model names of the openb list (16 GiB for a name not listed).
/// G2 and G3 are anonymised in the trace; the sizes given to them are assumptions (stated in
/// bench/README.md).
inline std::uint64_t model_memory(const std::string& model) {
  constexpr std::uint64_t k_gib = std::uint64_t{1} << 30;
  static const std::map<std::string, std::uint64_t> k_gib_by_model = {
      {"P100", 16}, {"T4", 16}, {"V100M16", 16}, {"V100M32", 32},
      {"A10", 24},  {"G2", 32}, {"G3", 80}};
  auto it = k_gib_by_model.find(model);
  return (it == k_gib_by_model.end() ? 16 : it->second) * k_gib;
}

/// One row of the list: `sn,cpu_milli,memory_mib,gpu,model`.
struct openb_row {
  std::string sn;
  std::uint64_t cpu_milli = 0;
  std::uint64_t memory_mib = 0;
  unsigned long gpus = 0;
  std::string model;
};

/// The rows of the list at \p path, header skipped; a row with fewer than five fields is passed
/// over, and a field that is not a number throws (std::stoull). Nullopt when the file cannot be
/// opened.
inline std::optional<std::vector<openb_row>> read_openb_rows(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::string line;
  std::getline(in, line);  // sn,cpu_milli,memory_mib,gpu,model
  std::vector<openb_row> rows;
  while (std::getline(in, line)) {
    std::stringstream ss(line);
    std::string sn, cpu, mem, gpu, model;
    if (!std::getline(ss, sn, ',') || !std::getline(ss, cpu, ',') || !std::getline(ss, mem, ',') ||
        !std::getline(ss, gpu, ',') || !std::getline(ss, model, ',')) {
      continue;
    }
    rows.push_back(
        openb_row{std::move(sn), std::stoull(cpu), std::stoull(mem), std::stoul(gpu), model});
  }
  return rows;
}

/// Takes the node list's path from GPUSLICE_OPENB_NODES, then from any --nodes=PATH argument
/// (the last one wins), into \p nodes_path; then runs the registered benchmarks with the other
/// arguments.
inline void run_benchmarks(int argc, char** argv, std::string& nodes_path) {
  constexpr std::string_view k_flag = "--nodes=";
  std::vector<char*> rest;
  if (const char* env = std::getenv("GPUSLICE_OPENB_NODES")) nodes_path = env;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind(k_flag, 0) == 0) {
      nodes_path = a.substr(k_flag.size());
    } else {
      rest.push_back(argv[i]);
    }
  }
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}

}  // namespace gpuslice_bench
