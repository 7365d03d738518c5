// HAMi's device Fit, request and scoring rules, as tables: each row is a behaviour of HAMi's
// scheduler (pkg/device/nvidia Fit and GenerateResourceRequests, pkg/device CollapseInit-
// ContainerUsage, pkg/util ParseDeviceScoringWeights, pkg/scheduler/policy) restated as a device,
// a request and what HAMi decides. See docs/hami-compatibility.md.
#include <catch2/catch.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "fixtures.hpp"
#include "gpuslice/fit/codec.hpp"
#include "gpuslice/fit/fit.hpp"
#include "gpuslice/fit/hami_score.hpp"

using namespace gpuslice::fit;

namespace {

constexpr std::uint64_t k_mib = std::uint64_t{1} << 20;

/// HAMi's DeviceUsage in its units: MiB and cores percent.
device card(std::string uuid, std::uint64_t total_mib, std::uint32_t used, std::uint32_t count,
            std::uint64_t used_mib = 0, std::uint32_t used_cores = 0) {
  device d;
  d.uuid = std::move(uuid);
  d.type = "NVIDIA-A100";
  d.memory_total = total_mib * k_mib;
  d.memory_used = used_mib * k_mib;
  d.slots_total = count;
  d.slots_used = used;
  d.cores_used = gpuslice::cores_to_milli(used_cores);
  return d;
}

/// HAMi's ContainerDeviceRequest: Nums, Memreq (MiB), MemPercentagereq, Coresreq (percent).
container_request hami_request(std::uint32_t nums, std::uint64_t mem_mib, std::uint32_t pct,
                               std::uint32_t cores) {
  container_request r;
  r.count = nums;
  r.memory = mem_mib * k_mib;
  r.memory_percent = pct;
  r.cores = cores * (gpuslice::k_milli_per_gpu / gpuslice::k_cores_per_gpu);
  return r;
}

node one_node(std::vector<device> devices) {
  node n;
  n.name = "n";
  n.cpu_total = 1000;
  n.memory_total = 1 << 30;
  for (std::uint32_t i = 0; i < devices.size(); ++i) devices[i].index = i;
  n.devices = std::move(devices);
  return n;
}

}  // namespace

TEST_CASE("HAMi's Fit table: one card, one request, the reason", "[fit][hami]") {
  struct row {
    const char* hami_case;
    device dev;
    container_request req;
    bool fits;
    reason why;
  };
  container_request mutex = hami_request(1, 512, 0, 10);
  mutex.idle_only = true;
  container_request mode = hami_request(1, 512, 0, 10);
  mode.modes = "mig";
  container_request mode_ok = hami_request(1, 512, 0, 10);
  mode_ok.modes = "mps,hami-core";
  container_request both = hami_request(1, 512, 90, 10);
  device cordoned = card("dev-0", 1280, 0, 100);
  cordoned.cordoned = true;
  device unhealthy = card("dev-0", 1280, 0, 100);
  unhealthy.healthy = false;
  const std::vector<row> rows = {
      {"fit success", card("dev-0", 1280, 0, 100), hami_request(1, 512, 0, 50), true, {}},
      {"fit fail: memory not enough", card("dev-0", 1280, 0, 100, 1000),
       hami_request(1, 512, 0, 50), false, reason::insufficient_memory},
      {"fit fail: core not enough", card("dev-0", 1280, 1, 100, 0, 60), hami_request(1, 512, 0, 50),
       false, reason::insufficient_cores},
      {"fit fail: card overused (Used == Count)", card("dev-0", 1280, 100, 100),
       hami_request(1, 512, 0, 50), false, reason::slots_exhausted},
      {"fit success: but core limit can't exceed 100 (120 clamped)",
       card("dev-0", 1280, 0, 100),
       hami_request(1, 512, 0, 120),
       true,
       {}},
      {"cores 120 clamped to 100 is exclusive: a used card refuses it",
       card("dev-0", 1280, 20, 100), hami_request(1, 512, 0, 120), false,
       reason::exclusive_conflict},
      {"fit fail: card exclusively (cores 100 on a used card)", card("dev-0", 1280, 20, 100),
       hami_request(1, 512, 0, 100), false, reason::exclusive_conflict},
      {"fit fail: CardComputeUnitsExhausted (cores 0 on a full-compute card)",
       card("dev-0", 1280, 1, 100, 0, 100), hami_request(1, 512, 0, 0), false,
       reason::compute_exhausted},
      {"fit success: memory percentage",
       card("dev-0", 1280, 0, 100),
       hami_request(1, 0, 50, 10),
       true,
       {}},
      {"fit fail: CardNotHealth", unhealthy, hami_request(1, 512, 0, 10), false, reason::unhealthy},
      {"device cordon: hami.io/device-cordon lists the card", cordoned, hami_request(1, 512, 0, 10),
       false, reason::cordoned},
      {"mutex policy: a card with any task is refused", card("dev-0", 1280, 1, 100), mutex, false,
       reason::exclusive_conflict},
      {"mutex policy: an idle card is taken", card("dev-0", 1280, 0, 100), mutex, true, {}},
      {"vgpu-mode: the card's mode must be named", card("dev-0", 1280, 0, 100), mode, false,
       reason::type_mismatch},
      {"vgpu-mode: a list naming hami-core admits it",
       card("dev-0", 1280, 0, 100),
       mode_ok,
       true,
       {}},
      {"gpumem and gpumem-percentage together: gpumem wins (512 of 1280 fits beside 700)",
       card("dev-0", 1280, 1, 100, 700),
       both,
       true,
       {}},
  };
  for (const auto& r : rows) {
    INFO(r.hami_case);
    auto c = fixtures::make_cluster({one_node({r.dev})});
    fit_options opt;
    opt.report_nodes = true;
    auto d = c.fit(fixtures::pod({r.req}), hami_scorer{}, opt);
    REQUIRE(d.ok());
    CHECK(d->placed == r.fits);
    if (!r.fits) CHECK(d->nodes[0].reasons[r.why] == 1);
  }
}

