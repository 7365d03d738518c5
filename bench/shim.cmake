# bench_shim measures the shim against the fake driver: it needs both built, and their paths.
if(TARGET bench_shim)
  if(TARGET gpuslice_shim AND TARGET gpuslice_fake_cuda)
    add_dependencies(bench_shim gpuslice_shim gpuslice_fake_cuda)
    target_compile_definitions(bench_shim PRIVATE
      GPUSLICE_SHIM_PATH="$<TARGET_FILE:gpuslice_shim>"
      GPUSLICE_FAKE_CUDA_DIR="$<TARGET_FILE_DIR:gpuslice_fake_cuda>")
  endif()
  target_link_libraries(bench_shim PRIVATE ${CMAKE_DL_LIBS})
endif()

# bench_launch measures the shim's launch path against the fake driver in the same way.
if(TARGET bench_launch)
  if(TARGET gpuslice_shim AND TARGET gpuslice_fake_cuda)
    add_dependencies(bench_launch gpuslice_shim gpuslice_fake_cuda)
    target_compile_definitions(bench_launch PRIVATE
      GPUSLICE_SHIM_PATH="$<TARGET_FILE:gpuslice_shim>"
      GPUSLICE_FAKE_CUDA_DIR="$<TARGET_FILE_DIR:gpuslice_fake_cuda>")
  endif()
  target_link_libraries(bench_launch PRIVATE ${CMAKE_DL_LIBS})
endif()
