#pragma once
/// \file
/// The extender's HTTP face (cpp-httplib): limits and routes, shared by the program and its
/// load benchmark so both measure the same server.
///   POST /filter /prioritize /bind /release    the verbs of extender.hpp
///   GET  /state                                node device usage and bindings
///   GET  /healthz                              "ok"

#include <fmt/core.h>
#include <httplib.h>

#include <cstddef>
#include <ctime>
#include <string>
#include <string_view>

#include "extender.hpp"

namespace gpuslice::extender {

/// Largest request body: a NodeList of a few thousand nodes (nodeCacheCapable: false).
inline constexpr std::size_t k_max_body_bytes = std::size_t{64} << 20;
/// Seconds a connection may stall while reading a request or writing a reply.
inline constexpr time_t k_io_timeout_s = 5;
/// Requests served on one kept-alive connection before it is closed.
inline constexpr std::size_t k_keep_alive_requests = 10000;

/// Sets the server's limits (body size, timeouts, keep-alive) and TCP_NODELAY. Not thread-safe:
/// call before listening.
inline void configure(httplib::Server& svr) {
  svr.set_payload_max_length(k_max_body_bytes);
  svr.set_read_timeout(k_io_timeout_s, 0);
  svr.set_write_timeout(k_io_timeout_s, 0);
  svr.set_keep_alive_max_count(k_keep_alive_requests);
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
  svr.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok", "text/plain");
  });
}

}  // namespace gpuslice::extender