TEST_CASE("HAMi's request rules resolve to the same share", "[fit][hami]") {
  struct row {
    const char* hami_case;
    container_request req;
    std::uint64_t total_mib;
    std::uint64_t memory_mib;
    std::uint32_t cores_milli;
    bool idle;
  };
  const std::vector<row> rows = {
      {"gpu count only: 100% memory, the whole card", hami_request(1, 0, 0, 0), 1001, 1001, 1000,
       true},
      {"gpu count + memory percentage: floor(MiB * pct / 100)", hami_request(1, 0, 50, 0), 1001,
       500, 0, false},
      {"memory percentage 33 of 32768 MiB", hami_request(1, 0, 33, 10), 32768, 10813, 100, false},
      {"memory percentage above 100 clamped to 100", hami_request(1, 0, 150, 10), 1001, 1001, 100,
       false},
      {"gpumem and percentage: gpumem wins", hami_request(1, 3000, 50, 10), 16384, 3000, 100,
       false},
      {"cores above 100 clamped to 100: exclusive", hami_request(1, 512, 0, 250), 1280, 512, 1000,
       true},
  };
  for (const auto& r : rows) {
    INFO(r.hami_case);
    const share s = resolve(r.req, r.total_mib * k_mib, gpuslice::k_milli_per_gpu);
    CHECK(s.memory == r.memory_mib * k_mib);
    CHECK(s.cores == r.cores_milli);
    CHECK(s.needs_idle == r.idle);
  }
}

TEST_CASE("two 50% pods on a 1001 MiB card are written as 500 MiB and read back", "[fit][hami]") {
  auto c = fixtures::make_cluster({one_node({card("GPU-a", 1001, 0, 10)})});
  std::vector<std::string> annotations;
  for (int i = 0; i < 2; ++i) {
    auto d = c.fit(fixtures::pod({hami_request(1, 0, 50, 10)}));
    REQUIRE(d.ok());
    REQUIRE(d->placed);
    REQUIRE(c.reserve(*d).ok());
    auto text = encode_pod_devices(to_annotation(c.nodes()[0], d->containers));
    REQUIRE(text.ok());
    annotations.push_back(*text);
  }
  CHECK(annotations[0] == "GPU-a,NVIDIA,500,10:;");
  // After a restart: the annotations charged back onto the registered card fit within it.
  std::uint64_t charged = 0;
  for (const auto& a : annotations) {
    auto pod = decode_pod_devices(a);
    REQUIRE(pod.ok());
    charged += (*pod)[0][0].memory_mib;
  }
  CHECK(charged <= 1001);
  CHECK(c.nodes()[0].devices[0].memory_used == 1000 * k_mib);
}

