# Third-party packages. All come from Debian (scripts/setup installs them) or,
# on the GPU machine, from the PyTorch wheel (CMAKE_PREFIX_PATH) plus unpacked .debs.
find_package(Torch REQUIRED)
find_package(fmt REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(CLI11 REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
# ONNX (libonnx-dev: protobuf classes + checker) for dsk export's onnx format. Debian's targets
# `onnx` / `onnx_proto` carry ONNX_NAMESPACE=onnx and ONNX_ML=1 and link protobuf::libprotobuf,
# which FindProtobuf defines. Only lib/export/onnx.cpp includes ONNX headers.
find_package(Protobuf REQUIRED)
find_package(ONNX REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
add_library(PCRE2::pcre2 ALIAS PkgConfig::PCRE2)

# LibTorch exports TORCH_LIBRARIES + TORCH_CXX_FLAGS rather than a target.
add_library(dsk_torch INTERFACE)
target_link_libraries(dsk_torch INTERFACE ${TORCH_LIBRARIES})
separate_arguments(_dsk_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
target_compile_options(dsk_torch INTERFACE ${_dsk_torch_flags})

find_program(CCACHE_PROGRAM ccache)
if(CCACHE_PROGRAM)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
endif()

# Gloo: Debian ships it as libgloo (libgloo-dev, scripts/setup); the PyTorch wheel links it into
# libtorch_cpu, so there is nothing to add there.
find_library(DSK_GLOO_LIBRARY gloo)
add_library(dsk_gloo INTERFACE)
if(DSK_GLOO_LIBRARY)
  target_link_libraries(dsk_gloo INTERFACE ${DSK_GLOO_LIBRARY})
endif()
