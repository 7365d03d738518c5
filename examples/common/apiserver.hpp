#pragma once
/// \file
/// A small Kubernetes API-server client on cpp-httplib and nlohmann-json, shared by the example
/// programs (device plugin, monitor, extender, webhook).
///
/// Interface (stable; programs and tests build on it):
///
///   api_config           where the API server is and how to authenticate:
///     in_cluster_config()        KUBERNETES_SERVICE_HOST/PORT, the service account's token
///                                file (re-read on every request, as bound tokens rotate) and
///                                its CA bundle; HTTPS with certificate verification.
///     config_from_url(url)       "http://127.0.0.1:port" (tests) or "https://host:port".
///     load_kubeconfig(file)      kubeconfig.hpp: a kubeconfig's context (server, CA, client
///                                certificate and key, or token), outside the cluster.
///   api_client(cfg, deadline)    thread-safe: every call opens its own connection.
///     get(path)                  -> result<json>
///     list(path, list_options)   -> result<list_result>{items (array), resource_version}
///     watch(path, watch_options, on_event, canceller*)
///                                streams the API server's watch events (one JSON object per
///                                line) to on_event until the server ends the stream, the
///                                stream is idle for idle_timeout, on_event returns false, or
///                                the canceller fires; -> result<watch_outcome>{end, last
///                                resourceVersion}. An HTTP 410 or an ERROR event with code 410
///                                ends it with watch_end::gone (the version is too old: relist).
///     list_and_watch(path, selectors, on_list, on_event, canceller&)
///                                an informer's loop: list, then watch from the list's version,
///                                resume after a closed stream, relist after 410 Gone, back off
///                                after a transport error; returns when cancelled.
///     merge_patch(path, json)    PATCH application/merge-patch+json -> result<json>
///     json_patch(path, json)     PATCH application/json-patch+json (RFC 6902) -> result<json>
///     post(path, json)           POST (e.g. pods/binding) -> result<json>
///     put(path, json)            PUT (an update, e.g. of a Lease) -> result<json>
///     request(method, path, body, content type, deadline)   the general form of the above
///   Paths: pods_path(ns), pod_path(ns, name), binding_path(ns, name), nodes_path(),
///   node_path(name), lease_path(ns, name), events_path(ns); url_encode() for query values.
///
/// Errors are values: result<T> with a one-line message "METHOD path: what happened". An
/// error the API server answered carries std::error_code{status, http_category()}, so
/// http_status(err) gives 404, 409, 410...; a transport failure carries errc::io_error, a missed
/// deadline std::errc::timed_out, a cancelled call std::errc::operation_canceled, and a reply
/// that is not the expected JSON errc::invalid_value.
///
/// Deadlines: every request has one (the client's default, or the call's own). Connecting and
/// each read and write are bounded by what is left of it, and a body still arriving when it
/// passes is abandoned. A watch is bounded instead by its idle timeout and its server-side
/// timeoutSeconds.

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "gpuslice/result.hpp"

namespace gpuslice::kube {

using json = nlohmann::json;

/// The service account's files inside a pod.
inline constexpr std::string_view k_service_account_dir =
    "/var/run/secrets/kubernetes.io/serviceaccount";
/// Largest response body accepted (a LIST of every pod of a large cluster fits).
inline constexpr std::size_t k_max_response_bytes = std::size_t{512} << 20;
/// Largest single watch event line accepted.
inline constexpr std::size_t k_max_event_bytes = std::size_t{16} << 20;
/// The default deadline of a request.
inline constexpr std::chrono::milliseconds k_default_deadline{10000};

namespace detail {
/// HTTP status codes as an error category ("404 Not Found"). Thread-safe (stateless).
class http_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "http"; }
  std::string message(int status) const override {
    switch (status) {
      case 400:
        return "400 Bad Request";
      case 401:
        return "401 Unauthorized";
      case 403:
        return "403 Forbidden";
      case 404:
        return "404 Not Found";
      case 405:
        return "405 Method Not Allowed";
      case 409:
        return "409 Conflict";
      case 410:
        return "410 Gone";
      case 415:
        return "415 Unsupported Media Type";
      case 422:
        return "422 Unprocessable Entity";
      case 429:
        return "429 Too Many Requests";
      case 500:
        return "500 Internal Server Error";
      case 503:
        return "503 Service Unavailable";
      case 504:
        return "504 Gateway Timeout";
      default:
        return "HTTP " + std::to_string(status);
    }
  }
};
}  // namespace detail

