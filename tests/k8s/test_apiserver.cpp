// examples/common/apiserver.hpp against the fake API server (tests/k8s/fake_apiserver.py, run
// as a child process on 127.0.0.1): reads, selectors, patches, conflicts, bindings, watches with
// resumption and 410 Gone, deadlines, injected faults and cancellation.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "apiserver.hpp"
#include "kubeconfig.hpp"

extern char** environ;

namespace {

using gpuslice::kube::api_client;
using gpuslice::kube::json;
using namespace std::chrono_literals;

/// The fake API server as a child process; its stdin is a pipe whose closing stops it.
class fake_server {
 public:
  explicit fake_server(std::vector<std::string> extra = {}) {
    int in[2], out[2];
    if (pipe(in) != 0 || pipe(out) != 0) throw std::runtime_error("pipe failed");
    std::string script = std::string(GPUSLICE_K8S_TEST_DIR) + "/fake_apiserver.py";
    std::vector<char*> argv{const_cast<char*>("python3"), script.data()};
    for (auto& e : extra) argv.push_back(e.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, in[1]);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    const int rc = posix_spawnp(&pid_, "python3", &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    stdin_ = in[1];
    if (rc != 0) throw std::runtime_error("cannot start python3 fake_apiserver.py");
    FILE* f = fdopen(out[0], "r");
    char line[256] = {};
    if (f == nullptr || fgets(line, sizeof line, f) == nullptr) {
      throw std::runtime_error("fake API server printed no URL");
    }
    fclose(f);
    url_ = line;
    while (!url_.empty() && url_.back() == '\n') url_.pop_back();
  }
  ~fake_server() {
    close(stdin_);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  fake_server(const fake_server&) = delete;
  fake_server& operator=(const fake_server&) = delete;
  const std::string& url() const { return url_; }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  std::string url_;
};

api_client client_of(const fake_server& s, std::chrono::milliseconds deadline = 5000ms) {
  auto cfg = gpuslice::kube::config_from_url(s.url());
  REQUIRE(cfg.ok());
  return api_client(*cfg, deadline);
}

json pod(const std::string& name, const std::string& node) {
  json p = {{"metadata", {{"name", name}, {"annotations", json::object()}}},
            {"spec", {{"containers", json::array({{{"name", "main"}}})}}}};
  if (!node.empty()) p["spec"]["nodeName"] = node;
  return p;
}

}  // namespace

TEST_CASE("config_from_url refuses what is not http(s)://host:port", "[apiserver]") {
  for (const char* bad : {"", "127.0.0.1:80", "ftp://x", "http://", "http://h:1/api"}) {
    auto c = gpuslice::kube::config_from_url(bad);
    REQUIRE_FALSE(c.ok());
    CHECK(c.message().find("expected") != std::string::npos);
    CHECK(c.message().find('\n') == std::string::npos);
  }
  auto ok = gpuslice::kube::config_from_url("http://127.0.0.1:8080/");
  REQUIRE(ok.ok());
  CHECK(ok->url == "http://127.0.0.1:8080");
}

TEST_CASE("in_cluster_config names what is missing", "[apiserver]") {
  unsetenv("KUBERNETES_SERVICE_HOST");
  auto c = gpuslice::kube::in_cluster_config();
  REQUIRE_FALSE(c.ok());
  CHECK(c.message().find("KUBERNETES_SERVICE_HOST") != std::string::npos);
  setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1", 1);
  setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  auto d = gpuslice::kube::in_cluster_config("/nonexistent-sa");
  REQUIRE_FALSE(d.ok());
  CHECK(d.message().find("/nonexistent-sa/token") != std::string::npos);
  unsetenv("KUBERNETES_SERVICE_HOST");
  unsetenv("KUBERNETES_SERVICE_PORT");
}

TEST_CASE("reads, selectors, patches, conflicts and bindings", "[apiserver]") {
  fake_server s;
  const api_client c = client_of(s);
  namespace k = gpuslice::kube;
  REQUIRE(c.post(k::pods_path("default"), pod("a", "n1")).ok());
  REQUIRE(c.post(k::pods_path("default"), pod("b", "n2")).ok());
  REQUIRE(c.post(k::pods_path("default"), pod("u", "")).ok());

  auto l = c.list(k::pods_path(), {"", "spec.nodeName=n1", ""});
  REQUIRE(l.ok());
  REQUIRE(l->items.size() == 1);
  CHECK(l->items[0]["metadata"]["name"] == "a");
  CHECK_FALSE(l->resource_version.empty());

  auto missing = c.get(k::pod_path("default", "zzz"));
  REQUIRE_FALSE(missing.ok());
  CHECK(k::http_status(missing.err()) == 404);
  CHECK(missing.message() ==
        "GET /api/v1/namespaces/default/pods/zzz: 404 Not Found: pods \"zzz\" not found");

  auto bad_sel = c.list(k::pods_path(), {"", "spec.bogus=1", ""});
  REQUIRE_FALSE(bad_sel.ok());
  CHECK(k::http_status(bad_sel.err()) == 400);

  auto patched =
      c.merge_patch(k::pod_path("default", "a"),
                    {{"metadata", {{"annotations", {{"hami.io/bind-phase", "success"}}}}}});
  REQUIRE(patched.ok());
  CHECK((*patched)["metadata"]["annotations"]["hami.io/bind-phase"] == "success");

  // a stale resourceVersion precondition: 409, nothing changed
  auto stale = c.merge_patch(k::pod_path("default", "a"),
                             {{"metadata", {{"resourceVersion", "1"}, {"labels", {{"x", "y"}}}}}});
  REQUIRE_FALSE(stale.ok());
  CHECK(k::http_status(stale.err()) == 409);
  CHECK(stale.message().find("409 Conflict") != std::string::npos);
  auto now = c.get(k::pod_path("default", "a"));
  REQUIRE(now.ok());
  CHECK_FALSE((*now)["metadata"].contains("labels"));

  auto jp = c.json_patch(
      k::pod_path("default", "a"),
      json::array({{{"op", "add"}, {"path", "/metadata/labels"}, {"value", {{"gpu", "yes"}}}}}));
  REQUIRE(jp.ok());
  CHECK((*jp)["metadata"]["labels"]["gpu"] == "yes");

  const json binding = {{"apiVersion", "v1"},
                        {"kind", "Binding"},
                        {"metadata", {{"name", "u"}}},
                        {"target", {{"apiVersion", "v1"}, {"kind", "Node"}, {"name", "n1"}}}};
  REQUIRE(c.post(k::binding_path("default", "u"), binding).ok());
  auto again = c.post(k::binding_path("default", "u"), binding);
  REQUIRE_FALSE(again.ok());
  CHECK(k::http_status(again.err()) == 409);
  auto bound = c.get(k::pod_path("default", "u"));
  REQUIRE(bound.ok());
  CHECK((*bound)["spec"]["nodeName"] == "n1");
}

TEST_CASE("a watch streams changes after its version and resumes from the last one",
          "[apiserver]") {
  fake_server s;
  const api_client c = client_of(s);
  namespace k = gpuslice::kube;
  REQUIRE(c.post(k::pods_path("default"), pod("a", "n1")).ok());
  auto l = c.list(k::pods_path(), {"", "spec.nodeName=n1", ""});
  REQUIRE(l.ok());

  std::thread writer([&] {
    std::this_thread::sleep_for(100ms);
    (void)c.post(k::pods_path("default"), pod("other", "n2"));
    (void)c.post(k::pods_path("default"), pod("b", "n1"));
    (void)c.merge_patch(k::pod_path("default", "a"), {{"metadata", {{"labels", {{"l", "1"}}}}}});
  });
  std::vector<std::string> seen;
  k::watch_options wo;
  wo.selectors = {"", "spec.nodeName=n1", l->resource_version};
  auto w = c.watch(k::pods_path(), wo, [&](const k::watch_event& e) {
    seen.push_back(e.type + " " + e.object["metadata"]["name"].get<std::string>());
    return seen.size() < 2;
  });
  writer.join();
  REQUIRE(w.ok());
  CHECK(w->end == k::watch_end::stopped);
  CHECK(seen == std::vector<std::string>{"ADDED b", "MODIFIED a"});

  // resuming from b's version sees only a's change; the server's timeout closes the stream
  auto b = c.get(k::pod_path("default", "b"));
  REQUIRE(b.ok());
  seen.clear();
  wo.selectors.resource_version = (*b)["metadata"]["resourceVersion"];
  wo.timeout_seconds = 1;
  auto w2 = c.watch(k::pods_path(), wo, [&](const k::watch_event& e) {
    seen.push_back(e.type + " " + e.object["metadata"]["name"].get<std::string>());
    return true;
  });
  REQUIRE(w2.ok());
  CHECK(w2->end == k::watch_end::closed);
  CHECK(seen == std::vector<std::string>{"MODIFIED a"});
  CHECK(w2->resource_version != wo.selectors.resource_version);
}

TEST_CASE("a too-old version is 410 Gone, and list_and_watch relists", "[apiserver]") {
  fake_server s;
  const api_client c = client_of(s);
  namespace k = gpuslice::kube;
  auto first = c.post(k::pods_path("default"), pod("a", "n1"));
  REQUIRE(first.ok());
  REQUIRE(c.post(k::pods_path("default"), pod("b", "n1")).ok());
  REQUIRE(c.post("/fake/compact", json::object()).ok());
  k::watch_options wo;
  wo.selectors.resource_version = (*first)["metadata"]["resourceVersion"];
  auto w = c.watch(k::pods_path(), wo, [](const k::watch_event&) { return true; });
  REQUIRE(w.ok());
  CHECK(w->end == k::watch_end::gone);

  // the informer loop: lists, watches, relists after 410, until cancelled
  k::canceller cancel;
  k::watch_options one_second_watches;
  one_second_watches.timeout_seconds = 1;
  std::atomic<int> lists{0};
  std::atomic<int> short_lists{0};
  std::atomic<int> adds{0};
  std::thread informer([&] {
    c.list_and_watch(
        k::pods_path(), {},
        [&](k::list_result& r) {
          if (r.items.size() < 2) short_lists.fetch_add(1);  // Catch2 asserts on one thread
          ++lists;
          return true;
        },
        [&](const k::watch_event& e) {
          if (e.type == "ADDED") ++adds;
          return true;
        },
        cancel, {}, 50ms, one_second_watches);
  });
  auto wait_for = [](auto pred) {
    for (int i = 0; i < 500 && !pred(); ++i) std::this_thread::sleep_for(10ms);
    return pred();
  };
  REQUIRE(wait_for([&] { return lists.load() == 1; }));
  std::this_thread::sleep_for(200ms);  // the watch is open
  REQUIRE(c.post(k::pods_path("default"), pod("c", "n1")).ok());
  REQUIRE(wait_for([&] { return adds.load() == 1; }));
  // the next watch (the server ends each after a second) is answered 410: the loop relists
  REQUIRE(c.post("/fake/fault", {{"method", "GET"}, {"path", "watch=1"}, {"status", 410}}).ok());
  REQUIRE(wait_for([&] { return lists.load() == 2; }));
  REQUIRE(c.post(k::pods_path("default"), pod("d", "n1")).ok());
  REQUIRE(wait_for([&] { return adds.load() == 2; }));
  cancel.cancel();
  informer.join();
  CHECK(lists.load() == 2);
  CHECK(short_lists.load() == 0);
}

TEST_CASE("deadlines, injected errors and cancellation end calls with a clear error",
          "[apiserver]") {
  fake_server s;
  const api_client c = client_of(s, 400ms);
  namespace k = gpuslice::kube;
  REQUIRE(c.post("/fake/fault", {{"path", "/nodes/n1"}, {"status", 503}}).ok());
  auto e = c.get(k::node_path("n1"));
  REQUIRE_FALSE(e.ok());
  CHECK(k::http_status(e.err()) == 503);
  CHECK(e.message() == "GET /api/v1/nodes/n1: 503 Service Unavailable: injected fault");

  REQUIRE(c.post("/fake/fault", {{"path", "/nodes/n2"}, {"hang", true}}).ok());
  const auto t0 = std::chrono::steady_clock::now();
  auto h = c.get(k::node_path("n2"));
  const auto took = std::chrono::steady_clock::now() - t0;
  REQUIRE_FALSE(h.ok());
  CHECK(h.code() == std::make_error_code(std::errc::timed_out));
  CHECK(took >= 400ms);
  CHECK(took < 5s);  // bounded by the deadline, not by the server
  REQUIRE(c.post("/fake/clear-faults", json::object()).ok());

  // a watch blocked on a quiet stream ends promptly when cancelled
  k::canceller cancel;
  std::thread stopper([&] {
    std::this_thread::sleep_for(200ms);
    cancel.cancel();
  });
  k::watch_options wo;
  wo.idle_timeout = 30s;
  const auto t1 = std::chrono::steady_clock::now();
  auto w = c.watch(
      k::pods_path(), wo, [](const k::watch_event&) { return true; }, &cancel);
  stopper.join();
  REQUIRE(w.ok());
  CHECK(w->end == k::watch_end::cancelled);
  CHECK(std::chrono::steady_clock::now() - t1 < 10s);

  auto unreachable = gpuslice::kube::config_from_url("http://127.0.0.1:1");
  REQUIRE(unreachable.ok());
  auto u = api_client(*unreachable, 500ms).get("/api/v1/nodes");
  REQUIRE_FALSE(u.ok());
  CHECK(u.message().find("GET /api/v1/nodes: ") == 0);
}

namespace {
/// A temporary directory removed at scope exit.
struct temp_dir {
  std::string path;
  temp_dir() {
    char tmpl[] = "/tmp/gsapiXXXXXX";
    if (mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = tmpl;
  }
  ~temp_dir() { std::system(("rm -rf " + path).c_str()); }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
};

void write_file(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "w");
  REQUIRE(f != nullptr);
  std::fputs(text.c_str(), f);
  std::fclose(f);
}

/// A self-signed certificate for 127.0.0.1 (cert.pem, key.pem) made by openssl in \p dir.
bool make_certificate(const std::string& dir, const std::string& name) {
  const std::string cmd =
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
      " -addext subjectAltName=IP:127.0.0.1 -keyout " +
      dir + "/" + name + ".key -out " + dir + "/" + name + ".pem >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}
}  // namespace

TEST_CASE("in cluster: HTTPS with the service account's CA and a token re-read per request",
          "[apiserver]") {
  temp_dir d;
  if (!make_certificate(d.path, "server") || !make_certificate(d.path, "other")) {
    WARN("openssl is missing: the HTTPS case is not run");
    return;
  }
  fake_server s({"--tls", d.path + "/server.pem", d.path + "/server.key"});
  REQUIRE(s.url().rfind("https://127.0.0.1:", 0) == 0);
  const std::string port = s.url().substr(s.url().rfind(':') + 1);
  const std::string sa = d.path + "/sa";
  REQUIRE(std::system(("mkdir -p " + sa).c_str()) == 0);
  write_file(sa + "/token", "token-one\n");
  std::system(("cp " + d.path + "/server.pem " + sa + "/ca.crt").c_str());
  setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1", 1);
  setenv("KUBERNETES_SERVICE_PORT", port.c_str(), 1);
  auto cfg = gpuslice::kube::in_cluster_config(sa);
  unsetenv("KUBERNETES_SERVICE_HOST");
  unsetenv("KUBERNETES_SERVICE_PORT");
  REQUIRE(cfg.ok());
  CHECK(cfg->url == "https://127.0.0.1:" + port);
  const api_client c(*cfg, 5000ms);
  REQUIRE(c.get("/api/v1/nodes").ok());
  write_file(sa + "/token", "token-two\n");  // a rotated token is used at the next request
  REQUIRE(c.get("/api/v1/pods").ok());
  auto reqs = c.get("/fake/requests");
  REQUIRE(reqs.ok());
  REQUIRE(reqs->size() == 2);
  CHECK((*reqs)[0]["authorization"] == "Bearer token-one");
  CHECK((*reqs)[1]["authorization"] == "Bearer token-two");

  // a server whose certificate the CA did not sign is refused
  gpuslice::kube::api_config wrong = *cfg;
  wrong.ca_file = d.path + "/other.pem";
  auto refused = api_client(wrong, 5000ms).get("/api/v1/nodes");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.message().find("GET /api/v1/nodes: ") == 0);
  CHECK(gpuslice::kube::http_status(refused.err()) == 0);
}

TEST_CASE("a kubeconfig's YAML subset parses as kubectl and kind write it", "[apiserver]") {
  const std::string text = R"(apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: QUJD
    server: https://127.0.0.1:6443   # kind's port
  name: kind-kind
contexts:
- context:
    cluster: kind-kind
    user: "kind-kind"
  name: kind-kind
- name: other
  context:
    cluster: 'it''s'
    user: u
current-context: kind-kind
kind: Config
preferences: {}
users:
  - name: kind-kind
    user:
      token: "a#b"
      insecure: true
)";
  auto doc = gpuslice::kube::parse_kubeconfig_yaml(text, "kc");
  REQUIRE(doc.ok());
  CHECK((*doc)["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443");
  CHECK((*doc)["clusters"][0]["name"] == "kind-kind");
  CHECK((*doc)["contexts"][0]["context"]["user"] == "kind-kind");
  CHECK((*doc)["contexts"][1]["context"]["cluster"] == "it's");
  CHECK((*doc)["contexts"][1]["name"] == "other");
  CHECK((*doc)["current-context"] == "kind-kind");
  CHECK((*doc)["preferences"] == json::object());
  CHECK((*doc)["users"][0]["user"]["token"] == "a#b");
  CHECK((*doc)["users"][0]["user"]["insecure"] == true);
  CHECK(gpuslice::kube::parse_kubeconfig_yaml(R"({"current-context":"x"})", "kc")
            ->at("current-context") == "x");
  // What the subset does not cover is one line naming the file and line.
  auto block = gpuslice::kube::parse_kubeconfig_yaml("a: b\nc: |\n  text\n", "kc");
  REQUIRE_FALSE(block.ok());
  CHECK(block.message().rfind("kc:2: a block scalar", 0) == 0);
  auto tab = gpuslice::kube::parse_kubeconfig_yaml("a:\n\tb: c\n", "kc");
  REQUIRE_FALSE(tab.ok());
  CHECK(tab.message().rfind("kc:2: a tab", 0) == 0);
}

namespace {
/// A certificate for \p cn signed by dir/ca.pem (made here when absent), as name.pem/name.key.
bool make_signed(const std::string& dir, const std::string& name, const std::string& cn,
                 const std::string& ext) {
  const std::string d = dir + "/";
  const std::string cmd =
      "cd " + dir + " && ( [ -f ca.pem ] || openssl req -x509 -newkey rsa:2048 -nodes -days 1 " +
      "-subj /CN=test-ca -keyout ca.key -out ca.pem ) >/dev/null 2>&1 && " +
      "openssl req -newkey rsa:2048 -nodes -subj /CN=" + cn + " -keyout " + name + ".key -out " +
      name + ".csr >/dev/null 2>&1 && printf '" + ext + "' > " + name + ".ext && " +
      "openssl x509 -req -in " + name + ".csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 " +
      "-extfile " + name + ".ext -out " + name + ".pem >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

std::string base64_of(const std::string& path) {
  FILE* p = popen(("openssl base64 -A -in " + path).c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
  pclose(p);
  return out;
}
}  // namespace

TEST_CASE("a kubeconfig's context reaches the API server with a client certificate or a token",
          "[apiserver]") {
  temp_dir d;
  if (!make_signed(d.path, "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1") ||
      !make_signed(d.path, "client", "gpuslice-extender", "extendedKeyUsage=clientAuth")) {
    WARN("openssl is missing: the kubeconfig case is not run");
    return;
  }
  fake_server s(
      {"--tls", d.path + "/server.pem", d.path + "/server.key", "--client-ca", d.path + "/ca.pem"});
  REQUIRE(s.url().rfind("https://127.0.0.1:", 0) == 0);
  const std::string data = d.path + "/data";
  REQUIRE(std::system(("mkdir -m 700 " + data).c_str()) == 0);
  const std::string kc = d.path + "/kubeconfig";
  write_file(kc,
             "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n"
             "    server: " +
                 s.url() + "\n    certificate-authority-data: " + base64_of(d.path + "/ca.pem") +
                 "\n- name: by-path\n  cluster:\n    server: " + s.url() +
                 "\n    certificate-authority: ca.pem\n"
                 "users:\n- name: cert\n  user:\n    client-certificate-data: " +
                 base64_of(d.path + "/client.pem") +
                 "\n    client-key-data: " + base64_of(d.path + "/client.key") +
                 "\n- name: tok\n  user:\n    token: sekret\n"
                 "- name: plugin\n  user:\n    exec:\n      command: aws\n"
                 "contexts:\n- name: with-cert\n  context: {cluster: c}\n"
                 "current-context: with-cert\n");
  // A flow mapping other than {} is outside the subset: one line naming the place.
  auto flow = gpuslice::kube::load_kubeconfig(kc, data);
  REQUIRE_FALSE(flow.ok());
  CHECK(flow.message().find("kubeconfig " + kc + ":") == 0);

  std::string text;
  {
    std::ifstream f(kc);
    std::ostringstream ss;
    ss << f.rdbuf();
    text = ss.str();
  }
  text = text.substr(0, text.find("contexts:")) +
         "contexts:\n- name: with-cert\n  context:\n    cluster: c\n    user: cert\n"
         "- name: with-token\n  context:\n    cluster: by-path\n    user: tok\n"
         "- name: with-plugin\n  context:\n    cluster: c\n    user: plugin\n"
         "current-context: with-cert\n";
  write_file(kc, text);

  auto cert = gpuslice::kube::load_kubeconfig(kc, data);
  REQUIRE(cert.ok());
  CHECK(cert->url == s.url());
  CHECK(cert->client_cert_file == data + "/client.crt");
  REQUIRE(api_client(*cert, 5000ms).get("/api/v1/nodes").ok());

  auto tok = gpuslice::kube::load_kubeconfig(kc, data, "with-token");
  REQUIRE(tok.ok());
  CHECK(tok->ca_file == d.path + "/ca.pem");  // relative to the kubeconfig's directory
  const api_client by_token(*tok, 5000ms);
  REQUIRE(by_token.get("/api/v1/pods").ok());
  auto reqs = by_token.get("/fake/requests");
  REQUIRE(reqs.ok());
  REQUIRE(reqs->size() == 2);
  CHECK((*reqs)[0]["client_cn"] == "gpuslice-extender");
  CHECK((*reqs)[0]["authorization"] == "");
  CHECK((*reqs)[1]["client_cn"] == "");
  CHECK((*reqs)[1]["authorization"] == "Bearer sekret");

  auto plugin = gpuslice::kube::load_kubeconfig(kc, data, "with-plugin");
  REQUIRE_FALSE(plugin.ok());
  CHECK(plugin.message() == "kubeconfig " + kc +
                                ": user plugin: exec is not supported; expected token, "
                                "tokenFile or client-certificate and client-key");
  auto missing = gpuslice::kube::load_kubeconfig(kc, data, "nowhere");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.message() == "kubeconfig " + kc + ": contexts: no context named \"nowhere\"");
}
