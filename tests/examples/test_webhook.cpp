// The admission webhook's decisions, in process: HAMi's webhook rules (MutateAdmission's test
// table) as AdmissionReviews, the JSONPatch answered, refusals, and malformed reviews.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "webhook.hpp"

using namespace gpuslice;
using webhook::json;

namespace {

json review_of(json pod, std::string kind = "Pod") {
  return {{"apiVersion", "admission.k8s.io/v1"},
          {"kind", "AdmissionReview"},
          {"request",
           {{"uid", "req-1"},
            {"kind", {{"group", ""}, {"version", "v1"}, {"kind", kind}}},
            {"namespace", "team"},
            {"operation", "CREATE"},
            {"object", std::move(pod)}}}};
}

json pod_with(json limits, json annotations = json::object()) {
  return {
      {"metadata", {{"name", "p"}, {"annotations", annotations}}},
      {"spec",
       {{"containers",
         json::array({{{"name", "main"}, {"image", "x"}, {"resources", {{"limits", limits}}}}})}}}};
}

/// Decodes base64 (the patch) for checking.
std::string unbase64(const std::string& in) {
  static const std::string k_alphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    acc = acc << 6 | static_cast<std::uint32_t>(k_alphabet.find(c));
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>(acc >> bits & 0xFF);
    }
  }
  return out;
}

/// The pod after applying the answer's patch.
json patched(const json& pod, const webhook::outcome& o) {
  const json& r = o.review["response"];
  if (!r.contains("patch")) return pod;
  CHECK(r["patchType"] == "JSONPatch");
  return pod.patch(json::parse(unbase64(r["patch"].get<std::string>())));
}

}  // namespace

TEST_CASE("base64 is RFC 4648", "[examples][webhook]") {
  CHECK(webhook::base64("") == "");
  CHECK(webhook::base64("f") == "Zg==");
  CHECK(webhook::base64("fo") == "Zm8=");
  CHECK(webhook::base64("foo") == "Zm9v");
  CHECK(webhook::base64("foobar") == "Zm9vYmFy");
}

TEST_CASE("HAMi's webhook table: defaults, exclusivity, scheduler name", "[examples][webhook]") {
  struct row {
    const char* hami_case;
    json limits;
    json want_limits;  ///< after the patch
    bool scheduled;    ///< schedulerName set to ours
  };
  const std::vector<row> rows = {
      {"gpu count only: exclusive cores",
       {{"nvidia.com/gpu", "1"}},
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpucores", "100"}},
       true},
      {"memory size present: shareable, untouched",
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem", "3000"}},
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem", "3000"}},
       true},
      {"exclusive via percentage 100",
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem-percentage", "100"}},
       {{"nvidia.com/gpu", "1"},
        {"nvidia.com/gpumem-percentage", "100"},
        {"nvidia.com/gpucores", "100"}},
       true},
      {"non-exclusive percentage",
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem-percentage", "50"}},
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem-percentage", "50"}},
       true},
      {"explicit cores unchanged",
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpucores", "30"}},
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpucores", "30"}},
       true},
      {"cores without gpu: defaultGPUNum",
       {{"nvidia.com/gpucores", "30"}},
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpucores", "30"}},
       true},
      {"memory without gpu: defaultGPUNum",
       {{"nvidia.com/gpumem", "1024"}},
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem", "1024"}},
       true},
      {"no GPU resources: untouched", {{"cpu", "1"}}, {{"cpu", "1"}}, false},
      {"nvidia.com/gpu 0: untouched", {{"nvidia.com/gpu", "0"}}, {{"nvidia.com/gpu", "0"}}, false},
  };
  const webhook::settings s;
  for (const auto& r : rows) {
    INFO(r.hami_case);
    const json pod = pod_with(r.limits);
    auto o = webhook::review(review_of(pod).dump(), s);
    REQUIRE(o);
    CHECK(o->allowed);
    CHECK(o->review["response"]["uid"] == "req-1");
    CHECK(o->review["apiVersion"] == "admission.k8s.io/v1");
    const json after = patched(pod, *o);
    CHECK(after["spec"]["containers"][0]["resources"]["limits"] == r.want_limits);
    CHECK(after["spec"].value("schedulerName", "") == (r.scheduled ? "gpuslice-scheduler" : ""));
    CHECK(o->mutated == (after != pod));
  }
}

