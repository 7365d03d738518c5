# bench_shim measures the shim against the fake driver, and bench_launch the shim's launch path
# in the same way: each needs both built, and their paths.
foreach(_bench bench_shim bench_launch)
  if(TARGET ${_bench})
    if(TARGET gpuslice_shim AND TARGET gpuslice_fake_cuda)
      add_dependencies(${_bench} gpuslice_shim gpuslice_fake_cuda)
      target_compile_definitions(${_bench} PRIVATE
        GPUSLICE_SHIM_PATH="$<TARGET_FILE:gpuslice_shim>"
        GPUSLICE_FAKE_CUDA_DIR="$<TARGET_FILE_DIR:gpuslice_fake_cuda>")
    endif()
    target_link_libraries(${_bench} PRIVATE ${CMAKE_DL_LIBS})
  endif()
endforeach()
