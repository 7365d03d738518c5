// examples/dra-plugin/driver.hpp: the ResourceSlices within the API's limits, the reading of a
// claim's allocation, the CDI spec and the checkpoint.

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "driver.hpp"

namespace dra = gpuslice::dra;
using json = nlohmann::json;

namespace {

constexpr std::uint64_t k_gib = std::uint64_t{1} << 30;

dra::settings node_settings() {
  auto s = dra::parse_settings({"--node-name", "n1"}, nullptr);
  REQUIRE(s);
  return *s;
}

std::vector<dra::gpu> gpus(std::size_t n) {
  std::vector<dra::gpu> out;
  for (std::size_t i = 0; i < n; ++i) {
    dra::gpu g;
    g.name = "gpu-" + std::to_string(i);
    g.uuid = "GPU-" + std::to_string(i);
    g.product = "A100";
    g.index = static_cast<unsigned>(i);
    g.memory_total = 16 * k_gib;
    out.push_back(g);
  }
  return out;
}

/// A claim allocated by the scheduler: one result of \p driver on gpu-0 of n1.
json claim(const std::string& uid, json result) {
  return {{"metadata", {{"name", "c1"}, {"namespace", "default"}, {"uid", uid}}},
          {"status", {{"allocation", {{"devices", {{"results", json::array({result})}}}}}}}};
}

json share_result(json consumed) {
  return {{"request", "gpu"},
          {"driver", "gpu.gpuslice.dev"},
          {"pool", "n1"},
          {"device", "gpu-0"},
          {"shareID", "7c1a-share"},
          {"consumedCapacity", std::move(consumed)}};
}

}  // namespace

TEST_CASE("a node's devices fill slices of at most 128, all in one pool") {
  const auto s = node_settings();
  const auto slices = dra::resource_slices(gpus(300), s, "550.54.15", 4, nullptr);
  REQUIRE(slices.size() == 3);
  std::size_t total = 0;
  for (const auto& sl : slices) {
    const auto& spec = sl["spec"];
    CHECK(spec["devices"].size() <= dra::k_max_devices_per_slice);
    CHECK(spec["pool"] == json{{"name", "n1"}, {"generation", 4}, {"resourceSliceCount", 3}});
    total += spec["devices"].size();
  }
  CHECK(total == 300);
  CHECK(slices[2]["metadata"]["name"] == "n1-gpu.gpuslice.dev-2");
  // no device: one empty slice says the pool is empty
  const auto none = dra::resource_slices({}, s, "", 1, nullptr);
  REQUIRE(none.size() == 1);
  CHECK(none[0]["spec"]["devices"].empty());
}

TEST_CASE("a device's attributes and capacities stay within the API's limit") {
  auto s = node_settings();
  auto g = gpus(1)[0];
  g.compute_capability = "8.0";
  g.parent_uuid = "GPU-p";
  g.profile = "1g.5gb";
  const json d = dra::slice_device(g, s, "550.54.15");
  CHECK(d["attributes"].size() + d["capacity"].size() <= dra::k_max_attributes_and_capacities);
  CHECK(d["attributes"]["driverVersion"] == json{{"version", "550.54.15"}});
  CHECK(d["attributes"]["cudaComputeCapability"] == json{{"version", "8.0.0"}});
  CHECK(d["allowMultipleAllocations"] == true);
  // memory scaled by 1.5 and rounded down to the step; cores scaled to 200%
  s.memory_scaling = 1.5;
  s.core_scaling = 2;
  s.memory_step = 3 * (std::int64_t{1} << 20);
  const json scaled = dra::slice_device(gpus(1)[0], s, "r580");
  const std::int64_t mem = std::stoll(scaled["capacity"]["memory"]["value"].get<std::string>());
  CHECK(mem % s.memory_step == 0);
  CHECK(mem <= static_cast<std::int64_t>(24 * k_gib));
  CHECK(mem > static_cast<std::int64_t>(24 * k_gib) - s.memory_step);
  CHECK(scaled["capacity"]["cores"]["value"] == "200");
  CHECK(scaled["attributes"]["driverVersion"] == json{{"string", "r580"}});
}

TEST_CASE("semantic versions of dotted numbers") {
  CHECK(dra::semver_of("535.104") == "535.104.0");
  CHECK(dra::semver_of("08.0") == "8.0.0");
  CHECK_FALSE(dra::semver_of("580.00.fake"));
  CHECK_FALSE(dra::semver_of("1.2.3.4"));
  CHECK_FALSE(dra::semver_of(""));
}

