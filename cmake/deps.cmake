# The dependencies of moe_core (the torch-free rooms), found once for the main build and the fuzzing
# harness (fuzz/CMakeLists.txt). Debian package names are in scripts/install-deps.sh.
# Defines moekit_core_deps: the targets moe_core (or its fuzzing twin) links publicly, and
# moekit_tokenizer_deps: PCRE2 and utf8proc, linked privately by moe_core.
find_package(Threads REQUIRED)
find_package(CLI11 REQUIRED)
# msgpack-cxx >= 6 exports msgpack-cxx; Debian bookworm's 4.x exports msgpackc-cxx from package "msgpack".
find_package(msgpack-cxx CONFIG QUIET)
if(NOT msgpack-cxx_FOUND)
  find_package(msgpack CONFIG REQUIRED)
endif()
find_package(nlohmann_json 3 REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
# Hugging Face tokenizers: Unicode regexes (PCRE2 with JIT) and normalisation (utf8proc).
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)

if(TARGET msgpack-cxx)
  set(moekit_msgpack msgpack-cxx)
else()
  set(moekit_msgpack msgpackc-cxx)
endif()
set(moekit_core_deps ${moekit_msgpack} CLI11::CLI11 nlohmann_json::nlohmann_json PkgConfig::ZSTD PkgConfig::XXHASH
    Threads::Threads)
set(moekit_tokenizer_deps PkgConfig::PCRE2 PkgConfig::UTF8PROC)
