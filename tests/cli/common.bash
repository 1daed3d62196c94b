# Shared set-up for Bats tests: the binaries of this build first on PATH, a scratch dir per test.
setup_common() {
  : "${MOEKIT_BIN:?run through ctest (MOEKIT_BIN unset)}"
  PATH="$MOEKIT_BIN:$MOEKIT_TEST_BIN:$PATH"
  SRC="$MOEKIT_SRC"
  DATA="$MOEKIT_SRC/tests/data"
  TMP="$BATS_TEST_TMPDIR"
}

# The trainer tests' fixture for setup_file (calls setup_common; W=$BATS_FILE_TMPDIR): a tiny model m0 (seed 1), 3 Countdown prompts, a
# rollout of them with its routing (roll.zst, r.zst) and non-zero advantages through moe_fake_reward and
# `moe-reward --task keep` (rew.zst; a random model's real rewards are all 0).
setup_train_fixture() {
  setup_common
  export W="$BATS_FILE_TMPDIR"
  moe-init --preset tiny -o "$W/m0" --seed 1 -q
  moe-data countdown -n 3 --seed 3 > "$W/p.jsonl"
  moe-rollout -m "$W/m0" -G 2 --max-new-tokens 6 --seed 1 --routing-out "$W/r.zst" -q "$W/p.jsonl" > "$W/roll.zst"
  moe_fake_reward "$W/roll.zst" | moe-reward --task keep -q > "$W/rew.zst"
}

# rendezvous: a --dist-init-file path no launch has used (c10d's FileStore; the ranks remove it when they
# all finish). Tests launch their ranks through a file, not a TCP port: a random port can be taken by another
# test's listener or connection, and then rank 0 cannot bind it.
rendezvous() { mktemp -u "$BATS_TEST_TMPDIR/rendezvous.XXXXXX"; }

# free_port: a TCP port no one listens on now, below Linux's ephemeral range (where the kernel picks the ports
# of outgoing connections and of Gloo's own sockets), for the tests of the TCPStore rendezvous itself.
free_port() {
  python3 - <<'PY'
import random, socket
for _ in range(200):
    p = random.randrange(10000, 32768)
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    raise SystemExit("free_port: no free port found")
PY
}