/// The category of errors the API server answered: the value is the HTTP status.
inline const std::error_category& http_category() noexcept {
  static const detail::http_category_impl instance;
  return instance;
}

/// The HTTP status of an error the API server answered, or 0 for any other error.
inline int http_status(const error& e) noexcept {
  return e.code.category() == http_category() ? e.code.value() : 0;
}

/// Where the API server is and how to authenticate to it. A plain value.
struct api_config {
  std::string url;               ///< "http://host:port" or "https://host:port", no trailing slash
  std::string token;             ///< bearer token used when token_file is empty (may be empty)
  std::string token_file;        ///< file holding the bearer token, re-read on every request
  std::string ca_file;           ///< PEM CA bundle for https (empty: the system's)
  std::string client_cert_file;  ///< PEM client certificate for https (empty: none)
  std::string client_key_file;   ///< its PEM private key
  bool insecure_skip_tls_verify = false;  ///< kubeconfig's insecure-skip-tls-verify
};

/// A configuration for \p url ("http://127.0.0.1:8080", "https://10.0.0.1:6443"); an optional
/// bearer \p token. Errors name the URL and what a URL must look like. Pure, thread-safe.
inline result<api_config> config_from_url(std::string_view url, std::string token = {}) {
  std::string u(url);
  while (!u.empty() && u.back() == '/') u.pop_back();
  const bool https = u.rfind("https://", 0) == 0;
  const bool http = u.rfind("http://", 0) == 0;
  const std::size_t host_at = https ? 8 : 7;
  if ((!http && !https) || u.size() <= host_at) {
    return make_error(errc::invalid_value, "API server URL \"" + std::string(url) +
                                               "\": expected http://host:port or "
                                               "https://host:port");
  }
  if (u.find('/', host_at) != std::string::npos) {
    return make_error(errc::invalid_value, "API server URL \"" + std::string(url) +
                                               "\": expected no path after host:port");
  }
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
  if (https) {
    return make_error(errc::unsupported, "API server URL \"" + std::string(url) +
                                             "\": https needs cpp-httplib built with OpenSSL");
  }
#endif
  api_config c;
  c.url = std::move(u);
  c.token = std::move(token);
  return c;
}

/// The configuration of a program running in a pod: KUBERNETES_SERVICE_HOST and
/// KUBERNETES_SERVICE_PORT, and the service account's token and ca.crt under \p sa_dir. Errors
/// name the missing variable or file. Reads the environment: call before starting threads.
inline result<api_config> in_cluster_config(std::string_view sa_dir = k_service_account_dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (host == nullptr || *host == '\0' || port == nullptr || *port == '\0') {
    return make_error(errc::not_found,
                      "in-cluster config: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
                      "must be set (run in a pod, or give the API server's URL)");
  }
  std::string h(host);
  if (h.find(':') != std::string::npos && h.front() != '[') h = "[" + h + "]";  // IPv6
  auto cfg = config_from_url("https://" + h + ":" + port);
  if (!cfg) return cfg;
  const std::string dir(sa_dir);
  cfg->token_file = dir + "/token";
  cfg->ca_file = dir + "/ca.crt";
  for (const std::string* f : {&cfg->token_file, &cfg->ca_file}) {
    if (!std::ifstream(*f)) {
      return make_error(errc::not_found,
                        "in-cluster config: " + *f + ": cannot read the service account's file");
    }
  }
  return cfg;
}

/// Percent-encodes \p s for a URL query value (RFC 3986 unreserved characters kept). Pure.
inline std::string url_encode(std::string_view s) {
  static constexpr char k_hex[] = "0123456789ABCDEF";
  std::string out;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      out += ch;
    } else {
      out += '%';
      out += k_hex[c >> 4U];
      out += k_hex[c & 0xFU];
    }
  }
  return out;
}

