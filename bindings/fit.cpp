// Python bindings of include/gpuslice/fit: nothing bound yet.
#include "bindings.hpp"

namespace gpuslice::py {
void bind_fit(pybind11::module_& /*m*/) {}
}  // namespace gpuslice::py
