# Shared set-up for Bats tests: the binaries of this build first on PATH, a scratch dir per test.
setup_common() {
  : "${MOEKIT_BIN:?run through ctest (MOEKIT_BIN unset)}"
  PATH="$MOEKIT_BIN:$MOEKIT_TEST_BIN:$PATH"
  SRC="$MOEKIT_SRC"
  DATA="$MOEKIT_SRC/tests/data"
  TMP="$BATS_TEST_TMPDIR"
}
