#pragma once
/// \file
/// The extender's HTTP face (cpp-httplib): limits and routes, shared by the program and its
/// load benchmark so both measure the same server.
///   POST /filter /prioritize /bind /release    the verbs of extender.hpp
///   GET  /state                                node device usage and bindings
///   GET  /metrics                              Prometheus text
///   GET  /healthz                              "ok"
///   GET  /readyz                               "ok", or 503 on a replica that is not the leader
/// With a token (route_options), the verbs change state (filter caches the pod that bind then
/// places), so each needs the token: as the URL prefix, POST /TOKEN/bind (kube-scheduler's
/// extender urlPrefix can carry it; it has no field for a header), or as an
/// `Authorization: Bearer TOKEN` header. The GET endpoints stay open.
/// Every connection gets its own thread (up to k_max_connection_threads), so idle keep-alive
/// connections, however many a client keeps, never hold back another connection's request.

#include <fmt/core.h>
#include <httplib.h>

#include <condition_variable>
#include <cstddef>
#include <ctime>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "extender.hpp"

namespace gpuslice::extender {

/// Largest request body: a NodeList of a few thousand nodes (nodeCacheCapable: false).
inline constexpr std::size_t k_max_body_bytes = std::size_t{64} << 20;
/// Seconds a connection may stall while reading a request or writing a reply.
inline constexpr time_t k_io_timeout_s = 5;
/// Requests served on one kept-alive connection before it is closed.
inline constexpr std::size_t k_keep_alive_requests = 10000;
/// Connections served at once, one thread each; more wait for one to end (a bound on threads,
/// far above what kube-scheduler opens: its HTTP client keeps a few per extender).
inline constexpr std::size_t k_max_connection_threads = 512;

/// cpp-httplib's task queue with a thread per connection instead of a fixed pool, in which
/// each idle keep-alive connection holds a worker for the keep-alive timeout. Thread-safe.
class connection_threads final : public httplib::TaskQueue {
 public:
  explicit connection_threads(std::size_t max) : max_(max) {}
  ~connection_threads() override { shutdown(); }
  connection_threads(const connection_threads&) = delete;
  connection_threads& operator=(const connection_threads&) = delete;

  void enqueue(std::function<void()> fn) override {
    std::unique_lock lock(mu_);
    if (running_ >= max_) {
      waiting_.push_back(std::move(fn));
      return;
    }
    start(std::move(fn));
  }

  /// Waits for every connection's thread to end (the server stops reading first).
  void shutdown() override {
    std::unique_lock lock(mu_);
    done_.wait(lock, [&] { return running_ == 0; });
  }

 private:
  /// Caller holds mu_.
  void start(std::function<void()> fn) {
    ++running_;
    std::thread([this, fn = std::move(fn)]() mutable {
      while (true) {
        fn();
        std::unique_lock lock(mu_);
        if (waiting_.empty()) {
          --running_;
          if (running_ == 0) done_.notify_all();
          return;
        }
        fn = std::move(waiting_.front());
        waiting_.pop_front();
      }
    }).detach();
  }

  const std::size_t max_;
  std::mutex mu_;
  std::condition_variable done_;
  std::size_t running_ = 0;
  std::deque<std::function<void()>> waiting_;
};

/// Sets the server's limits (body size, timeouts, keep-alive) and TCP_NODELAY. Not thread-safe:
/// call before listening.
inline void configure(httplib::Server& svr) {
  svr.set_payload_max_length(k_max_body_bytes);
  svr.set_read_timeout(k_io_timeout_s, 0);
  svr.set_write_timeout(k_io_timeout_s, 0);
  svr.set_keep_alive_max_count(k_keep_alive_requests);
  // The keep-alive idle timeout stays cpp-httplib's default (5 s). Setting it explicitly, even to
  // the same value, measured a filter p99 over loopback of 3.2 ms instead of 0.9 ms in
  // bench_extender (Debian's libcpp-httplib 0.11.4; A/B runs at load average 2, p50 unchanged).
  svr.new_task_queue = [] { return new connection_threads(k_max_connection_threads); };
  // A reply is written as headers then body: without TCP_NODELAY, Nagle's algorithm holds the
  // body until the client's delayed ACK, about 40 ms per request on a kept-alive connection.
  svr.set_tcp_nodelay(true);
}

/// HTTP status of a path the server does not have (a URL prefix when no token is set).
inline constexpr int k_not_found = 404;
/// HTTP status of a verb refused for want of the token.
inline constexpr int k_unauthorized = 401;
/// HTTP status of /bind and /release on a replica that is not the leader, and of its /readyz.
inline constexpr int k_unavailable = 503;

/// Who may call the verbs, and what to do with their replies. A plain value; the functions are
/// called from the server's threads, so each must be thread-safe.
struct route_options {
  /// When not empty, every verb needs this token (URL prefix or bearer header).
  std::string token;
  /// When set and answering false, /bind and /release are refused (503) and /readyz is 503.
  std::function<bool()> is_leader;
  /// When set, called after each verb with its name ("filter", "bind"...), the request body and
  /// the reply (e.g. to record an Event for a pod that cannot be placed).
  std::function<void(std::string_view verb, const std::string& body, const reply& r)> on_reply;
};

namespace detail {
/// \p a == \p b in time that depends only on their lengths (a token is not found byte by byte).
/// Pure, thread-safe.
inline bool same_secret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff |=
        static_cast<unsigned>(static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i]));
  }
  return diff == 0;
}

