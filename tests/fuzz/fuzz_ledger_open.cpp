// Fuzzes the ledger file opener: whatever a file holds, opening it and taking a read-only
// snapshot must not crash or hang, an error must be one line starting with the file's name,
// and an accepted file must keep its invariants (at most 16 devices, totals readable).
//
// Input: a mode byte, then file bytes. Mode 0: the bytes are the whole file. Mode 1: the bytes
// overwrite the start of a valid ledger image (so the fuzzer reaches the checks past the size).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "gpuslice/memory/ledger.hpp"

namespace m = gpuslice::memory;

namespace {
const std::string& file_path() {
  static const std::string p = "/tmp/gpuslice-fuzz-ledger-" + std::to_string(::getpid());
  return p;
}

const std::string& valid_image() {
  static const std::string image = [] {
    const std::string p = file_path() + ".seed";
    ::unlink(p.c_str());
    {
      auto l = m::shared_ledger::open(m::create_only, p);
      if (!l) std::abort();
      auto d = l->device("GPU-fuzz", 1 << 20);
      auto s = l->attach();
      if (!d || !s || !l->try_reserve(*s, *d, 4096)) std::abort();
    }
    std::ifstream in(p, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    ::unlink(p.c_str());
    return bytes;
  }();
  return image;
}

void check_error(const std::string& message) {
  const std::string prefix = "ledger file \"" + file_path() + "\": ";
  if (message.compare(0, prefix.size(), prefix) != 0) std::abort();
  if (message.find('\n') != std::string::npos) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::string bytes;
  if (data[0] % 2 == 0) {
    bytes.assign(reinterpret_cast<const char*>(data + 1), size - 1);
  } else {
    bytes = valid_image();
    std::memcpy(bytes.data(), data + 1, std::min(size - 1, bytes.size()));
  }
  {
    std::ofstream out(file_path(), std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  auto snap = m::read_snapshot(file_path());
  if (!snap) {
    check_error(snap.message());
  } else if (snap->devices.size() > static_cast<std::size_t>(m::k_max_devices)) {
    std::abort();
  }
  // open_only waits for a creator on an uninitialised or initialising file; skip those
  // states (the wait is tested in the unit tests) so each input stays fast.
  std::uint64_t init = 0;
  if (bytes.size() >= offsetof(m::region_header, init) + sizeof init) {
    std::memcpy(&init, bytes.data() + offsetof(m::region_header, init), sizeof init);
  }
  const auto state = gpuslice::claim_state(init);
  const bool waits = bytes.empty() || state == 0 || state == 1;
  if (!waits) {
    auto l = m::shared_ledger::open(m::open_only, file_path());
    if (!l) {
      check_error(l.message());
    } else {
      if (l->device_count() > m::k_max_devices) std::abort();
      for (int d = 0; d < l->device_count(); ++d) (void)l->used(d);
      (void)l->snapshot();
    }
  }
  ::unlink(file_path().c_str());
  return 0;
}
