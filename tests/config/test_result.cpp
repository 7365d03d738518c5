#include "gpuslice/result.hpp"

#include <catch2/catch.hpp>

#include <string>

TEST_CASE("result holds a value or an error with a code and message", "[result]") {
  gpuslice::result<int> good = 5;
  CHECK(good.ok());
  CHECK(*good == 5);
  CHECK(good.value_or(7) == 5);
  CHECK_FALSE(good.code());

  gpuslice::result<int> bad = gpuslice::make_error(gpuslice::errc::corrupt, "file x: bad magic");
  CHECK_FALSE(bad.ok());
  CHECK(bad.value_or(7) == 7);
  CHECK(bad.code() == gpuslice::errc::corrupt);
  CHECK(bad.code().category().name() == std::string("gpuslice"));
  CHECK(bad.code().message() == "corrupt data");
  CHECK(bad.message() == "file x: bad magic");
}