TEST_CASE("init containers: HAMi counts per card the larger of init peak and app sum",
          "[fit][hami]") {
  // One 16 GiB card. Init 12 GiB, then two apps of 8 GiB and 6 GiB: each phase fits alone,
  // their sum (26 GiB) does not.
  auto n = one_node({card("GPU-a", 16384, 0, 10)});
  auto c = fixtures::make_cluster({n});
  container_request init = hami_request(1, 12 * 1024, 0, 30);
  init.init = true;
  container_request init2 = hami_request(1, 10 * 1024, 0, 60);
  init2.init = true;
  const pod_request pod{
      {init, init2, hami_request(1, 8 * 1024, 0, 20), hami_request(1, 6 * 1024, 0, 20)}};
  auto d = c.fit(pod);
  REQUIRE(d.ok());
  REQUIRE(d->placed);
  CHECK(d->containers[0].init);
  CHECK_FALSE(d->containers[2].init);
  REQUIRE(c.reserve(*d).ok());
  const device& dev = c.nodes()[0].devices[0];
  CHECK(dev.memory_used == 14 * 1024 * k_mib);  // max(12, 10) < 8 + 6
  CHECK(dev.cores_used == 600);                 // max(30, 60) > 20 + 20
  CHECK(dev.slots_used == 2);                   // max(1, 2)
  REQUIRE(c.release(*d).ok());
  CHECK(c.nodes()[0].devices[0].memory_used == 0);
  // The same containers as app containers do not fit together.
  pod_request apps = pod;
  for (auto& r : apps.containers) r.init = false;
  auto no = c.fit(apps);
  REQUIRE(no.ok());
  CHECK_FALSE(no->placed);
}

TEST_CASE("device-scoring weights: HAMi refuses negative and all-zero", "[fit][hami]") {
  struct row {
    usage_weights w;
    const char* fragment;  ///< nullptr: accepted
  };
  const std::vector<row> rows = {
      {{1, 1, 1}, nullptr},
      {{0, 0, 1}, nullptr},
      {{5, 0, 0}, nullptr},
      {{-1, 1, 1}, "no negative weight"},
      {{1, 1, -2}, "no negative weight"},
      {{0, 0, 0}, "at least one positive weight"},
  };
  for (const auto& r : rows) {
    const auto e = validate(r.w);
    if (r.fragment == nullptr) {
      CHECK_FALSE(e.has_value());
    } else {
      REQUIRE(e.has_value());
      CHECK_THAT(e->message, Catch::Contains(r.fragment) && Catch::Contains("scoring weights"));
    }
  }
}

TEST_CASE("topology, one GPU, every card shared: the card least linked to the others",
          "[fit][hami]") {
  // HAMi's computeWorstSingleCard: among the cards that fit, the one whose summed link score to
  // the other candidates is lowest, so the well-linked ones stay together.
  auto n = fixtures::node_of("n", 4, 80, "NVIDIA-A100");
  n.links = link_matrix(4);
  n.links.set(0, 1, 100);
  n.links.set(2, 3, 100);
  n.links.set(0, 2, 10);
  n.links.set(1, 3, 10);
  n.links.set(0, 3, 10);  // cards 1 and 2 link least (110 each); the lower index wins
  for (auto& d : n.devices) {
    d.slots_used = 1;
    d.memory_used = fixtures::k_gib;
  }
  auto c = fixtures::make_cluster({n});
  const hami_scorer topo(hami_policy::binpack, gpu_policy::topology);
  auto d = c.fit(fixtures::pod({fixtures::req(1, 8)}), topo);
  REQUIRE(d.ok());
  REQUIRE(d->placed);
  CHECK(d->containers[0].devices[0].device == 1);
}
