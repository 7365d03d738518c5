// The openb CSV readers: good files, and one clear error per malformed row.
#include <catch2/catch.hpp>
#include <string>

#include "gpuslice/sim/trace_csv.hpp"

using namespace gpuslice::sim;

namespace {
const std::string k_pod_header =
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
    "deletion_time,scheduled_time\n";
std::string pod_error(const std::string& rows) {
  auto r = parse_pods_csv(k_pod_header + rows, "pods.csv");
  REQUIRE_FALSE(r.ok());
  return r.message();
}
}  // namespace

TEST_CASE("node and pod lists parse, in any column order", "[sim][csv]") {
  auto nodes = parse_nodes_csv(
      "model,sn,gpu,cpu_milli,memory_mib\r\nT4,n1,2,64000,262144\r\n,n2,0,32000,1024\n",
      "nodes.csv");
  REQUIRE(nodes.ok());
  REQUIRE(nodes->size() == 2);
  CHECK((*nodes)[0].name == "n1");
  CHECK((*nodes)[0].gpus == 2);
  CHECK((*nodes)[0].model == "T4");
  CHECK((*nodes)[1].model.empty());

  auto pods = parse_pods_csv(
      k_pod_header + "p1,4000,1024,1,460,V100M16|V100M32,LS,Running,5,9,5\n\n", "pods.csv");
  REQUIRE(pods.ok());
  REQUIRE(pods->size() == 1);
  CHECK((*pods)[0].gpu_milli == 460);
  CHECK((*pods)[0].gpu_spec == "V100M16|V100M32");
  CHECK((*pods)[0].creation == 5);
  CHECK((*pods)[0].deletion == 9);

  auto multi =
      parse_pods_csv("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1,1,8,1000\n", "m.csv");
  REQUIRE(multi.ok());
  CHECK((*multi)[0].creation == -1);
}

TEST_CASE("malformed rows name the file, the line and the column", "[sim][csv]") {
  CHECK(pod_error("p1,4000,1024,1,abc,,LS,Running,0,1,0\n") ==
        "pods.csv:2: column 'gpu_milli': expected an integer in 0..2147483647, got 'abc'");
  CHECK(pod_error("p1,4000,1024,1,500,,LS,Running,0,1,0\np2,-1,1024,0,0,,LS,Running,0,1,0\n") ==
        "pods.csv:3: column 'cpu_milli': expected an integer in 0..1099511627776, got '-1'");
  CHECK(pod_error("p1,4000,1024,9,1000,,LS,Running,0,1,0\n") ==
        "pods.csv:2: column 'num_gpu': expected an integer in 0..8, got '9'");
  CHECK(pod_error("p1,4000,1024,2,500,,LS,Running,0,1,0\n")
            .find("pods.csv:2: column 'gpu_milli': expected 1000 or more for num_gpu=2") == 0);
  CHECK(pod_error("p1,4000,1024,1,500\n") ==
        "pods.csv:2: expected 11 columns as in the header, got 5");
  CHECK(pod_error(",4000,1024,1,500,,LS,Running,0,1,0\n") ==
        "pods.csv:2: column 'name': expected a pod name, got ''");
  CHECK(pod_error("p1,4000,1024,1,500,,LS,Running,,1,0\n") ==
        "pods.csv:2: column 'creation_time': expected an integer in 0..1125899906842624, got ''");
  CHECK(pod_error("") == "pods.csv: no pod rows");

  auto no_header = parse_pods_csv("name,cpu_milli,num_gpu,gpu_milli\n", "x.csv");
  REQUIRE_FALSE(no_header.ok());
  CHECK(no_header.message() == "x.csv:1: header lacks column 'memory_mib'");
  auto empty = parse_nodes_csv("", "n.csv");
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.message() == "n.csv: empty file, expected a CSV header");
  auto no_model = parse_nodes_csv("sn,cpu_milli,memory_mib,gpu,model\nn1,1,1,2,\n", "n.csv");
  REQUIRE_FALSE(no_model.ok());
  CHECK(no_model.message() ==
        "n.csv:2: column 'model': expected a GPU model for a node with 2 GPUs, got ''");
  auto control = parse_nodes_csv("sn,cpu_milli,memory_mib,gpu,model\nn1,1\x01,1,2,T4\n", "n.csv");
  REQUIRE_FALSE(control.ok());
  CHECK(control.message().find("got '1\\x01'") != std::string::npos);
}
