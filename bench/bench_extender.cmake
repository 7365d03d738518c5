# bench_extender (the scheduler extender's load test) also needs cpp-httplib, nlohmann_json,
# fmt and the extender's headers; without them it builds as a program that says so.
find_package(nlohmann_json 3 QUIET)
find_package(fmt QUIET)
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(GPUSLICE_BENCH_HTTPLIB QUIET IMPORTED_TARGET cpp-httplib)
endif()
if(TARGET bench_extender AND nlohmann_json_FOUND AND fmt_FOUND
   AND TARGET PkgConfig::GPUSLICE_BENCH_HTTPLIB)
  target_compile_definitions(bench_extender PRIVATE GPUSLICE_BENCH_EXTENDER)
  target_include_directories(bench_extender PRIVATE ${PROJECT_SOURCE_DIR}/examples/common
                                                    ${PROJECT_SOURCE_DIR}/examples/extender)
  target_link_libraries(bench_extender PRIVATE nlohmann_json::nlohmann_json fmt::fmt
                                               PkgConfig::GPUSLICE_BENCH_HTTPLIB)
endif()