TEST_CASE("a share's consumed capacity becomes the shim's limits") {
  const auto s = node_settings();
  const auto g = gpus(1);
  const dra::claim_ref ref{"default", "u1", "c1"};
  auto got = dra::claim_shares(claim("u1", share_result({{"memory", "3000Mi"}, {"cores", "30"}})),
                               ref, g, s);
  REQUIRE(std::holds_alternative<std::vector<dra::share>>(got));
  const auto& sh = std::get<std::vector<dra::share>>(got).at(0);
  CHECK(sh.memory_mib == 3000);
  CHECK(sh.cores == 30);
  CHECK(dra::cdi_id(s, "u1", sh) == "gpu.gpuslice.dev/gpu=u1-7c1a-share");

  SECTION("an exclusive allocation (no shareID, no consumedCapacity) is the whole GPU") {
    json r = share_result({});
    r.erase("shareID");
    r.erase("consumedCapacity");
    auto whole = dra::claim_shares(claim("u1", r), ref, g, s);
    REQUIRE(std::holds_alternative<std::vector<dra::share>>(whole));
    CHECK(std::get<std::vector<dra::share>>(whole)[0].memory_mib == 16 * 1024);
    CHECK(std::get<std::vector<dra::share>>(whole)[0].cores == 0);
    CHECK(dra::cdi_name("u1", std::get<std::vector<dra::share>>(whole)[0]) == "u1-gpu-0");
  }
  SECTION("a share without consumedCapacity fails closed") {
    json r = share_result({});
    r.erase("consumedCapacity");
    auto e = dra::claim_shares(claim("u1", r), ref, g, s);
    REQUIRE(std::holds_alternative<std::string>(e));
    CHECK_THAT(std::get<std::string>(e), Catch::Contains("no consumedCapacity"));
  }
  SECTION("under 1 MiB, a pool of another node, an unknown device, another uid") {
    auto tiny = dra::claim_shares(claim("u1", share_result({{"memory", "1Ki"}, {"cores", "1"}})),
                                  ref, g, s);
    CHECK_THAT(std::get<std::string>(tiny), Catch::Contains("under 1 MiB"));
    json other = share_result({{"memory", "1Gi"}, {"cores", "1"}});
    other["pool"] = "n2";
    CHECK_THAT(std::get<std::string>(dra::claim_shares(claim("u1", other), ref, g, s)),
               Catch::Contains("pool \"n2\" is not this node's"));
    other["pool"] = "n1";
    other["device"] = "gpu-9";
    CHECK_THAT(std::get<std::string>(dra::claim_shares(claim("u1", other), ref, g, s)),
               Catch::Contains("device \"gpu-9\" is not a device of node n1"));
    CHECK_THAT(std::get<std::string>(dra::claim_shares(claim("u2", other), ref, g, s)),
               Catch::Contains("deleted and created again"));
    auto sick = g;
    sick[0].healthy = false;
    sick[0].why_unhealthy = "XID 79";
    CHECK_THAT(std::get<std::string>(dra::claim_shares(
                   claim("u1", share_result({{"memory", "1Gi"}, {"cores", "1"}})), ref, sick, s)),
               Catch::Contains("device gpu-0 (GPU-0) is unhealthy (XID 79)"));
  }
}

TEST_CASE("the CDI spec carries the environment contract and one device per share") {
  const auto s = node_settings();
  dra::prepared_claim c;
  c.ref = {"default", "u1", "c1"};
  c.shares = {{"gpu", "n1", "gpu-0", "s-a", "GPU-0", 3000, 30},
              {"gpu", "n1", "gpu-1", "s-b", "GPU-1", 1024, 0}};
  c.cdi_spec = dra::cdi_spec_path(s, "u1");
  c.ledger_dir = dra::ledger_dir(s, "u1");
  const json spec = dra::cdi_spec(c, s);
  CHECK(spec["kind"] == "gpu.gpuslice.dev/gpu");
  REQUIRE(spec["devices"].size() == 2);
  CHECK(spec["devices"][1]["name"] == "u1-s-b");
  const auto& env = spec["devices"][0]["containerEdits"]["env"];
  for (const char* want :
       {"CUDA_DEVICE_MEMORY_LIMIT_0=3000m", "CUDA_DEVICE_SM_LIMIT_0=30",
        "CUDA_DEVICE_MEMORY_LIMIT_1=1024m", "CUDA_DEVICE_SM_LIMIT_1=0",
        "NVIDIA_VISIBLE_DEVICES=GPU-0,GPU-1",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE=/usr/local/vgpu/cache/gpuslice.cache"}) {
    CHECK(std::find(env.begin(), env.end(), want) != env.end());
  }
  CHECK(spec["devices"][0]["containerEdits"] == spec["devices"][1]["containerEdits"]);
}

TEST_CASE("the checkpoint reads back, and a foreign one is refused") {
  const auto s = node_settings();
  dra::checkpoint cp;
  dra::prepared_claim c;
  c.ref = {"default", "u1", "c1"};
  c.shares = {{"gpu", "n1", "gpu-0", "s-a", "GPU-0", 3000, 30}};
  c.cdi_spec = "/var/run/cdi/x.json";
  c.ledger_dir = "/usr/local/vgpu/containers/u1_claim";
  cp["u1"] = c;
  const std::string text = dra::encode_checkpoint(cp, s);
  auto back = dra::decode_checkpoint(text, "cp.json", s);
  REQUIRE(back);
  REQUIRE(back->count("u1") == 1);
  CHECK(back->at("u1").shares.at(0).memory_mib == 3000);
  CHECK(back->at("u1").ledger_dir == c.ledger_dir);

  auto other = node_settings();
  other.node_name = "n2";
  auto foreign = dra::decode_checkpoint(text, "cp.json", other);
  REQUIRE_FALSE(foreign);
  CHECK_THAT(foreign.message(), Catch::Contains("checkpoint cp.json: written for driver"));
  CHECK_FALSE(dra::decode_checkpoint("{\"version\": 1", "cp.json", s));
}

TEST_CASE("flags: bad values are one line naming the flag") {
  auto r = dra::parse_settings({"--node-name", "n1", "--mig-strategy", "single"}, nullptr);
  REQUIRE_FALSE(r);
  CHECK(r.message() == "--mig-strategy \"single\": expected none or mixed");
  CHECK_FALSE(dra::parse_settings({}, nullptr));
  auto env = dra::parse_settings({}, "node-from-env");
  REQUIRE(env);
  CHECK(env->plugin_dir == "/var/lib/kubelet/plugins/gpu.gpuslice.dev");
}