/// True when \p req carries \p token as its URL prefix \p prefix or its bearer header.
inline bool authenticated(const httplib::Request& req, std::string_view prefix,
                          std::string_view token) {
  if (token.empty()) return prefix.empty();
  if (!prefix.empty()) return same_secret(prefix, token);
  constexpr std::string_view k_bearer = "Bearer ";
  const std::string auth = req.get_header_value("Authorization");
  return auth.size() > k_bearer.size() && auth.compare(0, k_bearer.size(), k_bearer) == 0 &&
         same_secret(std::string_view(auth).substr(k_bearer.size()), token);
}
}  // namespace detail

/// Routes the verbs to \p s, which must outlive the server, as \p opt says. With \p verbose every
/// request is logged to stderr; otherwise only those answered with an error status. Not
/// thread-safe: call before listening.
inline void install_routes(httplib::Server& svr, service& s, bool verbose, route_options opt = {}) {
  auto send = [verbose](std::string_view verb, const httplib::Request& req, httplib::Response& res,
                        const reply& r) {
    res.status = r.status;
    res.set_content(r.body, "application/json");
    if (verbose || r.status != k_ok) {
      fmt::print(stderr, "gpuslice_extender: {} {} bytes -> {} {}\n", verb, req.body.size(),
                 r.status, r.status != k_ok ? r.body : std::string());
    }
  };
  // "/filter", or "/PREFIX/filter" where the prefix is the token.
  svr.Post(R"((?:/([^/]+))?/(filter|prioritize|bind|release))",
           [&s, send, opt](const httplib::Request& req, httplib::Response& res) {
             const std::string prefix = req.matches[1].str();
             const std::string verb = req.matches[2].str();
             if (!opt.token.empty() || !prefix.empty()) {
               if (!detail::authenticated(req, prefix, opt.token)) {
                 if (opt.token.empty()) {  // a path this server does not have
                   res.status = k_not_found;
                   return;
                 }
                 send(verb, req, res,
                      reply{k_unauthorized,
                            json{{"Error",
                                  "gpuslice: unauthenticated: expected the extender's token as "
                                  "the URL prefix (/TOKEN/" +
                                      verb + ") or an Authorization: Bearer header"}}
                                .dump()});
                 return;
               }
             }
             const bool changes_cluster = verb == "bind" || verb == "release";
             if (changes_cluster && opt.is_leader && !opt.is_leader()) {
               send(verb, req, res,
                    reply{k_unavailable,
                          json{{"Error", "gpuslice: this replica is not the leader; " + verb +
                                             " goes to the leader (route by /readyz)"}}
                              .dump()});
               return;
             }
             reply r;
             if (verb == "filter") {
               r = s.filter(req.body);
             } else if (verb == "prioritize") {
               r = s.prioritize(req.body);
             } else if (verb == "bind") {
               r = s.bind(req.body);
             } else {
               r = s.release(req.body);
             }
             send(verb, req, res, r);
             if (opt.on_reply) opt.on_reply(verb, req.body, r);
           });
  svr.Get("/readyz", [opt](const httplib::Request&, httplib::Response& res) {
    const bool ready = !opt.is_leader || opt.is_leader();
    res.status = ready ? k_ok : k_unavailable;
    res.set_content(ready ? "ok" : "not the leader", "text/plain");
  });
  svr.Get("/state", [&s](const httplib::Request&, httplib::Response& res) {
    res.set_content(s.state(), "application/json");
  });
  svr.Get("/metrics", [&s](const httplib::Request&, httplib::Response& res) {
    res.set_content(s.metrics(), "text/plain; version=0.0.4");
  });
  svr.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok", "text/plain");
  });
}

}  // namespace gpuslice::extender
