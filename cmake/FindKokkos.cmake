# FindKokkos.cmake — locate Kokkos (and KokkosKernels) without its exported config.
#
# Debian's Trilinos build of Kokkos 3.4 ships a CMake config that exports a bogus
# include directory (/usr/lib/include), so we find the headers and the libraries
# ourselves. A Kokkos installed with a working config (e.g. built with CUDA) is
# used through its own config when Kokkos_ROOT points at it.
#
# Results:
#   Kokkos_FOUND, Kokkos_INCLUDE_DIR, Kokkos_VERSION
#   Kokkos_ENABLE_CUDA (ON when KokkosCore_config.h defines KOKKOS_ENABLE_CUDA)
#   imported targets Kokkos::kokkos (core + containers) and Kokkos::kokkoskernels
include(FindPackageHandleStandardArgs)

if(Kokkos_ROOT AND EXISTS "${Kokkos_ROOT}/lib/cmake/Kokkos/KokkosConfig.cmake")
  find_package(Kokkos CONFIG PATHS "${Kokkos_ROOT}" NO_DEFAULT_PATH)
  if(Kokkos_FOUND)
    find_package(KokkosKernels CONFIG PATHS "${Kokkos_ROOT}" NO_DEFAULT_PATH)
    if(TARGET Kokkos::kokkoskernels)
      return()
    endif()
  endif()
endif()

find_path(Kokkos_INCLUDE_DIR
  NAMES Kokkos_Core.hpp
  HINTS ${Kokkos_ROOT}/include
  PATHS /usr/include/trilinos /usr/local/include /usr/include
  PATH_SUFFIXES trilinos kokkos)

set(_kk_names core containers kernels)
foreach(_c IN LISTS _kk_names)
  find_library(Kokkos_${_c}_LIBRARY
    NAMES trilinos_kokkos${_c} kokkos${_c}
    HINTS ${Kokkos_ROOT}/lib ${Kokkos_ROOT}/lib64)
endforeach()

if(Kokkos_INCLUDE_DIR AND EXISTS "${Kokkos_INCLUDE_DIR}/KokkosCore_config.h")
  file(STRINGS "${Kokkos_INCLUDE_DIR}/KokkosCore_config.h" _kk_ver REGEX "#define KOKKOS_VERSION ")
  string(REGEX MATCH "[0-9]+" _kk_ver "${_kk_ver}")
  if(_kk_ver)
    math(EXPR _maj "${_kk_ver} / 10000")
    math(EXPR _min "(${_kk_ver} % 10000) / 100")
    math(EXPR _pat "${_kk_ver} % 100")
    set(Kokkos_VERSION "${_maj}.${_min}.${_pat}")
  endif()
  file(STRINGS "${Kokkos_INCLUDE_DIR}/KokkosCore_config.h" _kk_cuda REGEX "^#define KOKKOS_ENABLE_CUDA$")
  if(_kk_cuda)
    set(Kokkos_ENABLE_CUDA ON)
  else()
    set(Kokkos_ENABLE_CUDA OFF)
  endif()
endif()

find_package_handle_standard_args(Kokkos
  REQUIRED_VARS Kokkos_INCLUDE_DIR Kokkos_core_LIBRARY Kokkos_containers_LIBRARY Kokkos_kernels_LIBRARY
  VERSION_VAR Kokkos_VERSION)

if(Kokkos_FOUND AND NOT TARGET Kokkos::kokkos)
  find_package(Threads REQUIRED)
  add_library(Kokkos::kokkoscore UNKNOWN IMPORTED)
  set_target_properties(Kokkos::kokkoscore PROPERTIES
    IMPORTED_LOCATION "${Kokkos_core_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${Kokkos_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "Threads::Threads;${CMAKE_DL_LIBS}")
  add_library(Kokkos::kokkoscontainers UNKNOWN IMPORTED)
  set_target_properties(Kokkos::kokkoscontainers PROPERTIES
    IMPORTED_LOCATION "${Kokkos_containers_LIBRARY}"
    INTERFACE_LINK_LIBRARIES Kokkos::kokkoscore)
  add_library(Kokkos::kokkos INTERFACE IMPORTED)
  set_target_properties(Kokkos::kokkos PROPERTIES
    INTERFACE_LINK_LIBRARIES "Kokkos::kokkoscore;Kokkos::kokkoscontainers")
  add_library(Kokkos::kokkoskernels UNKNOWN IMPORTED)
  set_target_properties(Kokkos::kokkoskernels PROPERTIES
    IMPORTED_LOCATION "${Kokkos_kernels_LIBRARY}"
    INTERFACE_LINK_LIBRARIES Kokkos::kokkos)
endif()
mark_as_advanced(Kokkos_INCLUDE_DIR Kokkos_core_LIBRARY Kokkos_containers_LIBRARY Kokkos_kernels_LIBRARY)
