# Registers each Catch2 test case of an executable as a CTest test (Catch2 v2's own discovery module).
# A test case name is a CMake list element here, so it must not hold ';' or unbalanced '[' ']'; with
# --warn NoTests a name that CTest mangled matches no test case and fails, instead of passing empty.
find_package(Catch2 REQUIRED)
include(Catch)
function(moekit_catch_tests target)
  catch_discover_tests(${target} TEST_PREFIX "${target}." EXTRA_ARGS --warn NoTests PROPERTIES TIMEOUT 600 ENVIRONMENT OMP_NUM_THREADS=1)
endfunction()
