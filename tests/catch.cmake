# Registers each Catch2 test case of an executable as a CTest test (Catch2 v2's own discovery module).
find_package(Catch2 REQUIRED)
include(Catch)
function(moekit_catch_tests target)
  catch_discover_tests(${target} TEST_PREFIX "${target}." PROPERTIES TIMEOUT 600)
endfunction()
