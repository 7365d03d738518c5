// Fuzzes HAMi's annotation codecs: no input may crash or hang, every error is one line, and
// whatever decodes encodes back to text that decodes to the same value.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "gpuslice/fit/codec.hpp"

namespace {
void one_line(const std::string& message) {
  if (message.empty() || message.find('\n') != std::string::npos) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace gpuslice::fit;
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  if (auto pod = decode_pod_devices(text)) {
    auto encoded = encode_pod_devices(*pod);
    if (!encoded) std::abort();
    auto again = decode_pod_devices(*encoded);
    if (!again || !(*again == *pod)) std::abort();
  } else {
    one_line(pod.message());
  }

  if (auto devs = decode_node_devices(text)) {
    auto again = decode_node_devices(encode_node_devices(*devs));
    if (!again || again->size() != devs->size()) std::abort();
    for (std::size_t i = 0; i < devs->size(); ++i) {
      const device& a = (*devs)[i];
      const device& b = (*again)[i];
      if (a.uuid != b.uuid || a.type != b.type || a.memory_total != b.memory_total ||
          a.cores_total != b.cores_total || a.slots_total != b.slots_total || a.numa != b.numa ||
          a.index != b.index || a.healthy != b.healthy || (!a.mode.empty() && a.mode != b.mode)) {
        std::abort();
      }
    }
    // The same input as pair scores over the decoded devices must not crash either.
    if (auto m = decode_pair_scores(text, *devs)) {
      if (m->size() != devs->size()) std::abort();
    } else {
      one_line(m.message());
    }
  } else {
    one_line(devs.message());
  }

  static const std::vector<device> k_devices = [] {
    std::vector<device> d(3);
    d[0].uuid = "GPU-a";
    d[1].uuid = "GPU-b";
    d[2].uuid = "GPU-c";
    return d;
  }();
  if (auto m = decode_pair_scores(text, k_devices)) {
    for (std::size_t a = 0; a < m->size(); ++a) {
      for (std::size_t b = 0; b < m->size(); ++b) {
        if (m->at(a, b) != m->at(b, a)) std::abort();
      }
    }
  } else {
    one_line(m.message());
  }
  return 0;
}
