# What the example tests' two lists share (CMakeLists.txt here, and programs.cmake, which
# examples/CMakeLists.txt includes): the libraries they look for, the example and test data
# directories, and the compile definitions that name those directories.
find_package(nlohmann_json 3 QUIET)
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(GPUSLICE_TEST_HTTPLIB QUIET IMPORTED_TARGET cpp-httplib)
endif()
set(_examples ${PROJECT_SOURCE_DIR}/examples)
set(_data ${CMAKE_CURRENT_LIST_DIR}/data)
set(_defs GPUSLICE_EXAMPLES_TEST_DATA="${_data}" GPUSLICE_EXAMPLES_SAMPLE_DATA="${_examples}/data")
