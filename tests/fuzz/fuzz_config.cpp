// Fuzzes the quantity grammar and the config parser: no input may crash, hang or produce an
// error message with a newline; every accepted byte count must round-trip through format_bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "gpuslice/config.hpp"
#include "gpuslice/quantity.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  if (auto b = gpuslice::parse_bytes(text)) {
    auto again = gpuslice::parse_bytes(gpuslice::format_bytes(*b));
    if (!again || *again != *b) std::abort();
  } else if (b.message().find('\n') != std::string::npos) {
    std::abort();
  }
  if (auto m = gpuslice::parse_memory_limit(text)) {
    if (m->type == gpuslice::memory_limit::kind::percent && m->percent > 100) std::abort();
  }
  if (auto p = gpuslice::parse_percent(text)) {
    if (*p > 100) std::abort();
  }
  // Split "NAME=VALUE" so the fuzzer also reaches the per-device suffix rules.
  const auto eq = text.find('=');
  if (eq != std::string::npos) {
    gpuslice::env_map env{{text.substr(0, eq), text.substr(eq + 1)}};
    auto c = gpuslice::parse_config(env);
    if (!c && c.message().find('\n') != std::string::npos) std::abort();
  }
  return 0;
}
