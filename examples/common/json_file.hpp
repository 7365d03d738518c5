#pragma once
/// \file
/// Reading a JSON document from a file, for the example programs (the controller and the
/// scheduler extender read their node and pod lists this way). Kept apart from kube.hpp, whose
/// functions are pure.

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "gpuslice/result.hpp"

namespace gpuslice::kube {

/// Reads and parses a JSON file; the error names the file. Thread-safe.
inline gpuslice::result<nlohmann::json> read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return gpuslice::make_error(gpuslice::errc::io_error, path + ": cannot open for reading");
  std::ostringstream text;
  text << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return gpuslice::make_error(gpuslice::errc::invalid_value, path + ": not valid JSON");
  }
  return j;
}

}  // namespace gpuslice::kube
