# The Kubernetes node-side tests: the API-server client against the fake API server, and the
# device plugin and monitor through their pytest suites. Included by examples/CMakeLists.txt.
find_package(Catch2 2.13 REQUIRED)
include(Catch)
find_package(Python3 COMPONENTS Interpreter QUIET)

if(TARGET PkgConfig::GPUSLICE_HTTPLIB AND nlohmann_json_FOUND AND Python3_Interpreter_FOUND)
  gpuslice_add_test(test_k8s_apiserver SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_apiserver.cpp
                    LIBS nlohmann_json::nlohmann_json PkgConfig::GPUSLICE_HTTPLIB
                    LABELS k8s)
  if(TARGET test_k8s_apiserver)
    target_include_directories(test_k8s_apiserver PRIVATE ${PROJECT_SOURCE_DIR}/examples/common)
    target_compile_definitions(test_k8s_apiserver PRIVATE
                               GPUSLICE_K8S_TEST_DIR="${CMAKE_CURRENT_LIST_DIR}")
  endif()
endif()
