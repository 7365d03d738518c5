// A consumer of the installed package: it must compile against the public headers alone.
#include <gpuslice/config.hpp>
#include <gpuslice/quantity.hpp>
#include <gpuslice/version.hpp>

#include <cstdio>

int main() {
  auto b = gpuslice::parse_bytes("3000m");
  if (!b) return 1;
  std::printf("gpuslice %s %llu\n", GPUSLICE_VERSION_STRING, static_cast<unsigned long long>(*b));
  return 0;
}
