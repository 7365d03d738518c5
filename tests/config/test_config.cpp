#include "gpuslice/config.hpp"

#include <catch2/catch.hpp>

#include <string>

using gpuslice::env_map;
using gpuslice::memory_limit;
using gpuslice::parse_config;

namespace {
constexpr std::uint64_t MiB = 1024 * 1024, GiB = MiB * 1024;
}

TEST_CASE("an empty environment means no limits and HAMi's defaults", "[config]") {
  auto c = parse_config({});
  REQUIRE(c.ok());
  for (int i = 0; i < gpuslice::k_max_devices; ++i) {
    CHECK_FALSE(c->memory[static_cast<std::size_t>(i)].limited());
    CHECK_FALSE(c->sm_limited(i));
  }
  CHECK(c->policy == gpuslice::utilization_policy::default_policy);
  CHECK(c->priority == gpuslice::task_priority::low);
  CHECK_FALSE(c->oversubscribe);
  CHECK_FALSE(c->active_oom_killer);
  CHECK(c->shared_cache.empty());
  CHECK(c->node_region.empty());
  CHECK(c->log == gpuslice::log_level::warn);
}

TEST_CASE("every variable of the contract is parsed", "[config]") {
  env_map env{{"CUDA_DEVICE_MEMORY_LIMIT", "3000m"},
              {"CUDA_DEVICE_MEMORY_LIMIT_1", "2g"},
              {"CUDA_DEVICE_MEMORY_LIMIT_15", "25%"},
              {"CUDA_DEVICE_SM_LIMIT", "30"},
              {"CUDA_DEVICE_SM_LIMIT_2", "100"},
              {"CUDA_DEVICE_SM_LIMIT_3", "70%"},
              {"CUDA_DEVICE_MEMORY_SHARED_CACHE", "/tmp/vgpu/ledger"},
              {"GPU_CORE_UTILIZATION_POLICY", "FORCE"},
              {"CUDA_TASK_PRIORITY", "0"},
              {"CUDA_OVERSUBSCRIBE", "true"},
              {"ACTIVE_OOM_KILLER", "1"},
              {"LIBCUDA_LOG_LEVEL", "4"},
              {"GPUSLICE_NODE_REGION", "/var/run/gpuslice/node"},
              {"UNRELATED", "whatever"}};
  auto c = parse_config(env);
  REQUIRE(c.ok());
  CHECK(c->memory[0].bytes == 3000 * MiB);
  CHECK(c->memory[1].bytes == 2 * GiB);  // the per-device variable overrides the plain one
  CHECK(c->memory[2].bytes == 3000 * MiB);
  CHECK(c->memory[15].type == memory_limit::kind::percent);
  CHECK(c->memory[15].percent == 25);
  CHECK(c->sm_percent[0] == 30);
  CHECK(c->sm_percent[1] == 30);
  CHECK(c->sm_percent[2] == 0);  // 100 = no limit
  CHECK(c->sm_percent[3] == 70);
  CHECK(c->shared_cache == "/tmp/vgpu/ledger");
  CHECK(c->policy == gpuslice::utilization_policy::force);
  CHECK(c->priority == gpuslice::task_priority::high);
  CHECK(c->oversubscribe);
  CHECK(c->active_oom_killer);
  CHECK(c->log == gpuslice::log_level::trace);
  CHECK(c->node_region == "/var/run/gpuslice/node");
}

TEST_CASE("a per-device override applies without a plain variable", "[config]") {
  auto c = parse_config({{"CUDA_DEVICE_MEMORY_LIMIT_0", "1g"}});
  REQUIRE(c.ok());
  CHECK(c->memory[0].bytes == GiB);
  CHECK_FALSE(c->memory[1].limited());
}

