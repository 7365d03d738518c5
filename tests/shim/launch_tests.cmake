# Launches through the SM limiter on the fake driver (included by tests/shim/CMakeLists.txt,
# after gpuslice_shim_test is defined). Each share test storms for about two seconds (the 50 ms
# kernels of share-long for six).
gpuslice_shim_client(shim_client_launch SOURCES clients/client_launch.cpp LIBS gpuslice_fake_cuda)

set(_launch_node ${CMAKE_CURRENT_BINARY_DIR}/ledgers/node-region)
set(_force GPU_CORE_UTILIZATION_POLICY=force)

# Every launch path holds its share of the fake device's busy time, at 30% and at 70%.
foreach(path kernel ptsz ex ex_ptsz coop coop_ptsz multi graph graph_ptsz launch grid grid_async)
  gpuslice_shim_test(launch:share-${path}-30 shim_client_launch ARGS share ${path} 30
                     ENV ${_force} CUDA_DEVICE_SM_LIMIT=30 LEDGER)
endforeach()
foreach(path kernel graph coop)
  gpuslice_shim_test(launch:share-${path}-70 shim_client_launch ARGS share ${path} 70
                     ENV ${_force} CUDA_DEVICE_SM_LIMIT=70 LEDGER)
endforeach()
# 50 ms kernels, longer than the bucket holds, over a 5 s window.
gpuslice_shim_test(launch:share-long-30 shim_client_launch ARGS long 30
                   ENV ${_force} CUDA_DEVICE_SM_LIMIT=30 LEDGER)
# Without the shim the storm takes the whole device: the share check can fail.
gpuslice_shim_test(launch:share-without-shim shim_client_launch ARGS share kernel 30
                   ENV ${_force} CUDA_DEVICE_SM_LIMIT=30 NO_PRELOAD)
set_tests_properties(shim:launch:share-without-shim PROPERTIES WILL_FAIL TRUE)

gpuslice_shim_test(launch:set-limit shim_client_launch ARGS set_limit
                   ENV ${_force} CUDA_DEVICE_SM_LIMIT=70 CUDA_DEVICE_MEMORY_LIMIT=64Mi LEDGER)
# The node-region tests share one region file; they must not run at the same time.
gpuslice_shim_test(launch:node-default shim_client_launch ARGS default LEDGER
                   ENV GPU_CORE_UTILIZATION_POLICY=default CUDA_DEVICE_SM_LIMIT=30
                       GPUSLICE_NODE_REGION=${_launch_node}-default)
gpuslice_shim_test(launch:node-priority shim_client_launch ARGS priority LEDGER
                   ENV GPU_CORE_UTILIZATION_POLICY=default CUDA_DEVICE_SM_LIMIT=50
                       CUDA_TASK_PRIORITY=1 GPUSLICE_NODE_REGION=${_launch_node}-priority)
# CUDA_DEVICE_MEMORY_SHARED_CACHE unset (a private /tmp holds the default ledger and the node
# region): two processes of the container are one tenant of the region, alone, so uncapped.
add_test(NAME shim:launch:container-default-ledger
         COMMAND ${CMAKE_COMMAND} -E env --unset=CUDA_DEVICE_MEMORY_SHARED_CACHE ${_base_env}
                 GPU_CORE_UTILIZATION_POLICY=default CUDA_DEVICE_SM_LIMIT=30
                 GPUSLICE_NODE_REGION=/tmp/gpuslice-node-region LD_PRELOAD=${_preload}
                 sh ${CMAKE_CURRENT_SOURCE_DIR}/in_private_tmp.sh
                 $<TARGET_FILE:shim_client_launch> container_alone)
set_tests_properties(shim:launch:container-default-ledger PROPERTIES LABELS shim
                                                                     SKIP_RETURN_CODE 77
                                                                     TIMEOUT 120)
gpuslice_shim_test(launch:refused shim_client_launch ARGS refused
                   ENV CUDA_DEVICE_SM_LIMIT=thirty)

gpuslice_shim_test(oversub:managed shim_client_launch ARGS oversub managed LEDGER
                   ENV FAKE_CUDA_MEMORY=64Mi CUDA_DEVICE_MEMORY_LIMIT=256Mi
                       CUDA_OVERSUBSCRIBE=true)
gpuslice_shim_test(oversub:off shim_client_launch ARGS oversub refused LEDGER
                   ENV FAKE_CUDA_MEMORY=64Mi CUDA_DEVICE_MEMORY_LIMIT=256Mi)


# Threads and processes of one container draw from one bucket (the ledger's rate words).
gpuslice_shim_test(launch:threads-30 shim_client_launch ARGS threads 30
                   ENV ${_force} CUDA_DEVICE_SM_LIMIT=30 LEDGER)
gpuslice_shim_test(launch:container-40 shim_client_launch ARGS container 40
                   ENV ${_force} CUDA_DEVICE_SM_LIMIT=40 LEDGER)

# Stream capture: recorded launches are neither admitted nor timed; the graph is capped.
gpuslice_shim_test(launch:capture shim_client_launch ARGS capture
                   ENV ${_force} CUDA_DEVICE_SM_LIMIT=30 LEDGER)
# The watcher's driver calls never invalidate a global-mode capture of another thread.
gpuslice_shim_test(launch:capture-global shim_client_launch ARGS capture_global
                   ENV ${_force} CUDA_DEVICE_SM_LIMIT=30 LEDGER)
# No cap on two GPUs: the fast path asks the driver nothing per launch.
gpuslice_shim_test(launch:nocap-devices shim_client_launch ARGS nocap_devices LEDGER
                   ENV FAKE_CUDA_DEVICES=2)
gpuslice_shim_test(launch:fork shim_client_launch ARGS fork
                   ENV ${_force} CUDA_DEVICE_SM_LIMIT=30 LEDGER)
gpuslice_shim_test(launch:devices shim_client_launch ARGS devices LEDGER
                   ENV ${_force} FAKE_CUDA_DEVICES=2 CUDA_DEVICE_SM_LIMIT_0=70
                       CUDA_DEVICE_SM_LIMIT_1=30)

# Library launches (cuLibraryLoadData, cuLibraryGetKernel, cuKernelGetFunction, a CUkernel passed
# where a CUfunction is expected, and through cuGetProcAddress) are capped and charged like
# cuLaunchKernel; each first launch of the kernel in the context loads it for 5 ms inside the
# call, as the driver does lazily. About 12 s each.
gpuslice_shim_client(shim_client_library SOURCES clients/client_library.cpp LIBS gpuslice_fake_cuda)
gpuslice_shim_test(launch:library-30 shim_client_library ARGS share 30
                   ENV ${_force} CUDA_DEVICE_SM_LIMIT=30 FAKE_CUDA_LAZY_LOAD_US=5000 LEDGER)
gpuslice_shim_test(launch:library-without-shim shim_client_library ARGS share 30
                   ENV ${_force} CUDA_DEVICE_SM_LIMIT=30 NO_PRELOAD)
set_tests_properties(shim:launch:library-without-shim PROPERTIES WILL_FAIL TRUE)

# The share checks measure the fake device's busy time against wall time: a launcher starved of
# CPU by tests running beside it under-fills the device and reads as a wrong share. On a 2-core
# machine they therefore run alone.
get_property(_launch_tests DIRECTORY PROPERTY TESTS)
foreach(t ${_launch_tests})
  if(t MATCHES "^shim:launch:")
    set_tests_properties(${t} PROPERTIES RUN_SERIAL TRUE)
  endif()
endforeach()
