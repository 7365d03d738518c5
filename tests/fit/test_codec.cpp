// Codecs: HAMi's pod devices annotation, node registration (JSON and colon form), pair scores.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "gpuslice/fit/codec.hpp"
#include "gpuslice/fit/fit.hpp"

using namespace gpuslice::fit;
using fixtures::k_gib;

TEST_CASE("pod devices: encode keeps empty containers and closes each with ;", "[fit][codec]") {
  const std::vector<annotated_container> pod = {
      {{"GPU-a", "NVIDIA", 1024, 30}},
      {},
      {{"GPU-b", "NVIDIA", 2048, 0}, {"GPU-c", "NVIDIA", 2048, 0}},
  };
  auto s = encode_pod_devices(pod);
  REQUIRE(s.ok());
  CHECK(*s == "GPU-a,NVIDIA,1024,30:;;GPU-b,NVIDIA,2048,0:GPU-c,NVIDIA,2048,0:;");
  auto back = decode_pod_devices(*s);
  REQUIRE(back.ok());
  CHECK(*back == pod);
  CHECK(encode_pod_devices({}).value().empty());
  CHECK(encode_pod_devices({{}}).value() == ";");
  CHECK(decode_pod_devices(";").value().size() == 1);
  CHECK(decode_pod_devices("").value().empty());
}

TEST_CASE("pod devices: older joined form and a final device without ':'", "[fit][codec]") {
  auto joined = decode_pod_devices("GPU-a,NVIDIA,1,2:;GPU-b,NVIDIA,3,4:");
  REQUIRE(joined.ok());
  REQUIRE(joined->size() == 2);
  CHECK((*joined)[1][0].uuid == "GPU-b");
  auto open = decode_pod_devices("GPU-a,NVIDIA,1,2");
  REQUIRE(open.ok());
  CHECK((*open)[0][0].cores == 2);
}

TEST_CASE("pod devices: malformed input is one clear line", "[fit][codec]") {
  struct row {
    const char* text;
    const char* fragment;
  };
  const std::vector<row> rows = {
      {"GPU-a,NVIDIA,1:;", "expected 4 fields"},
      {"GPU-a,NVIDIA,1,2,3:;", "expected 4 fields"},
      {",NVIDIA,1,2:;", "non-empty uuid"},
      {"GPU-a,,1,2:;", "non-empty uuid"},
      {"GPU-a,NVIDIA,-1,2:;", "memory \"-1\""},
      {"GPU-a,NVIDIA,2147483648,2:;", "below 2^31"},
      {"GPU-a,NVIDIA,1,101:;", "cores \"101\""},
      {"GPU-a,NVIDIA,1,x:;", "cores \"x\""},
      {";GPU-a,NVIDIA,1,2,:;", "container 1, device 0"},
      {"GPU-a,NVIDIA,1,2:\n;", "container 0, device 1"},
  };
  for (const auto& r : rows) {
    auto d = decode_pod_devices(r.text);
    INFO(r.text);
    REQUIRE_FALSE(d.ok());
    CHECK_THAT(d.message(), Catch::Contains(r.fragment));
    CHECK(d.message().find('\n') == std::string::npos);
  }
  auto bad = encode_pod_devices({{{"GPU:a", "NVIDIA", 1, 1}}});
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.message(), Catch::Contains("without , : or ;"));
  CHECK_FALSE(encode_pod_devices({{{"GPU-a", "NVIDIA", 1, 101}}}).ok());
}

TEST_CASE("node registration: HAMi's JSON", "[fit][codec]") {
  const char* text =
      R"([{"id":"GPU-0","count":10,"devmem":32768,"devcore":100,"type":"NVIDIA-Tesla V100-PCIE-32GB",)"
      R"("health":true,"mode":"hami-core","migProfiles":[{"name":"1g","placements":[{"start":0}]}]},)"
      R"( {"id":"GPU-1","index":1,"count":4,"devmem":16384,"devcore":50,"type":"T\u00e9sla","numa":1}])";
  auto d = decode_node_devices(text);
  REQUIRE(d.ok());
  REQUIRE(d->size() == 2);
  const auto& a = (*d)[0];
  CHECK(a.uuid == "GPU-0");
  CHECK(a.index == 0);  // omitted by Go's omitempty: zero
  CHECK(a.slots_total == 10);
  CHECK(a.memory_total == 32768ull * k_bytes_per_mib);
  CHECK(a.cores_total == 1000);
  CHECK(a.healthy);
  CHECK(a.mode == "hami-core");
  const auto& b = (*d)[1];
  CHECK(b.index == 1);
  CHECK(b.numa == 1);
  CHECK(b.cores_total == 500);
  CHECK(b.type == "T\xc3\xa9sla");
  CHECK_FALSE(b.healthy);  // omitted: false, as Go decodes it
  CHECK(b.mode == "hami-core");
  // Encode and decode again: the same devices.
  auto again = decode_node_devices(encode_node_devices(*d));
  REQUIRE(again.ok());
  REQUIRE(again->size() == 2);
  CHECK((*again)[1].type == b.type);
  CHECK((*again)[1].memory_total == b.memory_total);
  CHECK((*again)[0].healthy);
  CHECK(decode_node_devices("[]").value().empty());
}

