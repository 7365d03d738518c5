#pragma once
// Shared by the example tests: the data directories and small readers.
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "kube.hpp"

namespace example_tests {

/// tests/examples/data: recorded kube-scheduler request bodies.
inline std::string data(const std::string& name) {
  return std::string(GPUSLICE_EXAMPLES_TEST_DATA) + "/" + name;
}
/// examples/data: the sample node and pod lists the examples ship.
inline std::string sample(const std::string& name) {
  return std::string(GPUSLICE_EXAMPLES_SAMPLE_DATA) + "/" + name;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline gpuslice::kube::json read_json(const std::string& path) {
  return gpuslice::kube::json::parse(read_file(path));
}

}  // namespace example_tests
