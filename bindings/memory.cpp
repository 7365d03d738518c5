// Python bindings of include/gpuslice/memory: nothing bound yet.
#include "bindings.hpp"

namespace gpuslice::py {
void bind_memory(pybind11::module_& /*m*/) {}
}  // namespace gpuslice::py