TEST_CASE("node registration: the colon form", "[fit][codec]") {
  auto d = decode_node_devices(
      "GPU-00552014,10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,0,true:"
      "GPU-0fc3eda5,10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,1,false,3,mig:");
  REQUIRE(d.ok());
  REQUIRE(d->size() == 2);
  CHECK((*d)[0].healthy);
  CHECK((*d)[1].numa == 1);
  CHECK((*d)[1].index == 3);
  CHECK((*d)[1].mode == "mig");
  CHECK_FALSE((*d)[1].healthy);
}

TEST_CASE("node registration: compute scaled above one card, as HAMi's plugin registers it",
          "[fit][codec]") {
  // HAMi's device plugin registers devcore = deviceCoreScaling * 100 (150 with 1.5).
  auto j = decode_node_devices(R"([{"id":"GPU-a","count":10,"devmem":1024,"devcore":150}])");
  REQUIRE(j.ok());
  CHECK((*j)[0].cores_total == 1500);
  auto c = decode_node_devices("GPU-a,10,1024,200,NVIDIA-T4,0,true,0,hami-core:");
  REQUIRE(c.ok());
  CHECK((*c)[0].cores_total == 2000);
}

TEST_CASE("node registration: the colon form HAMi's schedulers before 2.8 read", "[fit][codec]") {
  std::vector<device> devs(2);
  devs[0].uuid = "GPU-a";
  devs[0].type = "NVIDIA-Tesla T4";
  devs[0].memory_total = 15 * k_gib;
  devs[0].cores_total = 1500;
  devs[0].mode = "hami-core";
  devs[1] = devs[0];
  devs[1].uuid = "GPU-b";
  devs[1].index = 1;
  devs[1].numa = 1;
  devs[1].healthy = false;
  auto text = encode_node_devices_legacy(devs);
  REQUIRE(text.ok());
  CHECK(*text ==
        "GPU-a,10,15360,150,NVIDIA-Tesla T4,0,true,0,hami-core:"
        "GPU-b,10,15360,150,NVIDIA-Tesla T4,1,false,1,hami-core:");
  auto back = decode_node_devices(*text);
  REQUIRE(back.ok());
  REQUIRE(back->size() == 2);
  CHECK((*back)[1].uuid == "GPU-b");
  CHECK((*back)[1].numa == 1);
  CHECK((*back)[1].cores_total == 1500);
  CHECK_FALSE((*back)[1].healthy);
  devs[1].type = "NVIDIA,T4";
  auto bad = encode_node_devices_legacy(devs);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.message(), Catch::Contains("device 1 type \"NVIDIA,T4\""));
}

TEST_CASE("node registration: malformed input is one clear line", "[fit][codec]") {
  struct row {
    const char* text;
    const char* fragment;
  };
  const std::vector<row> rows = {
      {"", "expected a JSON array or"},
      {"[", "expected an object"},
      {"[{]", "expected \"key\": value"},
      {R"([{"id":"a","devmem":-1}])", "\"devmem\""},
      {R"([{"id":"a","devmem":1.5}])", "\"devmem\""},
      {R"([{"id":"a","devcore":10001}])", "\"devcore\""},
      {R"([{"id":"a","health":"yes"}])", "true or false"},
      {R"([{"count":1}])", "missing \"id\""},
      {R"([{"id":"a"}] x)", "trailing characters"},
      {R"([{"id":"a\x"}])", "field \"id\": expected a string"},
      {R"([{"id":"a","x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}])",
       "malformed JSON value"},
      {"GPU-a,10,100:", "expected ID,COUNT"},
      {"GPU-a,x,1,100,T,0,true:", "expected integers"},
      {"GPU-a,1,1,100,T,0,maybe:", "health \"maybe\""},
      {"GPU-a,1,1,10001,T,0,true:", "expected integers"},
  };
  for (const auto& r : rows) {
    auto d = decode_node_devices(r.text);
    INFO(r.text);
    REQUIRE_FALSE(d.ok());
    CHECK_THAT(d.message(), Catch::StartsWith("node registration") && Catch::Contains(r.fragment));
  }
}

TEST_CASE("pair scores become a link matrix", "[fit][codec]") {
  std::vector<device> devs = {fixtures::gpu("GPU-a"), fixtures::gpu("GPU-b"),
                              fixtures::gpu("GPU-c")};
  auto m = decode_pair_scores(
      R"([{"uuid":"GPU-a","score":{"GPU-b":100,"GPU-c":20}},{"uuid":"GPU-b","score":{"GPU-a":100}}])",
      devs);
  REQUIRE(m.ok());
  CHECK(m->at(0, 1) == 100);
  CHECK(m->at(1, 0) == 100);
  CHECK(m->at(2, 0) == 20);
  CHECK(m->at(1, 2) == 0);
  auto unknown = decode_pair_scores(R"([{"uuid":"GPU-z","score":{}}])", devs);
  REQUIRE_FALSE(unknown.ok());
  CHECK_THAT(unknown.message(), Catch::Contains("unknown device \"GPU-z\""));
}

TEST_CASE("a decision becomes HAMi's annotation", "[fit][codec]") {
  auto n = fixtures::node_of("n", 2);
  auto c = cluster::make({n});
  REQUIRE(c.ok());
  container_request r = fixtures::req(1, 0, 25);
  r.memory = 1000 * k_bytes_per_mib + 1;  // rounds up to 1001 MiB
  auto d = c->fit(pod_request{{r, container_request{}}});
  REQUIRE(d.ok());
  REQUIRE(d->placed);
  auto text = encode_pod_devices(to_annotation(c->nodes()[d->node], d->containers));
  REQUIRE(text.ok());
  CHECK(*text == "n-gpu0,NVIDIA,1001,25:;;");
}
