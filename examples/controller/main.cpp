// gpuslice_controller: places pending pods on HAMi-registered GPU nodes with gpuslice's fit
// engine and prints, per pod, the annotations HAMi's device plugin reads (or why it fits nowhere).
//
//   kubectl get nodes -o json > nodes.json
//   kubectl get pods -A -o json > pods.json
//   gpuslice_controller --nodes nodes.json --pods pods.json
//                       [--node-policy binpack|spread|fgd|sfgd]
//                       [--gpu-policy spread|binpack|topology] [--workload FILE]
//
// Pods already bound (spec.nodeName and a devices annotation) are charged to their GPUs first;
// pending pods are then placed in file order, each seeing the ones before it. The program only
// reads and prints: applying the annotations and the binding is the caller's step.
//
// fgd and sfgd (include/gpuslice/fit/hami_frag.hpp) choose the node and its GPUs by the change
// of the GPU fragment against a target workload: the --workload file's classes if given (the
// cold start, one whole GPU, if not), learned further from every bound pod and then every
// pending pod as it is placed. A pod whose annotation names a node policy gets that HAMi policy.
// The learned workload is printed last, in the --workload file format.
#include <fmt/core.h>

#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gpuslice/fit/fit.hpp"
#include "gpuslice/fit/hami_frag.hpp"
#include "gpuslice/version.hpp"
#include "json_file.hpp"
#include "kube.hpp"

namespace {

namespace fit = gpuslice::fit;
namespace kube = gpuslice::kube;
using kube::json;
using kube::read_json;

constexpr int k_exit_input = 1;
constexpr int k_exit_usage = 2;

constexpr std::string_view k_usage =
    "usage: gpuslice_controller --nodes NODES.json --pods PODS.json "
    "[--node-policy binpack|spread|fgd|sfgd] [--gpu-policy spread|binpack|topology] "
    "[--workload FILE]\n";

int fail(const std::string& message) {
  fmt::print(stderr, "gpuslice_controller: {}\n", message);
  return k_exit_input;
}

}  // namespace