/// Pods of namespace \p ns, or of all namespaces when \p ns is empty.
inline std::string pods_path(std::string_view ns = {}) {
  return ns.empty() ? "/api/v1/pods" : "/api/v1/namespaces/" + std::string(ns) + "/pods";
}
/// One pod.
inline std::string pod_path(std::string_view ns, std::string_view name) {
  return pods_path(ns) + "/" + std::string(name);
}
/// The binding subresource of a pod (POST a Binding to bind it to a node).
inline std::string binding_path(std::string_view ns, std::string_view name) {
  return pod_path(ns, name) + "/binding";
}
/// All nodes.
inline std::string nodes_path() { return "/api/v1/nodes"; }
/// One node.
inline std::string node_path(std::string_view name) {
  return nodes_path() + "/" + std::string(name);
}

/// A coordination.k8s.io/v1 Lease (leader election).
inline std::string lease_path(std::string_view ns, std::string_view name) {
  return "/apis/coordination.k8s.io/v1/namespaces/" + std::string(ns) + "/leases/" +
         std::string(name);
}
/// The core/v1 Events of namespace \p ns (POST one to record it).
inline std::string events_path(std::string_view ns) {
  return "/api/v1/namespaces/" + std::string(ns) + "/events";
}

/// Selectors and version of a LIST (and of the WATCH that follows it).
struct list_options {
  std::string label_selector;    ///< e.g. "app=gpu"
  std::string field_selector;    ///< e.g. "spec.nodeName=node-1"
  std::string resource_version;  ///< LIST: "" = most recent; WATCH: where to resume
};

/// What a LIST returns.
struct list_result {
  json items = json::array();    ///< the objects
  std::string resource_version;  ///< the list's metadata.resourceVersion: watch from here
};

/// One watch event.
struct watch_event {
  std::string type;  ///< ADDED, MODIFIED, DELETED, BOOKMARK or ERROR
  json object;       ///< the object (a Status for ERROR)
};

/// How a watch stream ended.
enum class watch_end {
  closed,     ///< the server ended it, or it was idle for idle_timeout: watch again from last
  gone,       ///< 410: the version is too old; list again
  stopped,    ///< on_event returned false
  cancelled,  ///< the canceller fired
};

/// What watch() returns.
struct watch_outcome {
  watch_end end = watch_end::closed;
  std::string resource_version;  ///< the last version seen (the start version if none)
};

/// Options of a WATCH.
struct watch_options {
  list_options selectors;  ///< label/field selectors and the version to watch from
  /// Server-side timeoutSeconds: the API server ends the stream after this long.
  int timeout_seconds = 300;
  /// Client-side: a stream quiet this long is ended as watch_end::closed (resume from there).
  std::chrono::milliseconds idle_timeout{60000};
  /// Ask for BOOKMARK events (they move the version on; on_event does not see them).
  bool allow_bookmarks = true;
};

/// Cancels watches and back-off sleeps from another thread. Thread-safe.
class canceller {
 public:
  /// Fires: wakes sleepers and shuts down the connection of the watch in progress.
  void cancel() {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (active_ != nullptr) active_->stop();
    cv_.notify_all();
  }
  /// True once cancel() was called.
  bool cancelled() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }
  /// Sleeps \p d or until cancelled; true when cancelled.
  bool sleep_for(std::chrono::milliseconds d) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, d, [this] { return cancelled_; });
  }

 private:
  friend class api_client;
  /// Registers the client of the watch in progress; false when already cancelled.
  bool attach(httplib::Client* c) {
    std::lock_guard<std::mutex> lock(mu_);
    active_ = c;
    return !cancelled_;
  }
  void detach() {
    std::lock_guard<std::mutex> lock(mu_);
    active_ = nullptr;
  }
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool cancelled_ = false;
  httplib::Client* active_ = nullptr;
};

/// A client of one API server. Immutable after construction, so every method is thread-safe;
/// each call opens its own connection.
class api_client {
 public:
  /// A client of \p cfg whose requests have \p deadline unless a call gives its own.
  explicit api_client(api_config cfg, std::chrono::milliseconds deadline = k_default_deadline)
      : cfg_(std::move(cfg)), deadline_(deadline) {}

  /// The configuration.
  const api_config& config() const noexcept { return cfg_; }

  /// GET \p path as JSON.
  result<json> get(const std::string& path, std::chrono::milliseconds deadline = {}) const {
    return request("GET", path, {}, {}, deadline);
  }

