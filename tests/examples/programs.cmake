# Tests that run the example programs; included by examples/CMakeLists.txt (where the programs'
# targets exist) when tests are built.
find_package(Catch2 2.13 REQUIRED)
include(Catch)
include(${CMAKE_CURRENT_LIST_DIR}/settings.cmake)
set(_compare ${CMAKE_CURRENT_LIST_DIR}/run_and_compare.cmake)
set(_controller_args --nodes ${_examples}/data/nodes.json --pods ${_examples}/data/pods.json)
string(REPLACE ";" "|" _controller_args "${_controller_args}")

if(TARGET gpuslice_extender AND TARGET PkgConfig::GPUSLICE_TEST_HTTPLIB)
  gpuslice_add_test(test_examples_extender_http SOURCES
                    ${CMAKE_CURRENT_LIST_DIR}/test_extender_http.cpp
                    LIBS nlohmann_json::nlohmann_json PkgConfig::GPUSLICE_TEST_HTTPLIB
                    LABELS examples)
  if(TARGET test_examples_extender_http)
    target_include_directories(test_examples_extender_http PRIVATE ${_examples}/common
                               ${_examples}/extender ${CMAKE_CURRENT_LIST_DIR})
    target_compile_definitions(test_examples_extender_http PRIVATE ${_defs}
                               GPUSLICE_EXTENDER_EXE="$<TARGET_FILE:gpuslice_extender>")
    add_dependencies(test_examples_extender_http gpuslice_extender)
  endif()
endif()

# The controller, built in this tree, with both node policies.
if(TARGET gpuslice_controller AND NOT GPUSLICE_SANITIZE STREQUAL "thread")
  foreach(policy binpack spread)
    add_test(NAME examples:controller:${policy}
             COMMAND ${CMAKE_COMMAND}
                     "-DCOMMAND=$<TARGET_FILE:gpuslice_controller>|${_controller_args}|--node-policy|${policy}"
                     -DEXPECTED=${_data}/controller_${policy}.expected
                     -DVERSION=${PROJECT_VERSION} -P ${_compare})
    set_tests_properties(examples:controller:${policy} PROPERTIES LABELS examples TIMEOUT 120)
  endforeach()
  add_test(NAME examples:controller:bad-input
           COMMAND ${CMAKE_COMMAND}
                   "-DCOMMAND=$<TARGET_FILE:gpuslice_controller>|--nodes|${_data}/bind.json|--pods|${_examples}/data/pods.json"
                   -DEXPECTED=${_data}/empty.expected -DEXIT_CODE=1
                   "-DSTDERR_REGEX=^gpuslice_controller: [^\n]*bind.json: expected a NodeList or a JSON array\n$"
                   -P ${_compare})
  set_tests_properties(examples:controller:bad-input PROPERTIES LABELS examples TIMEOUT 120)
  # fgd and sfgd: from the cold start, and seeded from a workload file (which changes where
  # pods go); a bad workload file is one line naming file:line.
  foreach(policy fgd sfgd)
    add_test(NAME examples:controller:${policy}
             COMMAND ${CMAKE_COMMAND}
                     "-DCOMMAND=$<TARGET_FILE:gpuslice_controller>|${_controller_args}|--node-policy|${policy}"
                     -DEXPECTED=${_data}/controller_${policy}.expected
                     -DVERSION=${PROJECT_VERSION} -P ${_compare})
    set_tests_properties(examples:controller:${policy} PROPERTIES LABELS examples TIMEOUT 120)
  endforeach()
  add_test(NAME examples:controller:sfgd-workload
           COMMAND ${CMAKE_COMMAND}
                   "-DCOMMAND=$<TARGET_FILE:gpuslice_controller>|${_controller_args}|--node-policy|sfgd|--workload|${_data}/workload_seed.csv"
                   -DEXPECTED=${_data}/controller_sfgd_workload.expected
                   -DVERSION=${PROJECT_VERSION} -P ${_compare})
  set_tests_properties(examples:controller:sfgd-workload PROPERTIES LABELS examples TIMEOUT 120)
  add_test(NAME examples:controller:bad-workload
           COMMAND ${CMAKE_COMMAND}
                   "-DCOMMAND=$<TARGET_FILE:gpuslice_controller>|${_controller_args}|--node-policy|sfgd|--workload|${_data}/workload_bad.csv"
                   -DEXPECTED=${_data}/empty.expected -DEXIT_CODE=1
                   "-DSTDERR_REGEX=^gpuslice_controller: [^\n]*workload_bad.csv:3: memory \"4000MB\"; expected MiB, or a percentage from 1% to 100%\n$"
                   -P ${_compare})
  set_tests_properties(examples:controller:bad-workload PROPERTIES LABELS examples TIMEOUT 120)
endif()

