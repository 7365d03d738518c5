# The Kubernetes node-side tests: the API-server client against the fake API server, and the
# device plugin and monitor through their pytest suites. Included by examples/CMakeLists.txt.
find_package(Catch2 2.13 REQUIRED)
include(Catch)
find_package(Python3 COMPONENTS Interpreter QUIET)

if(TARGET PkgConfig::GPUSLICE_HTTPLIB AND nlohmann_json_FOUND AND Python3_Interpreter_FOUND)
  gpuslice_add_test(test_k8s_apiserver SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_apiserver.cpp
                    LIBS nlohmann_json::nlohmann_json PkgConfig::GPUSLICE_HTTPLIB
                    LABELS k8s concurrent)
  if(TARGET test_k8s_apiserver)
    target_include_directories(test_k8s_apiserver PRIVATE ${PROJECT_SOURCE_DIR}/examples/common)
    target_compile_definitions(test_k8s_apiserver PRIVATE
                               GPUSLICE_K8S_TEST_DIR="${CMAKE_CURRENT_LIST_DIR}")
  endif()
endif()

# The DRA plugin's decisions (examples/dra-plugin/driver.hpp), where the plugin is built.
if(TARGET gpuslice_dra_plugin)
  gpuslice_add_test(test_k8s_dra_driver SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_dra_driver.cpp
                    LIBS nlohmann_json::nlohmann_json LABELS k8s)
  if(TARGET test_k8s_dra_driver)
    target_include_directories(test_k8s_dra_driver PRIVATE ${PROJECT_SOURCE_DIR}/examples/common
                               ${PROJECT_SOURCE_DIR}/examples/dra-plugin)
  endif()
endif()

# The Python suites: the fake API server's own tests always; the device plugin's (a kubelet-
# shaped gRPC client, the fake API server, the fake NVML) when the plugin and the fake exist.
if(Python3_Interpreter_FOUND)
  set(_k8s_env "")
  if(TARGET gpuslice_device_plugin AND TARGET gpuslice_fake_nvml)
    list(APPEND _k8s_env "GPUSLICE_DEVICE_PLUGIN=$<TARGET_FILE:gpuslice_device_plugin>"
         "GPUSLICE_FAKE_NVML_DIR=$<TARGET_FILE_DIR:gpuslice_fake_nvml>")
  endif()
  if(TARGET gpuslice_dra_plugin AND TARGET gpuslice_fake_nvml)
    list(APPEND _k8s_env "GPUSLICE_DRA_PLUGIN=$<TARGET_FILE:gpuslice_dra_plugin>"
         "GPUSLICE_FAKE_NVML_DIR=$<TARGET_FILE_DIR:gpuslice_fake_nvml>")
  endif()
  if(TARGET gpuslice_monitor)
    list(APPEND _k8s_env "GPUSLICE_MONITOR=$<TARGET_FILE:gpuslice_monitor>")
  endif()
  # A process under the shim on the fake driver fills a ledger's SM limiter words.
  if(TARGET gpuslice_shim AND TARGET shim_client_launch AND TARGET gpuslice_fake_cuda)
    set(_k8s_preload $<TARGET_FILE:gpuslice_shim>)
    if(GPUSLICE_SANITIZE STREQUAL "address")
      execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libasan.so
                      OUTPUT_VARIABLE _k8s_asan OUTPUT_STRIP_TRAILING_WHITESPACE)
      set(_k8s_preload "${_k8s_asan}:${_k8s_preload}")
    endif()
    list(APPEND _k8s_env "GPUSLICE_SHIM_PRELOAD=${_k8s_preload}"
         "GPUSLICE_SHIM_LAUNCH_CLIENT=$<TARGET_FILE:shim_client_launch>")
  endif()
  # The monitor's tests write ledgers through gpuslice.Ledger: the module of this build when
  # there is one a plain interpreter can load (not a sanitized one), else an installed gpuslice.
  if(TARGET _core AND GPUSLICE_SANITIZE STREQUAL "")
    list(APPEND _k8s_env "GPUSLICE_CORE_MODULE=$<TARGET_FILE:_core>")
  endif()
  add_test(NAME k8s:pytest
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -p no:cacheprovider
                   -c ${PROJECT_SOURCE_DIR}/pyproject.toml --rootdir ${PROJECT_SOURCE_DIR}
                   ${CMAKE_CURRENT_LIST_DIR}/test_fake_apiserver.py
                   ${CMAKE_CURRENT_LIST_DIR}/test_device_plugin.py
                   ${CMAKE_CURRENT_LIST_DIR}/test_monitor.py
                   ${CMAKE_CURRENT_LIST_DIR}/test_dra_plugin.py
                   ${CMAKE_CURRENT_LIST_DIR}/test_grafana_dashboard.py
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(k8s:pytest PROPERTIES LABELS k8s TIMEOUT 300
                       ENVIRONMENT "${_k8s_env};PYTHONPATH=${PROJECT_SOURCE_DIR}/python")
endif()