TEST_CASE("GPUSLICE_LOG wins over LIBCUDA_LOG_LEVEL", "[config]") {
  auto c = parse_config({{"GPUSLICE_LOG", "debug"}, {"LIBCUDA_LOG_LEVEL", "0"}});
  REQUIRE(c.ok());
  CHECK(c->log == gpuslice::log_level::debug);
}

TEST_CASE("bad values fail closed with one line naming the variable and the value",
          "[config]") {
  struct row {
    const char* name;
    const char* value;
    const char* fragment;
  };
  const row rows[] = {
      {"CUDA_DEVICE_MEMORY_LIMIT", "3000MB", "ambiguous"},
      {"CUDA_DEVICE_MEMORY_LIMIT", "1.5.0g", "decimal point"},
      {"CUDA_DEVICE_MEMORY_LIMIT", "-1", "sign"},
      {"CUDA_DEVICE_MEMORY_LIMIT", "abc", "digit"},
      {"CUDA_DEVICE_MEMORY_LIMIT", "", "empty"},
      {"CUDA_DEVICE_MEMORY_LIMIT", "1 g", "whitespace"},
      {"CUDA_DEVICE_MEMORY_LIMIT", "99999999999999999999", "64 bits"},
      {"CUDA_DEVICE_MEMORY_LIMIT_3", "2x", "unknown unit"},
      {"CUDA_DEVICE_MEMORY_LIMIT_16", "1g", "index from 0 to 15"},
      {"CUDA_DEVICE_MEMORY_LIMIT_a", "1g", "index from 0 to 15"},
      {"CUDA_DEVICE_MEMORY_LIMIT_01", "1g", "index from 0 to 15"},
      {"CUDA_DEVICE_SM_LIMIT", "101", "0 to 100"},
      {"CUDA_DEVICE_SM_LIMIT", "-5", "sign"},
      {"CUDA_DEVICE_SM_LIMIT", "half", "0 to 100"},
      {"CUDA_DEVICE_SM_LIMIT_1", "30.5", "integer"},
      {"GPU_CORE_UTILIZATION_POLICY", "forced", "default, force or disable"},
      {"CUDA_TASK_PRIORITY", "2", "0 (high) or 1 (low)"},
      {"CUDA_OVERSUBSCRIBE", "maybe", "true or false"},
      {"ACTIVE_OOM_KILLER", "", "true or false"},
      {"LIBCUDA_LOG_LEVEL", "9", "0-4"},
      {"GPUSLICE_LOG", "loud", "0-4"},
      {"CUDA_DEVICE_MEMORY_SHARED_CACHE", "", "file path"},
      {"GPUSLICE_NODE_REGION", " /x", "file path"},
  };
  for (const auto& r : rows) {
    INFO(r.name << "=" << r.value);
    auto c = parse_config({{r.name, r.value}});
    REQUIRE_FALSE(c.ok());
    CHECK(c.code() == gpuslice::errc::invalid_value);
    CHECK_THAT(c.message(), Catch::StartsWith(r.name));
    CHECK_THAT(c.message(), Catch::Contains(r.fragment));
    CHECK(c.message().find('\n') == std::string::npos);
  }
}

TEST_CASE("the error quotes the offending value and the accepted forms", "[config]") {
  auto c = parse_config({{"CUDA_DEVICE_MEMORY_LIMIT", "3000MB"}});
  REQUIRE_FALSE(c.ok());
  CHECK(c.message() ==
        "CUDA_DEVICE_MEMORY_LIMIT=\"3000MB\": unit \"MB\" is ambiguous (use M, Mi or MiB for a "
        "power of 1024); expected " +
            std::string(gpuslice::k_memory_forms));
}

TEST_CASE("a long non-numeric device suffix is refused without arithmetic overflow",
          "[config]") {
  // Found by fuzz_config: the suffix used to be accumulated before it was validated.
  auto c = parse_config({{"CUDA_DEVICE_MEMORY_LIMIT_%4ACTIVe_O", "1g"}});
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(c.message(), Catch::Contains("index from 0 to 15"));
}
