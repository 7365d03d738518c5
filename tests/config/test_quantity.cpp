#include "gpuslice/quantity.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <random>
#include <string>

using gpuslice::format_bytes;
using gpuslice::memory_limit;
using gpuslice::parse_bytes;
using gpuslice::parse_memory_limit;
using gpuslice::parse_percent;

namespace {
constexpr std::uint64_t KiB = 1024, MiB = KiB * 1024, GiB = MiB * 1024, TiB = GiB * 1024;
}

TEST_CASE("parse_bytes accepts every documented unit as a power of 1024", "[quantity]") {
  struct row {
    const char* text;
    std::uint64_t bytes;
  };
  const row rows[] = {
      {"0", 0},
      {"1024", 1024},
      {"3000m", 3000 * MiB},  // HAMi's spelling: 3000 MiB, not 3000 bytes
      {"3000M", 3000 * MiB},
      {"3000Mi", 3000 * MiB},
      {"3000MiB", 3000 * MiB},
      {"1k", KiB},
      {"1K", KiB},
      {"1Ki", KiB},
      {"1KiB", KiB},
      {"2g", 2 * GiB},
      {"2G", 2 * GiB},
      {"2Gi", 2 * GiB},
      {"2GiB", 2 * GiB},
      {"1t", TiB},
      {"1T", TiB},
      {"1Ti", TiB},
      {"1TiB", TiB},
      {"1.5g", GiB + GiB / 2},
      {"0.5Mi", MiB / 2},
      {"0.1k", 102},  // 102.4 bytes rounds down: a limit never grows by rounding
      {"  2g\t", 2 * GiB},
      {"16777215Ti", 16777215 * TiB},
      {"18446744073709551615", std::numeric_limits<std::uint64_t>::max()},
  };
  for (const auto& r : rows) {
    INFO(r.text);
    auto b = parse_bytes(r.text);
    REQUIRE(b.ok());
    CHECK(*b == r.bytes);
  }
}

TEST_CASE("parse_bytes refuses everything else with a message naming value and forms",
          "[quantity]") {
  struct row {
    const char* text;
    const char* fragment;
  };
  const row rows[] = {
      {"3000MB", "ambiguous"},
      {"3000mb", "ambiguous"},
      {"10GB", "ambiguous"},
      {"1kB", "ambiguous"},
      {"1.5.0g", "more than one decimal point"},
      {"-1", "sign"},
      {"+1", "sign"},
      {"abc", "does not start with a digit"},
      {"", "empty"},
      {"   ", "empty"},
      {"30 00m", "whitespace inside"},
      {"3000 m", "whitespace inside"},
      {"18446744073709551616", "64 bits"},
      {"16777216Ti", "64 bits"},
      {"99999999999999999999999", "64 bits"},
      {"1.5", "integer"},
      {"1.", "digit must follow"},
      {".5g", "does not start with a digit"},
      {"1e9", "unknown unit"},
      {"1x", "unknown unit"},
      {"1gi", "unknown unit"},
      {"1P", "unknown unit"},
      {"50%", "unknown unit"},
      {"0.1234567890123456789g", "fraction digits"},
  };
  for (const auto& r : rows) {
    INFO(r.text);
    auto b = parse_bytes(r.text);
    REQUIRE_FALSE(b.ok());
    const bool too_big = std::string(r.fragment) == "64 bits";
    CHECK(b.code() == (too_big ? gpuslice::errc::out_of_range : gpuslice::errc::invalid_value));
    CHECK_THAT(b.message(), Catch::Contains(r.fragment));
    CHECK_THAT(b.message(), Catch::Contains("expected a non-negative number"));
    CHECK(b.message().find('\n') == std::string::npos);
  }
}

TEST_CASE("overflow is reported as out of range", "[quantity]") {
  auto b = parse_bytes("16777216Ti");
  REQUIRE_FALSE(b.ok());
  CHECK(b.code() == make_error_code(gpuslice::errc::out_of_range));
}

TEST_CASE("format_bytes picks the largest exact unit and round-trips", "[quantity]") {
  CHECK(format_bytes(0) == "0");
  CHECK(format_bytes(17) == "17");
  CHECK(format_bytes(1024) == "1Ki");
  CHECK(format_bytes(3000 * MiB) == "3000Mi");
  CHECK(format_bytes(GiB) == "1Gi");
  CHECK(format_bytes(GiB + 1) == std::to_string(GiB + 1));
  CHECK(format_bytes(5 * TiB) == "5Ti");
  CHECK(format_bytes(1024 * TiB) == "1024Ti");

  for (const char* text : {"3000m", "1.5g", "2GiB", "1024", "7Ti", "0.25k"}) {
    INFO(text);
    auto b = parse_bytes(text);
    REQUIRE(b.ok());
    auto again = parse_bytes(format_bytes(*b));
    REQUIRE(again.ok());
    CHECK(*again == *b);
  }
  std::mt19937_64 rng(12345);
  for (int i = 0; i < 10000; ++i) {
    std::uint64_t n = rng() >> (rng() % 64);
    auto back = parse_bytes(format_bytes(n));
    REQUIRE(back.ok());
    REQUIRE(*back == n);
  }
}

TEST_CASE("memory limits: bytes, percent, none", "[quantity]") {
  auto a = parse_memory_limit("3000m");
  REQUIRE(a.ok());
  CHECK(a->type == memory_limit::kind::bytes);
  CHECK(a->bytes == 3000 * MiB);
  CHECK(a->resolve(80 * GiB) == 3000 * MiB);
  CHECK(a->resolve(1 * GiB) == 1 * GiB);  // never more than the device has

  auto p = parse_memory_limit("50%");
  REQUIRE(p.ok());
  CHECK(p->type == memory_limit::kind::percent);
  CHECK(p->percent == 50);
  CHECK(p->resolve(80 * GiB) == 40 * GiB);
  CHECK(p->resolve(3) == 1);  // rounds down

  for (const char* none : {"0", "0%", "0g"}) {
    auto n = parse_memory_limit(none);
    REQUIRE(n.ok());
    CHECK_FALSE(n->limited());
    CHECK(n->resolve(123) == 123);
  }
  for (const char* bad : {"101%", "50.5%", "-5%", "%", "5%%", "abc%", "3000MB"}) {
    INFO(bad);
    auto e = parse_memory_limit(bad);
    REQUIRE_FALSE(e.ok());
    CHECK_THAT(e.message(), Catch::Contains("percentage of the device"));
  }
}

TEST_CASE("SM percentages are integers from 0 to 100", "[quantity]") {
  CHECK(parse_percent("30").value() == 30);
  CHECK(parse_percent("30%").value() == 30);
  CHECK(parse_percent("0").value() == 0);
  CHECK(parse_percent("100").value() == 100);
  for (const char* bad : {"101", "-1", "30.5", "abc", "", "3 0", "30m", "1e2"}) {
    INFO(bad);
    auto e = parse_percent(bad);
    REQUIRE_FALSE(e.ok());
    CHECK_THAT(e.message(), Catch::Contains("an integer from 0 to 100"));
  }
}

TEST_CASE("milli-GPU and cores percent are one dimension", "[quantity]") {
  CHECK(gpuslice::cores_to_milli(100) == 1000);
  CHECK(gpuslice::cores_to_milli(30) == 300);
  CHECK(gpuslice::milli_to_cores(1000) == 100);
  CHECK(gpuslice::milli_to_cores(455) == 46);  // rounded up: never under-reserved
}