# The quota demo on the fake driver: under the shim with a 256 MiB limit it sees 256 MiB and
# is refused at it; without the shim it sees and takes the whole 1 GiB device.
if(TARGET gpuslice_quota_demo AND TARGET gpuslice_shim AND TARGET gpuslice_fake_cuda)
  set(_preload $<TARGET_FILE:gpuslice_shim>)
  if(GPUSLICE_SANITIZE STREQUAL "address")
    execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libasan.so
                    OUTPUT_VARIABLE _libasan OUTPUT_STRIP_TRAILING_WHITESPACE)
    set(_preload "${_libasan}:${_preload}")
  endif()
  set(_fake_env "LD_LIBRARY_PATH=$<TARGET_FILE_DIR:gpuslice_fake_cuda>|FAKE_CUDA_MEMORY=1Gi")
  set(_ledger ${CMAKE_CURRENT_BINARY_DIR}/quota_demo.ledger)
  add_test(NAME examples:quota_demo:fresh-ledger COMMAND ${CMAKE_COMMAND} -E rm -f ${_ledger})
  set_tests_properties(examples:quota_demo:fresh-ledger PROPERTIES
                       FIXTURES_SETUP examples_quota_ledger LABELS examples)
  add_test(NAME examples:quota_demo:shim
           COMMAND ${CMAKE_COMMAND} "-DCOMMAND=$<TARGET_FILE:gpuslice_quota_demo>|32"
                   "-DENV=${_fake_env}|LD_PRELOAD=${_preload}|CUDA_DEVICE_MEMORY_LIMIT=256Mi|CUDA_DEVICE_MEMORY_SHARED_CACHE=${_ledger}"
                   -DEXPECTED=${_data}/quota_demo_shim.expected
                   "-DSTDERR_REGEX=cuMemAlloc_v2: device 0 [^\n]*refused"
                   -P ${_compare})
  set_tests_properties(examples:quota_demo:shim PROPERTIES
                       FIXTURES_REQUIRED examples_quota_ledger LABELS examples TIMEOUT 120)
  add_test(NAME examples:quota_demo:no-shim
           COMMAND ${CMAKE_COMMAND} "-DCOMMAND=$<TARGET_FILE:gpuslice_quota_demo>|32"
                   "-DENV=${_fake_env}" -DEXPECTED=${_data}/quota_demo_plain.expected
                   -P ${_compare})
  set_tests_properties(examples:quota_demo:no-shim PROPERTIES LABELS examples TIMEOUT 120)
  add_dependencies(gpuslice_quota_demo gpuslice_fake_cuda gpuslice_fake_nvml gpuslice_shim)
endif()

# The scheduler side in a live-shaped cluster (tests/k8s/test_scheduler_*.py): the extender (and
# the webhook when built) against the in-test fake API server. The node side's k8s:pytest
# collects these files too and skips them, since it does not name the programs.
find_package(Python3 COMPONENTS Interpreter QUIET)
if(TARGET gpuslice_extender AND Python3_Interpreter_FOUND)
  set(_sched_env "GPUSLICE_EXTENDER=$<TARGET_FILE:gpuslice_extender>")
  if(TARGET gpuslice_webhook)
    list(APPEND _sched_env "GPUSLICE_WEBHOOK=$<TARGET_FILE:gpuslice_webhook>")
  endif()
  if(TARGET gpuslice_device_plugin)
    list(APPEND _sched_env "GPUSLICE_DEVICE_PLUGIN=$<TARGET_FILE:gpuslice_device_plugin>")
  endif()
  if(TARGET gpuslice_monitor)
    list(APPEND _sched_env "GPUSLICE_MONITOR=$<TARGET_FILE:gpuslice_monitor>")
  endif()
  if(TARGET gpuslice_dra_plugin)
    list(APPEND _sched_env "GPUSLICE_DRA_PLUGIN=$<TARGET_FILE:gpuslice_dra_plugin>")
  endif()
  # The replay tool's test plays openb through the extender: it needs the _core module.
  if(TARGET _core AND GPUSLICE_SANITIZE STREQUAL "")
    list(APPEND _sched_env "GPUSLICE_CORE_MODULE=$<TARGET_FILE:_core>")
  endif()
  add_test(NAME examples:scheduler:pytest
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -p no:cacheprovider
                   -c ${PROJECT_SOURCE_DIR}/pyproject.toml --rootdir ${PROJECT_SOURCE_DIR}
                   ${PROJECT_SOURCE_DIR}/tests/k8s/test_scheduler_extender.py
                   ${PROJECT_SOURCE_DIR}/tests/k8s/test_scheduler_webhook.py
                   ${PROJECT_SOURCE_DIR}/tests/k8s/test_webhook_dra.py
                   ${PROJECT_SOURCE_DIR}/tests/k8s/test_deploy.py
                   ${PROJECT_SOURCE_DIR}/tests/k8s/test_replay_extender.py
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(examples:scheduler:pytest PROPERTIES LABELS "examples;k8s" TIMEOUT 300
                       ENVIRONMENT "${_sched_env}")
endif()

# The whole flow end to end (tests/k8s/test_e2e_scheduling.py): webhook, extender, device
# plugin, a kubelet-shaped client, a process under libgpuslice.so on the fake driver, and the
# exporter. A plain build only: a sanitized shim cannot be preloaded into a plain interpreter.
if(TARGET gpuslice_extender AND TARGET gpuslice_webhook AND TARGET gpuslice_device_plugin
   AND TARGET gpuslice_monitor AND TARGET gpuslice_shim AND TARGET gpuslice_fake_nvml
   AND TARGET gpuslice_fake_cuda AND Python3_Interpreter_FOUND AND GPUSLICE_SANITIZE STREQUAL "")
  add_test(NAME examples:scheduler:e2e
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -p no:cacheprovider
                   -c ${PROJECT_SOURCE_DIR}/pyproject.toml --rootdir ${PROJECT_SOURCE_DIR}
                   ${PROJECT_SOURCE_DIR}/tests/k8s/test_e2e_scheduling.py
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(examples:scheduler:e2e PROPERTIES LABELS "examples;k8s" TIMEOUT 300
                       ENVIRONMENT "${_sched_env};GPUSLICE_SHIM=$<TARGET_FILE:gpuslice_shim>;GPUSLICE_FAKE_NVML_DIR=$<TARGET_FILE_DIR:gpuslice_fake_nvml>")
endif()
