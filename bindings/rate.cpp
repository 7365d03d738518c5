// Python bindings of include/gpuslice/rate: nothing bound yet.
#include "bindings.hpp"

namespace gpuslice::py {
void bind_rate(pybind11::module_& /*m*/) {}
}  // namespace gpuslice::py
