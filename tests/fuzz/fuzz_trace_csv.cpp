// libFuzzer target: the openb CSV readers must return a value or one error line, never crash,
// and a workload built from whatever parses must validate or refuse cleanly.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "gpuslice/sim/trace_csv.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto pods = gpuslice::sim::parse_pods_csv(text, "fuzz.csv");
  auto nodes = gpuslice::sim::parse_nodes_csv(text, "fuzz.csv");
  if (!pods.ok() && pods.message().find('\n') != std::string::npos) __builtin_trap();
  if (!nodes.ok() && nodes.message().find('\n') != std::string::npos) __builtin_trap();
  if (pods.ok()) {
    std::vector<gpuslice::sim::trace_node> one = {{"n", 64000, 1 << 20, 8, "T4"}};
    auto w = gpuslice::sim::prepared_workload::make(one, *pods);
    if (w.ok() && w->pods().size() != pods->size()) __builtin_trap();
  }
  return 0;
}
