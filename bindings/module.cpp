// gpuslice._core: the private compiled module behind the gpuslice package.
#include "bindings.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "gpuslice compiled core (private: import gpuslice instead)";
  m.attr("__version__") = GPUSLICE_PY_VERSION;
  gpuslice::py::bind_config(m);
  gpuslice::py::bind_memory(m);
  gpuslice::py::bind_rate(m);
  gpuslice::py::bind_fit(m);
  gpuslice::py::bind_sim(m);
}
