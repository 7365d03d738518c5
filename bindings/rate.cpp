// Python bindings of include/gpuslice/rate: the GPU model (gpuslice.sharing wraps it).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "gpuslice/rate/gpu_model.hpp"

using namespace pybind11::literals;
namespace pb = pybind11;

namespace gpuslice::py_rate {
namespace {

/// Reads the keys of a dict into a struct through named setters; unknown keys are an error
/// naming the key and the accepted ones.
template <class T>
using setters = std::map<std::string, std::function<void(T&, const pb::handle&)>, std::less<>>;

template <class T>
void read_fields(const std::string& what, const pb::dict& d, const setters<T>& fields, T& out) {
  for (const auto& [k, v] : d) {
    const auto key = pb::cast<std::string>(k);
    auto it = fields.find(key);
    if (it == fields.end()) {
      std::string known;
      for (const auto& [name, _] : fields) known += (known.empty() ? "" : ", ") + name;
      throw pb::value_error(what + ": unknown key '" + key + "'; expected one of " + known);
    }
    try {
      it->second(out, v);
    } catch (const pb::cast_error&) {
      throw pb::value_error(what + ": key '" + key + "' has a value of the wrong type (" +
                            pb::cast<std::string>(pb::str(pb::type::of(v))) + ")");
    }
  }
}

template <class T, class F>
std::pair<const std::string, std::function<void(T&, const pb::handle&)>> field(std::string name,
                                                                               F T::*member) {
  return {std::move(name), [member](T& t, const pb::handle& v) { t.*member = pb::cast<F>(v); }};
}

rate::kernel_spec to_kernel(const std::string& what, const pb::handle& h) {
  static const setters<rate::kernel_spec> fields = {
      field("duration_ns", &rate::kernel_spec::duration_ns),
      field("jitter", &rate::kernel_spec::jitter),
      field("weight", &rate::kernel_spec::weight),
      field("grid_blocks", &rate::kernel_spec::grid_blocks),
  };
  rate::kernel_spec k;
  read_fields(what, pb::cast<pb::dict>(h), fields, k);
  return k;
}

utilization_policy to_policy(const std::string& what, const std::string& s) {
  if (s == "default") return utilization_policy::default_policy;
  if (s == "force") return utilization_policy::force;
  if (s == "disable") return utilization_policy::disable;
  throw pb::value_error(what + ": policy '" + s + "'; expected default, force or disable");
}

task_priority to_priority(const std::string& what, const std::string& s) {
  if (s == "high" || s == "0") return task_priority::high;
  if (s == "low" || s == "1") return task_priority::low;
  throw pb::value_error(what + ": priority '" + s + "'; expected high (0) or low (1)");
}

rate::tenant_spec to_tenant(std::size_t i, const pb::handle& h) {
  const std::string what = "tenant " + std::to_string(i);
  rate::tenant_spec t;
  setters<rate::tenant_spec> fields = {
      field("name", &rate::tenant_spec::name),
      field("share_percent", &rate::tenant_spec::share_percent),
      field("think_ns", &rate::tenant_spec::think_ns),
      field("burst_kernels", &rate::tenant_spec::burst_kernels),
      field("burst_gap_ns", &rate::tenant_spec::burst_gap_ns),
      field("streams_in_flight", &rate::tenant_spec::streams_in_flight),
      field("start_ns", &rate::tenant_spec::start_ns),
      field("observe_every", &rate::tenant_spec::observe_every),
  };
  fields["stop_ns"] = [](rate::tenant_spec& s, const pb::handle& v) {
    if (!v.is_none()) s.stop_ns = pb::cast<std::int64_t>(v);
  };
  fields["policy"] = [what](rate::tenant_spec& s, const pb::handle& v) {
    s.policy = to_policy(what, pb::cast<std::string>(v));
  };
  fields["priority"] = [what](rate::tenant_spec& s, const pb::handle& v) {
    s.priority = to_priority(what, pb::cast<std::string>(pb::str(v)));
  };
  fields["kernels"] = [what](rate::tenant_spec& s, const pb::handle& v) {
    s.kernels.clear();
    std::size_t k = 0;
    for (const auto& item : pb::cast<pb::list>(v)) {
      s.kernels.push_back(to_kernel(what + " kernel " + std::to_string(k++), item));
    }
  };
  read_fields(what, pb::cast<pb::dict>(h), fields, t);
  return t;
}

rate::gpu_spec to_gpu(const pb::dict& d) {
  static const setters<rate::gpu_spec> fields = {
      field("sm_count", &rate::gpu_spec::sm_count),
      field("timeslice_ns", &rate::gpu_spec::timeslice_ns),
      field("launch_overhead_ns", &rate::gpu_spec::launch_overhead_ns),
      field("sleep_overshoot_ns", &rate::gpu_spec::sleep_overshoot_ns),
      field("nvml_period_ns", &rate::gpu_spec::nvml_period_ns),
      field("activity_window_ns", &rate::gpu_spec::activity_window_ns),
  };
  rate::gpu_spec g;
  read_fields("gpu", d, fields, g);
  return g;
}

rate::limiter_params to_params(const pb::dict& d) {
  using P = rate::limiter_params;
  static const setters<P> fields = {
      field("burst_ns", &P::burst_ns),
      field("burst_kernels", &P::burst_kernels),
      field("idle_kernels", &P::idle_kernels),
      field("horizon_kernels", &P::horizon_kernels),
      field("min_wait_ns", &P::min_wait_ns),
      field("prior_kernel_ns", &P::prior_kernel_ns),
      field("estimate_weight", &P::estimate_weight),
      field("correction_horizon_ns", &P::correction_horizon_ns),
      field("utilization_resolution", &P::utilization_resolution),
      field("charge_observed_difference", &P::charge_observed_difference),
      field("utilization_gain", &P::utilization_gain),
      field("min_correction", &P::min_correction),
      field("max_correction", &P::max_correction),
      field("min_sample_fraction", &P::min_sample_fraction),
      field("suspended_poll_ns", &P::suspended_poll_ns),
      field("yield_share_percent", &P::yield_share_percent),
  };
  P p;
  read_fields("params", d, fields, p);
  return p;
}

rate::controller_kind to_controller(const std::string& s) {
  if (s == "gpuslice") return rate::controller_kind::gpuslice;
  if (s == "reference") return rate::controller_kind::reference;
  if (s == "none") return rate::controller_kind::none;
  throw pb::value_error("controller '" + s + "': expected gpuslice, reference or none");
}

pb::array_t<std::int64_t> to_array(const std::vector<std::int64_t>& v) {
  pb::array_t<std::int64_t> a(static_cast<pb::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

pb::dict run_model(const pb::list& tenants, const pb::dict& gpu, std::int64_t duration_ns,
                   std::int64_t step_ns, const std::string& controller, std::uint64_t seed,
                   const pb::dict& params) {
  std::vector<rate::tenant_spec> specs;
  for (std::size_t i = 0; i < tenants.size(); ++i) specs.push_back(to_tenant(i, tenants[i]));
  rate::model_options opt;
  opt.duration_ns = duration_ns;
  opt.sample_step_ns = step_ns;
  opt.controller = to_controller(controller);
  opt.seed = seed;
  opt.params = to_params(params);
  const rate::gpu_spec g = to_gpu(gpu);
  auto r = [&] {
    pb::gil_scoped_release release;
    return rate::run_gpu_model(g, specs, opt);
  }();
  if (!r) throw pb::value_error(r.message());
  const rate::model_result& res = *r;
  const auto n = static_cast<pb::ssize_t>(res.busy_ns.size());
  const auto samples = static_cast<pb::ssize_t>(res.times_ns.size());
  pb::array_t<std::int64_t> busy({n, samples});
  auto view = busy.mutable_unchecked<2>();
  for (pb::ssize_t i = 0; i < n; ++i) {
    for (pb::ssize_t k = 0; k < samples; ++k) {
      view(i, k) = res.busy_ns[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)];
    }
  }
  return pb::dict("times_ns"_a = to_array(res.times_ns), "busy_ns"_a = busy,
                  "launches"_a = to_array(res.launches), "waited_ns"_a = to_array(res.waited_ns));
}

}  // namespace
}  // namespace gpuslice::py_rate

namespace gpuslice::py {
void bind_rate(pybind11::module_& m) {
  m.def("run_gpu_model", &gpuslice::py_rate::run_model, "tenants"_a, "gpu"_a, "duration_ns"_a,
        "step_ns"_a, "controller"_a = "gpuslice", "seed"_a = 1, "params"_a = pybind11::dict(),
        "Run tenants on the discrete-event GPU model (virtual time). Returns times_ns, "
        "busy_ns[tenant, sample] (cumulative), launches and waited_ns as numpy arrays. "
        "Use gpuslice.sharing.run for the documented interface.");
  m.attr("RATE_WORDS") = rate::k_rate_words;
}
}  // namespace gpuslice::py
