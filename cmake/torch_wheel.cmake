# A CUDA libtorch from a PyPI torch wheel (scripts/build.sh --torch pypi) keeps the CUDA runtime, its
# libraries and NCCL in site-packages/nvidia/ (pulled in as nvidia-* wheels). Torch's CMake config finds the
# CUDA toolkit (/usr/local/cuda) for configuration, and would then compile against the toolkit's headers and
# link the toolkit's libraries, whose versions differ from the wheel's: NCCL 2.28 against 2.30 leaves
# undefined symbols, and ProcessGroupNCCL built against the older nccl.h crashes (its config struct grew).
# Here every CUDA library target that has a copy in the wheel is pointed at that copy, with the wheel's
# headers, and dist.cpp gets NCCL's header and library from the wheel. Debian's libtorch (CPU) is untouched.
#
# Sets MOEKIT_TORCH_NCCL_INCLUDE / MOEKIT_TORCH_NCCL_LIBRARY when c10d's NCCL backend can be used.

set(MOEKIT_TORCH_NCCL_INCLUDE "")
set(MOEKIT_TORCH_NCCL_LIBRARY "")
if(NOT TARGET torch_cuda)
  return()
endif()

get_filename_component(moekit_site "${TORCH_INSTALL_PREFIX}/.." ABSOLUTE)
set(moekit_nv "${moekit_site}/nvidia")
file(GLOB moekit_cu_dirs LIST_DIRECTORIES true "${moekit_nv}/cu[0-9]*")
list(SORT moekit_cu_dirs)
list(LENGTH moekit_cu_dirs moekit_n)
if(moekit_n GREATER 0)
  list(GET moekit_cu_dirs -1 moekit_cu)
  message(STATUS "moekit: CUDA runtime and libraries from the wheel: ${moekit_cu}")
  foreach(lib cudart cublas cublasLt nvrtc cufft cusparse cusolver cupti nvJitLink cuFile)
    string(TOLOWER ${lib} lower)
    file(GLOB found "${moekit_cu}/lib/lib${lib}.so.[0-9]*" "${moekit_cu}/lib/lib${lower}.so.[0-9]*")
    list(FILTER found EXCLUDE REGEX "builtins")
    if(NOT found)
      continue()
    endif()
    list(GET found 0 so)
    if(TARGET CUDA::${lib})
      set_target_properties(CUDA::${lib} PROPERTIES IMPORTED_LOCATION "${so}" INTERFACE_INCLUDE_DIRECTORIES "${moekit_cu}/include"
                                                    INTERFACE_LINK_DIRECTORIES "" INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${moekit_cu}/include")
    endif()
    if(lib STREQUAL "nvrtc" AND CUDA_NVRTC_LIB)
      list(TRANSFORM TORCH_LIBRARIES REPLACE "^${CUDA_NVRTC_LIB}$" "${so}")
    endif()
  endforeach()
  # CUDA::toolkit carries the toolkit's include and link directories to everything that links CUDA::*.
  if(TARGET CUDA::toolkit)
    set_target_properties(CUDA::toolkit PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${moekit_cu}/include"
                                                   INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${moekit_cu}/include" INTERFACE_LINK_DIRECTORIES "")
  endif()
endif()

# The wheel ships libnccl.so.2 only (no libnccl.so link for find_library).
file(GLOB moekit_nccl_so "${moekit_nv}/nccl/lib/libnccl.so*")
if(EXISTS "${moekit_nv}/nccl/include/nccl.h" AND moekit_nccl_so)
  set(MOEKIT_TORCH_NCCL_INCLUDE "${moekit_nv}/nccl/include")
  list(GET moekit_nccl_so 0 MOEKIT_TORCH_NCCL_LIBRARY)
  message(STATUS "moekit: NCCL from the wheel: ${MOEKIT_TORCH_NCCL_LIBRARY}")
else()
  message(STATUS "moekit: no NCCL beside this libtorch: --dist-backend nccl is not built")
  set(MOEKIT_TORCH_NCCL_INCLUDE "")
  set(MOEKIT_TORCH_NCCL_LIBRARY "")
endif()