TEST_CASE("webhook: chart keys, priority, and a scheduler chosen by the user",
          "[examples][webhook]") {
  webhook::settings s;
  s.cfg.default_memory = 2048;
  s.cfg.default_cores = 20;
  s.cfg.default_gpu_num = 2;
  s.scheduler_name = "hami-scheduler";
  json pod = pod_with({{"nvidia.com/gpumem-percentage", "40"}, {"nvidia.com/priority", "0"}});
  auto o = webhook::review(review_of(pod).dump(), s);
  REQUIRE(o);
  const json after = patched(pod, *o);
  const json& c = after["spec"]["containers"][0];
  CHECK(c["resources"]["limits"]["nvidia.com/gpu"] == "2");
  CHECK(c["resources"]["limits"]["nvidia.com/gpucores"] == "20");
  CHECK_FALSE(c["resources"]["limits"].contains("nvidia.com/gpumem"));  // a percentage is memory
  CHECK(c["env"] == json::parse(R"([{"name":"CUDA_TASK_PRIORITY","value":"0"}])"));
  CHECK(after["spec"]["schedulerName"] == "hami-scheduler");

  json mine = pod_with({{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem", "100"}});
  mine["spec"]["schedulerName"] = "my-scheduler";
  auto kept = webhook::review(review_of(mine).dump(), s);
  REQUIRE(kept);
  CHECK(patched(mine, *kept)["spec"]["schedulerName"] == "my-scheduler");
  CHECK(patched(mine, *kept)["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpumem"] ==
        "100");
  // HAMi leaves a pod that names another scheduler as it is: no defaults (gpucores 20) either.
  CHECK(kept->allowed);
  CHECK_FALSE(kept->mutated);
  CHECK_FALSE(kept->review["response"].contains("patch"));
}

TEST_CASE("webhook: HAMi's refusals of privileged GPU containers and pods with a node",
          "[examples][webhook]") {
  json priv = pod_with({{"nvidia.com/gpu", "1"}});
  priv["spec"]["initContainers"] = json::array(
      {{{"name", "setup"}, {"image", "x"}, {"securityContext", {{"privileged", true}}}}});
  auto o = webhook::review(review_of(priv).dump(), webhook::settings{});
  REQUIRE(o);
  CHECK_FALSE(o->allowed);
  CHECK(o->review["response"]["status"]["code"] == 403);
  CHECK_THAT(o->message, Catch::Contains("container setup is privileged"));
  CHECK_FALSE(o->review["response"].contains("patch"));
  // privileged: false, or a privileged pod without GPUs: admitted
  priv["spec"]["initContainers"][0]["securityContext"]["privileged"] = false;
  CHECK(webhook::review(review_of(priv).dump(), webhook::settings{})->allowed);
  json cpu_priv = pod_with({{"cpu", "1"}});
  cpu_priv["spec"]["containers"][0]["securityContext"] = {{"privileged", true}};
  CHECK(webhook::review(review_of(cpu_priv).dump(), webhook::settings{})->allowed);

  json placed = pod_with({{"nvidia.com/gpumem", "1000"}});
  placed["spec"]["nodeName"] = "n1";
  auto p = webhook::review(review_of(placed).dump(), webhook::settings{});
  REQUIRE(p);
  CHECK_FALSE(p->allowed);
  CHECK_THAT(p->message, Catch::Contains("pod has node assigned") && Catch::Contains("n1"));
  json cpu_placed = pod_with({{"cpu", "1"}});
  cpu_placed["spec"]["nodeName"] = "n1";
  CHECK(webhook::review(review_of(cpu_placed).dump(), webhook::settings{})->allowed);
}

TEST_CASE("webhook: pods labelled hami.io/webhook=ignore are left untouched",
          "[examples][webhook]") {
  json pod = pod_with({{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem-percentage", "101"}});
  pod["metadata"]["labels"] = {{"hami.io/webhook", "ignore"}};
  auto o = webhook::review(review_of(pod).dump(), webhook::settings{});
  REQUIRE(o);
  CHECK(o->allowed);
  CHECK_FALSE(o->mutated);
  // any other value: the rules apply (here, a refusal)
  pod["metadata"]["labels"]["hami.io/webhook"] = "yes";
  CHECK_FALSE(webhook::review(review_of(pod).dump(), webhook::settings{})->allowed);
}

TEST_CASE("webhook: a review is answered in its own version", "[examples][webhook]") {
  json pod = pod_with({{"nvidia.com/gpu", "1"}});
  for (const char* version : {"admission.k8s.io/v1beta1", "admission.k8s.io/v1"}) {
    INFO(version);
    json in = review_of(pod);
    in["apiVersion"] = version;
    auto o = webhook::review(in.dump(), webhook::settings{});
    REQUIRE(o);
    CHECK(o->review["apiVersion"] == version);
    CHECK(o->review["kind"] == "AdmissionReview");
    CHECK(o->review["response"]["uid"] == "req-1");
    CHECK(patched(pod, *o)["spec"]["schedulerName"] == "gpuslice-scheduler");
  }
  json odd = review_of(pod);
  odd["apiVersion"] = "admission.k8s.io/v2";
  auto e = webhook::review(odd.dump(), webhook::settings{});
  REQUIRE_FALSE(e);
  CHECK_THAT(e.message(), Catch::StartsWith("AdmissionReview: apiVersion \"admission.k8s.io/v2\""));
}

TEST_CASE("webhook: values HAMi refuses are refused with one clear line", "[examples][webhook]") {
  struct row {
    json pod;
    const char* fragment;
  };
  const std::vector<row> rows = {
      {pod_with({{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem-percentage", "101"}}),
       "pod team/p: container \"main\": nvidia.com/gpumem-percentage 101: must be an integer "
       "between 0 and 100"},
      {pod_with({{"nvidia.com/gpu", "1"}}, {{"nvidia.com/numa-bind", "yes"}}),
       "nvidia.com/numa-bind \"yes\": expected a boolean"},
      {pod_with({{"nvidia.com/gpu", "1"}}, {{"hami.io/gpu-scheduler-policy", "fastest"}}),
       "GPU policy \"fastest\""},
      {pod_with({{"nvidia.com/gpu", "1"}},
                {{"hami.io/device-scoring-weights", "slot=0,core=0,memory=0"}}),
       "at least one positive weight"},
      {pod_with({{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem", "lots"}}),
       "nvidia.com/gpumem \"lots\": no digits"},
  };
  for (const auto& r : rows) {
    INFO(r.fragment);
    auto o = webhook::review(review_of(r.pod).dump(), webhook::settings{});
    REQUIRE(o);
    CHECK_FALSE(o->allowed);
    const json& resp = o->review["response"];
    CHECK(resp["allowed"] == false);
    CHECK(resp["status"]["code"] == 403);
    CHECK_THAT(resp["status"]["message"].get<std::string>(),
               Catch::Contains(r.fragment) && Catch::StartsWith("gpuslice webhook: "));
    CHECK_FALSE(resp.contains("patch"));
  }
}

TEST_CASE("webhook: malformed reviews; fail open or closed", "[examples][webhook]") {
  for (const std::string bad : {"", "{", "[]", R"({"request":{}})", R"({"request":{"uid":""}})"}) {
    INFO(bad);
    auto o = webhook::review(bad, webhook::settings{});
    REQUIRE_FALSE(o);
    CHECK(o.message().rfind("AdmissionReview: ", 0) == 0);
  }
  // Not a Pod: let through untouched.
  auto other = webhook::review(review_of(json::object(), "ConfigMap").dump(), webhook::settings{});
  REQUIRE(other);
  CHECK(other->allowed);
  CHECK_FALSE(other->mutated);
  // A Pod review without its object: closed refuses, open allows with a warning.
  json broken = review_of(json::object());
  broken["request"].erase("object");
  webhook::settings closed, open;
  open.fail_open = true;
  auto c = webhook::review(broken.dump(), closed);
  REQUIRE(c);
  CHECK_FALSE(c->allowed);
  CHECK(c->review["response"]["status"]["code"] == 400);
  auto o = webhook::review(broken.dump(), open);
  REQUIRE(o);
  CHECK(o->allowed);
  CHECK_THAT(o->review["response"]["warnings"][0].get<std::string>(), Catch::Contains("fail open"));
}

TEST_CASE("gpumem-percentage above 100: the webhook refuses, the scheduler path clamps",
          "[examples][webhook][hami]") {
  // HAMi's webhook admits 0..100 only; its scheduler (GenerateResourceRequests) clamps a pod
  // that never met the webhook to 100. The extender and the controller read pods through
  // kube::pod_request_from_json, and do the same.
  json pod = pod_with({{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem-percentage", "150"}});
  CHECK_FALSE(webhook::review(review_of(pod).dump(), webhook::settings{})->allowed);
  pod["metadata"]["namespace"] = "team";
  auto req = kube::pod_request_from_json(pod);
  REQUIRE(req);
  REQUIRE(req->containers.size() == 1);
  CHECK(req->containers[0].memory_percent == 100);
  CHECK(req->containers[0].count == 1);
}

namespace {

webhook::settings dra_settings(webhook::dra::mode m) {
  webhook::settings s;
  s.dra.which = m;
  return s;
}

json answer(const json& pod, const webhook::settings& s, webhook::outcome& o) {
  auto out = webhook::review(review_of(pod).dump(), s);
  REQUIRE(out);
  o = *out;
  REQUIRE(o.allowed);
  return patched(pod, o);
}

}  // namespace

TEST_CASE("webhook DRA mode: HAMi's requests become a claim from a generated template",
          "[examples][webhook][dra]") {
  const json pod = pod_with({{"nvidia.com/gpu", "1"},
                             {"nvidia.com/gpumem", "3000"},
                             {"nvidia.com/gpucores", "30"},
                             {"cpu", "2"}},
                            {{"gpuslice.dev/dra", "true"}});
  webhook::outcome o;
  const json after = answer(pod, dra_settings(webhook::dra::mode::annotated), o);
  // The extended resources are gone, everything else kept; the container names the claim.
  const json& res = after["spec"]["containers"][0]["resources"];
  CHECK(res["limits"] == json{{"cpu", "2"}});
  CHECK(res["claims"] == json::array({{{"name", "gpuslice-0"}}}));
  CHECK(after["spec"]["resourceClaims"] ==
        json::array(
            {{{"name", "gpuslice-0"}, {"resourceClaimTemplateName", "gpuslice-1x-3000mi-30c"}}}));
  CHECK_FALSE(after["spec"].contains("schedulerName"));  // kube-scheduler allocates claims
  REQUIRE(o.templates.size() == 1);
  const json& t = o.templates[0];
  CHECK(t["kind"] == "ResourceClaimTemplate");
  CHECK(t["apiVersion"] == "resource.k8s.io/v1");
  CHECK(t["metadata"] == json{{"name", "gpuslice-1x-3000mi-30c"}, {"namespace", "team"}});
  const json& req = t["spec"]["spec"]["devices"]["requests"][0];
  CHECK(req["name"] == "gpu");
  CHECK(req["exactly"]["deviceClassName"] == "gpuslice");
  CHECK(req["exactly"]["count"] == 1);
  CHECK(req["exactly"]["capacity"]["requests"] == json{{"memory", "3000Mi"}, {"cores", "30"}});
  CHECK_FALSE(t["spec"]["spec"]["devices"].contains("constraints"));
  CHECK_FALSE(o.dry_run);
}

TEST_CASE("webhook DRA mode: whole cards, several GPUs, types, init containers",
          "[examples][webhook][dra]") {
  // Two whole GPUs (HAMi's rules give them gpucores 100) of an A100 or H100, not one uuid.
  json pod = pod_with({{"nvidia.com/gpu", "2"}}, {{"nvidia.com/use-gputype", "A100, H100"},
                                                  {"nvidia.com/nouse-gpuuuid", "GPU-1"}});
  pod["spec"]["initContainers"] = json::array(
      {{{"name", "warm"},
        {"resources",
         {{"requests", {{"nvidia.com/gpumem", "1024"}, {"nvidia.com/gpucores", "5"}}}}}}});
  webhook::outcome o;
  const json after = answer(pod, dra_settings(webhook::dra::mode::all), o);
  REQUIRE(o.templates.size() == 2);
  const json& init = o.templates[0];
  const json& main = o.templates[1];
  CHECK(after["spec"]["initContainers"][0]["resources"] ==
        json{{"claims", json::array({{{"name", "gpuslice-init-0"}}})}});
  CHECK(after["spec"]["resourceClaims"].size() == 2);
  const std::string mname = main["metadata"]["name"];
  CHECK(mname.rfind("gpuslice-2x-allmem-100c-", 0) == 0);  // plus the selectors' digest
  CHECK(init["metadata"]["name"].get<std::string>().rfind("gpuslice-1x-1024mi-5c-", 0) == 0);
  const json& devices = main["spec"]["spec"]["devices"];
  // No memory asked: the request policy's default, the whole card.
  CHECK(devices["requests"][0]["exactly"]["capacity"]["requests"] == json{{"cores", "100"}});
  CHECK(devices["requests"][0]["exactly"]["count"] == 2);
  CHECK(devices["constraints"] == json::array({{{"requests", json::array({"gpu"})},
                                                {"distinctAttribute", "gpu.gpuslice.dev/uuid"}}}));
  const json& sel = devices["requests"][0]["exactly"]["selectors"];
  REQUIRE(sel.size() == 2);
  CHECK(sel[0]["cel"]["expression"] ==
        "device.attributes[\"gpu.gpuslice.dev\"].productName.contains(\"A100\") || "
        "device.attributes[\"gpu.gpuslice.dev\"].productName.contains(\"H100\")");
  CHECK(sel[1]["cel"]["expression"] ==
        "!(device.attributes[\"gpu.gpuslice.dev\"].uuid == \"GPU-1\")");
  // The same request names the same template: creating it twice is harmless.
  webhook::outcome again;
  (void)answer(pod, dra_settings(webhook::dra::mode::all), again);
  CHECK(again.templates == o.templates);
}

TEST_CASE(
    "webhook DRA mode: off by default, opt-in or opt-out per pod, HAMi's path kept where "
    "a claim cannot say it",
    "[examples][webhook][dra]") {
  const json limits = {
      {"nvidia.com/gpu", "1"}, {"nvidia.com/gpucores", "30"}, {"nvidia.com/gpumem", "2000"}};
  webhook::outcome o;
  // Off (the default): HAMi's path, whatever the annotation.
  json after = answer(pod_with(limits, {{"gpuslice.dev/dra", "true"}}), webhook::settings{}, o);
  CHECK(after["spec"]["schedulerName"] == "gpuslice-scheduler");
  CHECK(o.templates.empty());
  // Annotated mode without the annotation: HAMi's path.
  after = answer(pod_with(limits), dra_settings(webhook::dra::mode::annotated), o);
  CHECK(after["spec"]["containers"][0]["resources"]["limits"] == limits);
  CHECK(o.templates.empty());
  // All mode, opted out.
  after = answer(pod_with(limits, {{"gpuslice.dev/dra", "false"}}),
                 dra_settings(webhook::dra::mode::all), o);
  CHECK(o.templates.empty());
  CHECK(after["spec"]["schedulerName"] == "gpuslice-scheduler");
  // A share of an unknown card, no cores, numa-bind: HAMi's path, with a warning that says why.
  const std::vector<std::pair<json, json>> kept = {
      {{{"nvidia.com/gpu", "1"},
        {"nvidia.com/gpumem-percentage", "50"},
        {"nvidia.com/gpucores", "30"}},
       json::object()},
      {{{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem", "2000"}}, json::object()},
      {limits, {{"nvidia.com/numa-bind", "true"}}},
  };
  const std::vector<std::string> why = {"gpumem-percentage 50 is a share", "no nvidia.com/gpucores",
                                        "numa-bind has no DRA equivalent"};
  for (std::size_t k = 0; k < kept.size(); ++k) {
    INFO(why[k]);
    after =
        answer(pod_with(kept[k].first, kept[k].second), dra_settings(webhook::dra::mode::all), o);
    CHECK(o.templates.empty());
    CHECK(after["spec"]["schedulerName"] == "gpuslice-scheduler");
    CHECK(after["spec"]["containers"][0]["resources"].contains("limits"));
    const json& warnings = o.review["response"]["warnings"];
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].get<std::string>().find(why[k]) != std::string::npos);
  }
  // A dry run is reported, so that the caller creates nothing.
  json r = review_of(pod_with(limits));
  r["request"]["dryRun"] = true;
  auto dry = webhook::review(r.dump(), dra_settings(webhook::dra::mode::all));
  REQUIRE(dry);
  CHECK(dry->dry_run);
  CHECK(dry->templates.size() == 1);
}
