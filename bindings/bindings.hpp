#pragma once
// Each area of the core binds itself in its own translation unit.
#include <pybind11/pybind11.h>

namespace gpuslice::py {
void bind_config(pybind11::module_& m);
void bind_memory(pybind11::module_& m);
void bind_rate(pybind11::module_& m);
void bind_fit(pybind11::module_& m);
void bind_sim(pybind11::module_& m);
}  // namespace gpuslice::py
