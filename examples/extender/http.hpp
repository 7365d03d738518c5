#pragma once
/// \file
/// The extender's HTTP face (cpp-httplib): limits and routes, shared by the program and its
/// load benchmark so both measure the same server.
///   POST /filter /prioritize /bind /release    the verbs of extender.hpp
///   GET  /state                                node device usage and bindings
///   GET  /metrics                              Prometheus text
///   GET  /healthz                              "ok"
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

/// Routes the verbs to \p s, which must outlive the server. With \p verbose every request is
/// logged to stderr; otherwise only those answered with an error status. Not thread-safe: call
/// before listening.
inline void install_routes(httplib::Server& svr, service& s, bool verbose) {
  auto send = [verbose](std::string_view verb, const httplib::Request& req, httplib::Response& res,
                        const reply& r) {
    res.status = r.status;
    res.set_content(r.body, "application/json");
    if (verbose || r.status != k_ok) {
      fmt::print(stderr, "gpuslice_extender: {} {} bytes -> {} {}\n", verb, req.body.size(),
                 r.status, r.status != k_ok ? r.body : std::string());
    }
  };
  svr.Post("/filter", [&s, send](const httplib::Request& req, httplib::Response& res) {
    send("filter", req, res, s.filter(req.body));
  });
  svr.Post("/prioritize", [&s, send](const httplib::Request& req, httplib::Response& res) {
    send("prioritize", req, res, s.prioritize(req.body));
  });
  svr.Post("/bind", [&s, send](const httplib::Request& req, httplib::Response& res) {
    send("bind", req, res, s.bind(req.body));
  });
  svr.Post("/release", [&s, send](const httplib::Request& req, httplib::Response& res) {
    send("release", req, res, s.release(req.body));
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