  /// LIST \p path with \p opt's selectors: the items and the list's resourceVersion.
  result<list_result> list(const std::string& path, const list_options& opt = {},
                           std::chrono::milliseconds deadline = {}) const {
    const std::string target = path + query(opt, false);
    auto r = request("GET", target, {}, {}, deadline);
    if (!r) return std::move(r).err();
    list_result out;
    const json& j = *r;
    const auto items = j.find("items");
    if (!j.is_object() || items == j.end() || !(items->is_array() || items->is_null())) {
      return make_error(errc::invalid_value, "GET " + target + ": expected a List with items");
    }
    if (items->is_array()) out.items = std::move((*r)["items"]);
    const auto meta = j.find("metadata");
    if (meta != j.end() && meta->is_object()) {
      const auto rv = meta->find("resourceVersion");
      if (rv != meta->end() && rv->is_string()) out.resource_version = rv->get<std::string>();
    }
    return out;
  }

  /// WATCH \p path from opt.selectors.resource_version, handing each event but BOOKMARKs to
  /// \p on_event (return false to stop). Returns how the stream ended and the last version
  /// seen; an error only when the stream could not be opened (or a line is not an event).
  result<watch_outcome> watch(const std::string& path, const watch_options& opt,
                              const std::function<bool(const watch_event&)>& on_event,
                              canceller* cancel = nullptr) const {
    watch_outcome out;
    out.resource_version = opt.selectors.resource_version;
    std::string target = path + query(opt.selectors, true) +
                         "&timeoutSeconds=" + std::to_string(opt.timeout_seconds);
    if (opt.allow_bookmarks) target += "&allowWatchBookmarks=true";
    httplib::Client cli(cfg_.url, cfg_.client_cert_file, cfg_.client_key_file);
    prepare(cli, deadline_);
    cli.set_read_timeout(opt.idle_timeout);
    if (cancel != nullptr && !cancel->attach(&cli)) {
      out.end = watch_end::cancelled;
      return out;
    }
    struct detach_guard {
      canceller* c;
      ~detach_guard() {
        if (c != nullptr) c->detach();
      }
    } guard{cancel};

    httplib::Request req;
    req.method = "GET";
    req.path = target;
    req.headers = headers();
    int status = 0;
    std::string line, error_body, bad_line;
    bool stopped = false;
    req.response_handler = [&](const httplib::Response& res) {
      status = res.status;
      return true;
    };
    req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
      if (status != 200) {
        if (error_body.size() < k_max_event_bytes) error_body.append(data, n);
        return true;
      }
      for (std::size_t i = 0; i < n; ++i) {
        if (data[i] != '\n') {
          line += data[i];
          if (line.size() > k_max_event_bytes) {
            bad_line = "an event line over " + std::to_string(k_max_event_bytes) + " bytes";
            return false;
          }
          continue;
        }
        if (line.find_first_not_of(" \r\t") == std::string::npos) {
          line.clear();
          continue;
        }
        json ev = json::parse(line, nullptr, false);
        line.clear();
        if (ev.is_discarded() || !ev.is_object() || !ev.contains("type") ||
            !ev["type"].is_string() || !ev.contains("object")) {
          bad_line = "expected a watch event {\"type\":...,\"object\":...} per line";
          return false;
        }
        watch_event e{ev["type"].get<std::string>(), std::move(ev["object"])};
        if (e.type == "ERROR") {
          const json* code =
              e.object.is_object() && e.object.contains("code") ? &e.object["code"] : nullptr;
          if (code != nullptr && code->is_number_integer() && code->get<int>() == 410) {
            out.end = watch_end::gone;
            return false;
          }
        }
        if (e.object.is_object()) {
          const auto meta = e.object.find("metadata");
          if (meta != e.object.end() && meta->is_object()) {
            const auto rv = meta->find("resourceVersion");
            if (rv != meta->end() && rv->is_string() && e.type != "ERROR") {
              out.resource_version = rv->get<std::string>();
            }
          }
        }
        if (e.type == "BOOKMARK") continue;
        if (!on_event(e)) {
          stopped = true;
          return false;
        }
      }
      return true;
    };
    const auto res = cli.send(req);
    if (!bad_line.empty()) {
      return make_error(errc::invalid_value, "WATCH " + target + ": " + bad_line);
    }
    if (out.end == watch_end::gone) return out;
    if (stopped) {
      out.end = watch_end::stopped;
      return out;
    }
    if (cancel != nullptr && cancel->cancelled()) {
      out.end = watch_end::cancelled;
      return out;
    }
    if (status == 410) {
      out.end = watch_end::gone;
      return out;
    }
    if (status != 0 && status != 200) return status_error("WATCH", target, status, error_body);
    if (status == 0) {
      return make_error(errc::io_error,
                        "WATCH " + target + ": " +
                            (res ? std::string("no response") : httplib::to_string(res.error())));
    }
    out.end = watch_end::closed;  // ended by the server, or idle past idle_timeout
    return out;
  }

  /// An informer's loop over \p path: LIST (handing items and version to \p on_list, which
  /// replaces whatever the caller held), then WATCH from that version, handing events to
  /// \p on_event; watch again after a closed stream, LIST again after 410 Gone, and after an
  /// error report it to \p on_error (when given) and wait \p backoff. Returns when \p cancel
  /// fires or a callback returns false. Blocks the calling thread.
  void list_and_watch(const std::string& path, const list_options& selectors,
                      const std::function<bool(list_result&)>& on_list,
                      const std::function<bool(const watch_event&)>& on_event, canceller& cancel,
                      const std::function<void(const error&)>& on_error = {},
                      std::chrono::milliseconds backoff = std::chrono::milliseconds{1000},
                      watch_options wopt = {}) const {
    std::string rv;
    while (!cancel.cancelled()) {
      if (rv.empty()) {
        list_options lo = selectors;
        lo.resource_version.clear();
        auto l = list(path, lo);
        if (!l) {
          if (on_error) on_error(l.err());
          if (cancel.sleep_for(backoff)) return;
          continue;
        }
        rv = l->resource_version;
        if (!on_list(*l)) return;
        if (rv.empty()) rv = "0";
      }
      wopt.selectors = selectors;
      wopt.selectors.resource_version = rv;
      auto w = watch(path, wopt, on_event, &cancel);
      if (!w) {
        if (on_error) on_error(w.err());
        if (cancel.sleep_for(backoff)) return;
        continue;
      }
      switch (w->end) {
        case watch_end::gone:
          rv.clear();
          break;
        case watch_end::closed:
          rv = w->resource_version;
          break;
        case watch_end::stopped:
        case watch_end::cancelled:
          return;
      }
    }
  }

  /// PATCH \p path with a JSON merge patch (RFC 7386): the object as the server then holds it.
  result<json> merge_patch(const std::string& path, const json& patch,
                           std::chrono::milliseconds deadline = {}) const {
    return request("PATCH", path, patch.dump(), "application/merge-patch+json", deadline);
  }

  /// PATCH \p path with a JSON patch (RFC 6902, an array of operations).
  result<json> json_patch(const std::string& path, const json& ops,
                          std::chrono::milliseconds deadline = {}) const {
    return request("PATCH", path, ops.dump(), "application/json-patch+json", deadline);
  }

  /// POST \p body to \p path (e.g. a Binding to binding_path()).
  result<json> post(const std::string& path, const json& body,
                    std::chrono::milliseconds deadline = {}) const {
    return request("POST", path, body.dump(), "application/json", deadline);
  }

  /// PUT \p body to \p path (an update; a stale metadata.resourceVersion is a 409).
  result<json> put(const std::string& path, const json& body,
                   std::chrono::milliseconds deadline = {}) const {
    return request("PUT", path, body.dump(), "application/json", deadline);
  }

  /// Sends \p method \p path (with \p body of \p content_type when not empty) and parses the
  /// 2xx reply as JSON (an empty reply is null). \p deadline 0 means the client's default.
  result<json> request(const std::string& method, const std::string& path, const std::string& body,
                       const std::string& content_type,
                       std::chrono::milliseconds deadline = {}) const {
    using clock = std::chrono::steady_clock;
    if (deadline.count() <= 0) deadline = deadline_;
    const auto until = clock::now() + deadline;
    httplib::Client cli(cfg_.url, cfg_.client_cert_file, cfg_.client_key_file);
    prepare(cli, deadline);
    httplib::Request req;
    req.method = method;
    req.path = path;
    req.headers = headers();
    if (!content_type.empty()) {
      req.body = body;
      req.set_header("Content-Type", content_type);
    }
    std::string reply;
    bool late = false, too_big = false;
    req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
      if (clock::now() > until) {
        late = true;
        return false;
      }
      if (reply.size() + n > k_max_response_bytes) {
        too_big = true;
        return false;
      }
      reply.append(data, n);
      return true;
    };
    const auto res = cli.send(req);
    const std::string what = method + " " + path;
    if (late || (!res &&
                 (res.error() == httplib::Error::Read || res.error() == httplib::Error::Write ||
                  res.error() == httplib::Error::Connection) &&
                 clock::now() >= until)) {
      return error{std::make_error_code(std::errc::timed_out),
                   what + ": no complete reply within " + std::to_string(deadline.count()) + " ms"};
    }
    if (too_big) {
      return make_error(errc::capacity,
                        what + ": reply over " + std::to_string(k_max_response_bytes) + " bytes");
    }
    if (!res) {
      return make_error(errc::io_error,
                        what + ": " + httplib::to_string(res.error()) + " (" + cfg_.url + ")");
    }
    if (res->status < 200 || res->status > 299) {
      return status_error(method, path, res->status, reply);
    }
    if (reply.empty()) return json();
    json j = json::parse(reply, nullptr, false);
    if (j.is_discarded()) {
      return make_error(errc::invalid_value,
                        what + ": " + std::to_string(res->status) + " reply is not JSON");
    }
    return j;
  }

 private:
  /// "?labelSelector=..&fieldSelector=..&resourceVersion=.." (+ watch=1).
  static std::string query(const list_options& o, bool watch) {
    std::string q;
    auto add = [&q](std::string_view k, const std::string& v) {
      q += q.empty() ? '?' : '&';
      q += k;
      q += '=';
      q += url_encode(v);
    };
    if (watch) add("watch", "1");
    if (!o.label_selector.empty()) add("labelSelector", o.label_selector);
    if (!o.field_selector.empty()) add("fieldSelector", o.field_selector);
    if (!o.resource_version.empty()) add("resourceVersion", o.resource_version);
    return q;
  }

  /// The headers of every request: JSON, and the bearer token when there is one.
  httplib::Headers headers() const {
    httplib::Headers h{{"Accept", "application/json"}};
    std::string token = cfg_.token;
    if (!cfg_.token_file.empty()) {
      std::ifstream f(cfg_.token_file);
      std::ostringstream s;
      s << f.rdbuf();
      token = s.str();
      while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
    }
    if (!token.empty()) h.emplace("Authorization", "Bearer " + token);
    return h;
  }

  /// Timeouts and TLS settings of a fresh connection.
  void prepare(httplib::Client& cli, std::chrono::milliseconds deadline) const {
    cli.set_connection_timeout(deadline);
    cli.set_read_timeout(deadline);
    cli.set_write_timeout(deadline);
    cli.set_keep_alive(false);
#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
    if (!cfg_.ca_file.empty()) cli.set_ca_cert_path(cfg_.ca_file);
    cli.enable_server_certificate_verification(!cfg_.insecure_skip_tls_verify);
#endif
  }

  /// The error of a non-2xx reply, with the Status object's message when the body is one.
  static error status_error(const std::string& method, const std::string& path, int status,
                            const std::string& body) {
    std::string detail;
    const json j = json::parse(body, nullptr, false);
    if (j.is_object() && j.contains("message") && j["message"].is_string()) {
      detail = j["message"].get<std::string>();
    } else {
      detail = body.substr(0, body.find('\n'));
      constexpr std::size_t k_max_detail = 200;
      if (detail.size() > k_max_detail) detail = detail.substr(0, k_max_detail) + "...";
    }
    std::string msg = method + " " + path + ": " + http_category().message(status);
    if (!detail.empty()) msg += ": " + detail;
    return error{std::error_code(status, http_category()), std::move(msg)};
  }

  api_config cfg_;
  std::chrono::milliseconds deadline_;
};

}  // namespace gpuslice::kube
