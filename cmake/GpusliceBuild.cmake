# Build settings for the project's own programs (tests, shim, bindings, bench, examples).
# Consumers of the installed package never see these.

# gpuslice_project_options: the warning set and sanitizer flags every own target carries.
add_library(gpuslice_project_options INTERFACE)
target_compile_options(gpuslice_project_options INTERFACE -Wall -Wextra -Wpedantic)
if(GPUSLICE_WERROR)
  target_compile_options(gpuslice_project_options INTERFACE -Werror)
endif()
if(GPUSLICE_SANITIZE STREQUAL "address")
  set(_gpuslice_san -fsanitize=address,undefined -fno-sanitize-recover=undefined
                    -fno-omit-frame-pointer)
elseif(GPUSLICE_SANITIZE STREQUAL "thread")
  set(_gpuslice_san -fsanitize=thread -fno-omit-frame-pointer)
elseif(NOT GPUSLICE_SANITIZE STREQUAL "")
  message(FATAL_ERROR "GPUSLICE_SANITIZE must be '', 'address' or 'thread', not '${GPUSLICE_SANITIZE}'")
endif()
if(_gpuslice_san)
  # -g1: the line tables a sanitizer's report needs (file:line in every frame), after the build
  # type's -g, for less compile time than -g's full debug information.
  target_compile_options(gpuslice_project_options INTERFACE ${_gpuslice_san} -g1 -O1)
  # GCC 12 reports false maybe-uninitialized warnings inside libstdc++ (<regex>, <functional>)
  # when sanitizers change inlining; the non-sanitized -Werror build keeps the warning on.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    target_compile_options(gpuslice_project_options INTERFACE -Wno-maybe-uninitialized)
  endif()
  target_link_options(gpuslice_project_options INTERFACE ${_gpuslice_san})
endif()

# gpuslice_add_test(NAME SOURCES src... [LIBS lib...] [LABELS label...])
# One Catch2 executable whose test cases are registered with CTest one by one.
# Under TSan only tests labelled "concurrent" are built: TSan is for the concurrent parts.
function(gpuslice_add_test name)
  cmake_parse_arguments(arg "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  if(GPUSLICE_SANITIZE STREQUAL "thread" AND NOT "concurrent" IN_LIST arg_LABELS)
    return()
  endif()
  add_executable(${name} ${arg_SOURCES})
  target_link_libraries(${name} PRIVATE gpuslice::gpuslice gpuslice_project_options
                                        gpuslice_catch_main ${arg_LIBS})
  catch_discover_tests(${name} TEST_PREFIX "${name}:" PROPERTIES LABELS "${arg_LABELS}"
                       DISCOVERY_TIMEOUT 60)
endfunction()
