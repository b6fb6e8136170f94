# Helpers that give every dsk target the same flags and layout.

function(dsk_target_flags target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  if(DSK_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(DSK_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()

# dsk_component(name DEPS ...): static library dsk_<name> from lib/<name>/*.cpp.
# Public include root is lib/, so code includes "core/error.h", "models/llama.h".
function(dsk_component name)
  cmake_parse_arguments(ARG "" "" "DEPS" ${ARGN})
  file(GLOB _src CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/lib/${name}/*.cpp)
  if(NOT _src)  # a component not written yet: headers only
    add_library(dsk_${name} INTERFACE)
    target_include_directories(dsk_${name} INTERFACE ${PROJECT_SOURCE_DIR}/lib)
    target_link_libraries(dsk_${name} INTERFACE ${ARG_DEPS} nlohmann_json::nlohmann_json Threads::Threads)
    return()
  endif()
  add_library(dsk_${name} STATIC ${_src})
  target_include_directories(dsk_${name} PUBLIC ${PROJECT_SOURCE_DIR}/lib)
  target_link_libraries(dsk_${name} PUBLIC ${ARG_DEPS} nlohmann_json::nlohmann_json Threads::Threads)
  target_compile_definitions(dsk_${name} PUBLIC DSK_VERSION="${PROJECT_VERSION}"
                             DSK_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  dsk_target_flags(dsk_${name})
endfunction()