int main(int argc, char** argv) {
  std::string nodes_path, pods_path, workload_path;
  kube::policy_names policy;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      fmt::print("{}", k_usage);
      return 0;
    }
    if (i + 1 >= argc) {
      fmt::print(stderr, "gpuslice_controller: {} needs a value\n{}", arg, k_usage);
      return k_exit_usage;
    }
    const std::string value = argv[++i];
    if (arg == "--nodes") {
      nodes_path = value;
    } else if (arg == "--pods") {
      pods_path = value;
    } else if (arg == "--node-policy") {
      policy.node = value;
    } else if (arg == "--gpu-policy") {
      policy.gpu = value;
    } else if (arg == "--workload") {
      workload_path = value;
    } else {
      fmt::print(stderr, "gpuslice_controller: unknown option {}\n{}", arg, k_usage);
      return k_exit_usage;
    }
  }
  if (nodes_path.empty() || pods_path.empty()) {
    fmt::print(stderr, "gpuslice_controller: --nodes and --pods are required\n{}", k_usage);
    return k_exit_usage;
  }
  // fgd and sfgd: HAMi's scorer (binpack nodes) stays for pods that name a node policy.
  const std::optional<fit::frag_policy> frag = kube::frag_policy_of(policy.node);
  if (!frag && policy.node != "binpack" && policy.node != "spread") {
    return fail("node policy \"" + policy.node + "\": expected " +
                std::string(kube::k_node_policy_choices));
  }
  auto scorer = kube::scorer_from_names(frag ? kube::policy_names{"binpack", policy.gpu} : policy);
  if (!scorer) return fail(scorer.message());
  fit::workload_histogram workload;
  if (!workload_path.empty()) {
    if (!frag) return fail("--workload needs --node-policy fgd or sfgd");
    auto seed = fit::read_workload(workload_path);
    if (!seed) return fail(seed.message());
    workload.seed(std::move(*seed));
  }

  auto node_doc = read_json(nodes_path);
  if (!node_doc) return fail(node_doc.message());
  auto pod_doc = read_json(pods_path);
  if (!pod_doc) return fail(pod_doc.message());
  const json* node_items = kube::items(*node_doc);
  const json* pod_items = kube::items(*pod_doc);
  if (node_items == nullptr) return fail(nodes_path + ": expected a NodeList or a JSON array");
  if (pod_items == nullptr) return fail(pods_path + ": expected a PodList or a JSON array");

  // A node or bound pod that does not map is skipped with its reason: one bad object never
  // stops the others from being placed.
  kube::node_list parsed = kube::nodes_from_items(*node_items, nodes_path);
  for (const auto& why : parsed.skipped) fmt::print(stderr, "gpuslice_controller: {}\n", why);
  std::vector<fit::node> nodes = std::move(parsed.nodes);
  std::size_t gpus = 0;
  for (const fit::node& node : nodes) gpus += node.devices.size();
  std::size_t bound = 0;
  std::vector<const json*> pending;
  for (const json& p : *pod_items) {
    auto charged = kube::charge_bound_pod(nodes, p);
    if (!charged) {
      fmt::print(stderr, "gpuslice_controller: {}: {} (pod not charged)\n", pods_path,
                 charged.message());
    } else if (*charged) {
      ++bound;
      if (auto r = kube::pod_request_from_json(p); r && kube::wants_gpu(*r)) workload.observe(*r);
    }
    if (kube::is_pending(p)) pending.push_back(&p);
  }
  auto cluster = fit::cluster::make(std::move(nodes));
  if (!cluster) return fail(nodes_path + ": " + cluster.message());

  fmt::print(
      "gpuslice {} controller: {} nodes, {} GPUs, {} bound pods charged, {} pending pods; "
      "node policy {}, GPU policy {}\n",
      GPUSLICE_VERSION_STRING, cluster->size(), gpus, bound, pending.size(), policy.node,
      frag ? policy.node : policy.gpu);

  fit::fit_options opt;
  opt.report_nodes = true;
  // sfgd's host pressure weighs the cluster's GPUs (reservations change no node's kind).
  const auto inventory =
      frag && *frag == fit::frag_policy::sfgd ? fit::gpu_inventory::of(cluster->nodes()) : nullptr;
  std::size_t placed = 0;
  for (const json* p : pending) {
    const kube::pod_ref ref = kube::pod_identity(*p);
    auto request = kube::pod_request_from_json(*p);
    if (!request) {
      fmt::print("pod {}: invalid request: {}\n", ref.key(), request.message());
      continue;
    }
    if (!kube::wants_gpu(*request)) {
      fmt::print("pod {}: asks for no GPU, left to kube-scheduler\n", ref.key());
      continue;
    }
    const bool by_frag = frag && !kube::names_node_policy(*p);
    auto pod_scorer = kube::pod_scorer(*p, *scorer);
    if (!by_frag && !pod_scorer) {
      fmt::print("pod {}: invalid request: {}\n", ref.key(), pod_scorer.message());
      continue;
    }
    if (by_frag) workload.observe(*request);
    auto d =
        by_frag
            ? cluster->fit(
                  *request,
                  fit::hami_frag_scorer(workload.snapshot(), *frag, 0, inventory).for_pod(*request),
                  opt)
            : cluster->fit(*request, *pod_scorer, opt);
    if (!d) {
      fmt::print("pod {}: invalid request: {}\n", ref.key(), d.message());
      continue;
    }
    if (!d->placed) {
      fmt::print("pod {}: unschedulable: {}\n", ref.key(), d->message());
      for (const auto& r : d->nodes) {
        const fit::node& n = cluster->nodes()[r.node];
        fmt::print("  {}: {}\n", n.name, kube::describe_rejection(n, r.reasons));
      }
      continue;
    }
    const fit::node& n = cluster->nodes()[d->node];
    auto devices = kube::devices_annotation(n, *d);
    if (!devices) {
      fmt::print("pod {}: cannot encode its devices: {}\n", ref.key(), devices.message());
      continue;
    }
    if (auto r = cluster->reserve(*d); !r) return fail("reserve: " + r.message());
    ++placed;
    fmt::print("pod {} -> {} (score {:.2f}, {} of {} nodes feasible)\n", ref.key(), n.name,
               d->score, d->feasible_nodes, d->total_nodes);
    fmt::print("  {}: {}\n", kube::k_assigned_node, n.name);
    fmt::print("  {}: {}\n", kube::k_devices_to_allocate, *devices);
  }
  fmt::print("placed {} of {} pending pods\n", placed, pending.size());
  if (frag) {
    const auto learned = workload.snapshot();
    if (learned->is_cold_start()) {
      fmt::print("target workload: the cold start (one whole GPU)\n");
    } else {
      fmt::print("target workload: {} classes\n{}", learned->size(),
                 fit::format_workload(learned->classes()));
    }
  }
  return 0;
}
