// The extender as kube-scheduler meets it: the built program started on 127.0.0.1 with an
// ephemeral port, driven over HTTP with recorded request bodies, stopped with SIGTERM.
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"
#include "service_fixture.hpp"

extern char** environ;

using example_tests::data;
using example_tests::read_file;
using example_tests::sample;
using json = gpuslice::kube::json;

namespace {

constexpr int k_start_timeout_ms = 30000;  // generous: sanitizer builds on a loaded machine
constexpr int k_stop_timeout_ms = 30000;
constexpr time_t k_client_timeout_s = 10;
constexpr int k_poll_step_ms = 10;

/// The extender program, started with \p extra arguments; stopped and reaped by the destructor.
class extender_process {
 public:
  explicit extender_process(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {GPUSLICE_EXTENDER_EXE,
                                     "--nodes",
                                     sample("nodes.json"),
                                     "--pods",
                                     sample("pods.json"),
                                     "--listen",
                                     "127.0.0.1",
                                     "--port",
                                     "0"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int fds[2];
    if (pipe(fds) != 0) throw std::runtime_error("pipe");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    const int rc = posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    out_ = fds[0];
    if (rc != 0) throw std::runtime_error("posix_spawn failed");
    banner_ = read_line(k_start_timeout_ms);
    const std::string served = "on http://127.0.0.1:";
    const auto at = banner_.find(served);
    if (at == std::string::npos) throw std::runtime_error("no address in: " + banner_);
    port_ = std::stoi(banner_.substr(at + served.size()));
  }
  ~extender_process() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(out_);
  }
  extender_process(const extender_process&) = delete;
  extender_process& operator=(const extender_process&) = delete;

  int port() const { return port_; }
  const std::string& banner() const { return banner_; }

  /// Sends SIGTERM and returns the exit status (or -1 when it did not exit in time).
  int stop() {
    kill(pid_, SIGTERM);
    for (int waited = 0; waited < k_stop_timeout_ms; waited += k_poll_step_ms) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(k_poll_step_ms));
    }
    return -1;
  }

  /// The rest of stdout after stop().
  std::string rest() { return read_line(k_stop_timeout_ms); }

 private:
  std::string read_line(int timeout_ms) {
    std::string line;
    char c = 0;
    while (true) {
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, timeout_ms) <= 0) throw std::runtime_error("no output in time: " + line);
      if (read(out_, &c, 1) != 1 || c == '\n') return line;
      line += c;
    }
  }

  pid_t pid_ = -1;
  int out_ = -1;
  int port_ = 0;
  std::string banner_;
};

httplib::Client client(int port) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(k_client_timeout_s, 0);
  c.set_read_timeout(k_client_timeout_s, 0);
  c.set_write_timeout(k_client_timeout_s, 0);
  c.set_tcp_nodelay(true);
  return c;
}

json post(httplib::Client& c, const std::string& path, const std::string& body) {
  auto r = c.Post(path, body, "application/json");
  REQUIRE(r);
  REQUIRE(r->status == 200);
  return json::parse(r->body);
}

}  // namespace

TEST_CASE("the extender serves kube-scheduler's verbs over loopback", "[examples]") {
  extender_process p;
  CHECK(p.banner().find("serving 3 nodes on http://127.0.0.1:") != std::string::npos);
  auto c = client(p.port());

  const json f = post(c, "/filter", read_file(data("filter_names.json")));
  CHECK(f["NodeNames"] == json::array({"gpu-a", "gpu-b"}));
  CHECK(f["FailedAndUnresolvableNodes"].contains("cpu-c"));
  const json pr = post(c, "/prioritize", read_file(data("prioritize_names.json")));
  CHECK(pr == json::parse(R"([{"Host":"gpu-a","Score":10},{"Host":"gpu-b","Score":0}])"));
  CHECK(post(c, "/bind", read_file(data("bind.json")))["Error"] == "");

  auto st = c.Get("/state");
  REQUIRE(st);
  const json state = json::parse(st->body);
  CHECK(state["bindings"][0]["hami.io/vgpu-devices-to-allocate"] == "GPU-a1,NVIDIA,4000,25:;");
  for (const json& n : state["nodes"]) {
    if (n["name"] == "gpu-a") CHECK(n["devices"][1]["memory_used_mib"] == 4000);
  }

  const json fn = post(c, "/filter", read_file(data("filter_nodes.json")));
  CHECK(fn["Nodes"]["items"][0]["metadata"]["name"] == "gpu-b");

  // Malformed bodies: a 400 with a message, and the server keeps serving.
  for (const std::string bad : {"{", "[]", R"({"Pod":{}})"}) {
    auto r = c.Post("/filter", bad, "application/json");
    REQUIRE(r);
    CHECK(r->status == 400);
    CHECK(json::parse(r->body)["Error"].get<std::string>().rfind("ExtenderArgs: ", 0) == 0);
  }
  auto health = c.Get("/healthz");
  REQUIRE(health);
  CHECK(health->body == "ok");

  CHECK(p.stop() == 0);
  CHECK(p.rest() == "gpuslice_extender: stopped");
}

