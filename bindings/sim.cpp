// Python bindings of include/gpuslice/sim: nothing bound yet.
#include "bindings.hpp"

namespace gpuslice::py {
void bind_sim(pybind11::module_& /*m*/) {}
}  // namespace gpuslice::py
