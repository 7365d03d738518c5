// The model's HAMi semantics: share resolution, type and uuid rules, validation.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "gpuslice/fit/model.hpp"

using namespace gpuslice::fit;
using fixtures::k_gib;

TEST_CASE("resolve: HAMi's per-device share rules", "[fit][model]") {
  struct row {
    const char* what;
    container_request r;
    std::uint64_t total;
    std::uint64_t memory;
    std::uint32_t cores;
    bool idle;
  };
  container_request pct;
  pct.count = 1;
  pct.memory_percent = 50;
  container_request bytes = fixtures::req(1, 4, 30);
  container_request bare;
  bare.count = 1;
  container_request cores_only;
  cores_only.count = 1;
  cores_only.cores_percent(25);
  container_request whole_cores = fixtures::req(1, 2, 100);
  container_request excl = fixtures::req(1, 2, 10);
  excl.exclusive = true;
  container_request odd_pct;
  odd_pct.count = 1;
  odd_pct.memory_percent = 33;
  const std::vector<row> rows = {
      {"percent of a 16 GiB card", pct, 16 * k_gib, 8 * k_gib, 0, false},
      {"percent of a 32 GiB card", pct, 32 * k_gib, 16 * k_gib, 0, false},
      {"percent rounds down to whole MiB", odd_pct, 10 * (1 << 20) + 5, 3 * (1 << 20), 0, false},
      {"bytes stay bytes", bytes, 16 * k_gib, 4 * k_gib, 300, false},
      {"bare request takes the whole card", bare, 16 * k_gib, 16 * k_gib, 1000, true},
      {"cores only: memory defaults to 100%", cores_only, 16 * k_gib, 16 * k_gib, 250, false},
      {"cores 100 means exclusive", whole_cores, 16 * k_gib, 2 * k_gib, 1000, true},
      {"exclusive takes the whole card", excl, 16 * k_gib, 16 * k_gib, 1000, true},
  };
  for (const auto& r : rows) {
    INFO(r.what);
    const share s = resolve(r.r, r.total, gpuslice::k_milli_per_gpu);
    CHECK(s.memory == r.memory);
    CHECK(s.cores == r.cores);
    CHECK(s.needs_idle == r.idle);
  }
}

TEST_CASE("milli-GPU and cores percent are one quantity", "[fit][model]") {
  container_request a;
  a.cores_percent(30);
  CHECK(a.cores == 300);
  CHECK(gpuslice::milli_to_cores(a.cores) == 30);
  container_request b;
  b.cores = 300;  // the trace's gpu_milli
  CHECK(resolve(a, k_gib, 1000).cores == resolve(b, k_gib, 1000).cores);
}

TEST_CASE("type rules: case-insensitive substrings, include and exclude", "[fit][model]") {
  struct row {
    std::vector<std::string> use, nouse;
    const char* type;
    bool ok;
  };
  const std::vector<row> rows = {
      {{}, {}, "NVIDIA-Tesla V100", true},
      {{"v100"}, {}, "NVIDIA-Tesla V100-PCIE-32GB", true},
      {{"A100"}, {}, "NVIDIA-Tesla V100", false},
      {{"A100", "tesla"}, {}, "NVIDIA-Tesla V100", true},
      {{}, {"v100"}, "NVIDIA-Tesla V100", false},
      {{}, {"T4"}, "NVIDIA-Tesla V100", true},
      {{"NVIDIA"}, {"v100"}, "NVIDIA-Tesla V100", false},
      {{""}, {}, "NVIDIA-Tesla V100", false},
      {{"V100-PCIE-32GB-LONGER"}, {}, "V100", false},
  };
  for (const auto& r : rows) {
    container_request c;
    c.use_types = r.use;
    c.nouse_types = r.nouse;
    INFO(r.type);
    CHECK(type_allowed(c, r.type) == r.ok);
  }
}

TEST_CASE("split_names reads annotation lists as HAMi does", "[fit][model]") {
  CHECK(split_names("A100, V100 ,,T4") == std::vector<std::string>{"A100", "V100", "T4"});
  CHECK(split_names("").empty());
  CHECK(split_names(" , ").empty());
  container_request c;
  c.use_types = split_names(" ");
  CHECK(type_allowed(c, "NVIDIA-A100"));  // an empty value is no constraint
}

TEST_CASE("uuid rules: exact matches", "[fit][model]") {
  container_request c;
  c.use_uuids = {"GPU-a", "GPU-b"};
  CHECK(uuid_allowed(c, "GPU-a"));
  CHECK_FALSE(uuid_allowed(c, "GPU-A"));
  CHECK_FALSE(uuid_allowed(c, "GPU-ab"));
  CHECK_FALSE(uuid_allowed(c, "GPU-c"));
  c.nouse_uuids = {"GPU-b"};
  CHECK_FALSE(uuid_allowed(c, "GPU-b"));
  container_request d;
  d.nouse_uuids = {"GPU-x"};
  CHECK(uuid_allowed(d, "GPU-y"));
  CHECK_FALSE(uuid_allowed(d, "GPU-x"));
}

TEST_CASE("validate(pod) names the container and the field", "[fit][model]") {
  struct row {
    container_request r;
    const char* fragment;
  };
  container_request pct;
  pct.count = 1;
  pct.memory_percent = 101;
  container_request zero;
  zero.memory = k_gib;
  const std::vector<row> rows = {{pct, "memory_percent 101"}, {zero, "GPU count of 0"}};
  for (const auto& r : rows) {
    pod_request p{{fixtures::req(1, 1), r.r}};
    auto e = validate(p);
    REQUIRE(e.has_value());
    CHECK_THAT(e->message, Catch::Contains("container 1: ") && Catch::Contains(r.fragment));
    CHECK(e->message.find('\n') == std::string::npos);
  }
  CHECK_FALSE(validate(fixtures::pod({fixtures::req(2, 4, 50)})).has_value());
  // HAMi accepts these: gpumem wins over a percentage, cores above 100 are clamped.
  container_request both = fixtures::req(1, 1);
  both.memory_percent = 10;
  container_request cores;
  cores.count = 1;
  cores.cores = 1001;
  CHECK_FALSE(validate(fixtures::pod({both, cores})).has_value());
}

TEST_CASE("validate(node) refuses inconsistent state", "[fit][model]") {
  auto n = fixtures::node_of("n", 2);
  CHECK_FALSE(validate(n).has_value());
  auto over = n;
  over.devices[1].memory_used = over.devices[1].memory_total + 1;
  CHECK_THAT(validate(over)->message, Catch::Contains("device 1"));
  auto dup = n;
  dup.devices[1].uuid = dup.devices[0].uuid;
  CHECK_THAT(validate(dup)->message, Catch::Contains("duplicate uuid"));
  auto links = n;
  links.links = link_matrix(3);
  CHECK_THAT(validate(links)->message, Catch::Contains("3 wide for 2 devices"));
  auto cpu = n;
  cpu.cpu_used = cpu.cpu_total + 1;
  CHECK(validate(cpu).has_value());
}

TEST_CASE("link_matrix is symmetric", "[fit][model]") {
  link_matrix m(3);
  m.set(0, 2, 7);
  CHECK(m.at(2, 0) == 7);
  CHECK(m.at(0, 2) == 7);
  CHECK(m.at(0, 1) == 0);
  CHECK(m.size() == 3);
  CHECK(link_matrix{}.empty());
}