TEST_CASE("a burst of filter and prioritize requests answers as the verbs do in process",
          "[examples]") {
  // The load benchmark's shape (bench_extender), small: many pods on one kept-alive connection.
  constexpr int k_burst = 200;
  extender_process p;
  auto c = client(p.port());
  auto local = example_tests::sample_service();
  json args = json::parse(read_file(data("filter_names.json")));
  for (int i = 0; i < k_burst; ++i) {
    auto& limits = args["Pod"]["spec"]["containers"][0]["resources"]["limits"];
    limits["nvidia.com/gpumem"] = std::to_string(1000 * (1 + i % 40));  // up to 40 GB: some fail
    limits["nvidia.com/gpucores"] = std::to_string(5 * (i % 21));
    args["Pod"]["metadata"]["uid"] = "burst-" + std::to_string(i);
    const std::string body = args.dump();
    auto f = c.Post("/filter", body, "application/json");
    auto r = c.Post("/prioritize", body, "application/json");
    REQUIRE(f);
    REQUIRE(r);
    INFO(body);
    CHECK(f->body == local->filter(body).body);
    CHECK(r->body == local->prioritize(body).body);
  }
  CHECK(p.stop() == 0);
}

TEST_CASE("with --apiserver, bind annotates the pod and creates its Binding", "[examples]") {
  // A stand-in for `kubectl proxy`: records the two calls bind makes.
  httplib::Server api;
  std::mutex mu;
  std::vector<std::pair<std::string, json>> calls;
  api.Patch(R"(/api/v1/namespaces/default/pods/infer-small)", [&](const httplib::Request& req,
                                                                  httplib::Response& res) {
    std::lock_guard lock(mu);
    calls.emplace_back("PATCH " + req.get_header_value("Content-Type"), json::parse(req.body));
    res.set_content("{}", "application/json");
  });
  api.Post(R"(/api/v1/namespaces/default/pods/infer-small/binding)",
           [&](const httplib::Request& req, httplib::Response& res) {
             std::lock_guard lock(mu);
             calls.emplace_back("POST", json::parse(req.body));
             res.status = 201;
             res.set_content("{}", "application/json");
           });
  const int api_port = api.bind_to_any_port("127.0.0.1");
  REQUIRE(api_port > 0);
  {
    // Stops the stand-in even when a REQUIRE below ends the test early.
    std::thread api_thread([&] { api.listen_after_bind(); });
    struct stopper {
      httplib::Server& s;
      std::thread& t;
      ~stopper() {
        s.stop();
        t.join();
      }
    } stop_api{api, api_thread};
    extender_process p({"--apiserver", "http://127.0.0.1:" + std::to_string(api_port)});
    auto c = client(p.port());
    post(c, "/filter", read_file(data("filter_names.json")));
    CHECK(post(c, "/bind", read_file(data("bind.json")))["Error"] == "");
    CHECK(p.stop() == 0);
  }

  REQUIRE(calls.size() == 2);
  CHECK(calls[0].first == "PATCH application/merge-patch+json");
  const json& ann = calls[0].second["metadata"]["annotations"];
  CHECK(ann["hami.io/vgpu-node"] == "gpu-a");
  CHECK(ann["hami.io/vgpu-devices-to-allocate"] == "GPU-a1,NVIDIA,4000,25:;");
  CHECK(ann["hami.io/vgpu-devices-allocated"] == "GPU-a1,NVIDIA,4000,25:;");
  CHECK(ann["hami.io/bind-phase"] == "allocating");
  CHECK(calls[1].first == "POST");
  CHECK(calls[1].second["kind"] == "Binding");
  CHECK(calls[1].second["target"] ==
        json::parse(R"({"apiVersion":"v1","kind":"Node","name":"gpu-a"})"));
  CHECK(calls[1].second["metadata"]["uid"] == "6f1c2a8e-1d3b-4c55-9a0e-3b9d7e2f4a10");
}

TEST_CASE("bad command lines are refused with one line", "[examples]") {
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{"--gpu-policy", "fgd"}, {"--port", "70000"}}) {
    std::string cmd = std::string(GPUSLICE_EXTENDER_EXE) + " --nodes " + sample("nodes.json");
    for (const auto& a : extra) cmd += " " + a;
    cmd += " 2>&1";
    FILE* f = popen(cmd.c_str(), "r");
    REQUIRE(f != nullptr);
    std::string out;
    char buf[256];
    while (fgets(buf, sizeof buf, f) != nullptr) out += buf;
    const int status = pclose(f);
    INFO(out);
    CHECK(WEXITSTATUS(status) != 0);
    CHECK(out.rfind("gpuslice_extender: ", 0) == 0);
  }
}
