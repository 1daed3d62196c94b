#include <dirent.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <string>

#include "../support/stream_forge.h"
#include "moe/format/rollout.h"
#include "moe/format/routing.h"
#include "moe/format/stream.h"
#include "scratch.h"
#include "moe/io/error.h"
#include "moe/io/file.h"

using namespace moe::format;
using moe::testing::Forge;
using nlohmann::json;

namespace {

std::string scratch_dir() {
  static std::string dir;
  if (dir.empty()) dir = moe::testing::make_scratch_dir("moekit-format");
  return dir;
}

std::string put(const std::string& name, const std::string& bytes) {
  std::string path = scratch_dir() + "/" + name;
  moe::io::write_file_atomic(path, bytes);
  return path;
}

Header test_header() {
  Header h;
  h.producer = {{"program", "format_test"}};
  return h;
}

RoutingMeta meta(int layers, int experts, int k, const std::string& prob = "f16") {
  RoutingMeta m;
  m.num_layers = layers;
  m.num_experts = experts;
  m.top_k = k;
  m.prob_dtype = prob;
  for (int i = 0; i < layers; ++i) m.layer_ids.push_back(2 * i + 1);
  return m;
}

// Reads every record of a stream of any kind, checking it like the typed readers do.
uint64_t read_all(const std::string& path) {
  moe::io::Input in(path);
  StreamReader r(in);
  Record rec;
  uint64_t n = 0;
  while (r.next(rec)) {
    record_to_json(r.header(), rec, r.name());
    ++n;
  }
  return n;
}

std::string routing_record_bytes(uint64_t id, int64_t n_pos, const std::string& experts, const std::string& probs) {
  json r = {{"id", id}, {"first_pos", 0}, {"n_pos", n_pos}, {"experts", moe::testing::bin(experts)}};
  if (!probs.empty()) r["probs"] = moe::testing::bin(probs);
  return moe::testing::pack_json(r);
}

// A valid routing forge: 2 layers, 8 experts, top-2, u8, f16; two records of 3 positions.
Forge good_forge() {
  Forge f;
  f.header = moe::testing::pack_json(Forge::header_json("routing", 1, Forge::routing_meta()));
  std::string e = {0, 1, 2, 3, 4, 5, 6, 7, 1, 0, 3, 2};
  std::string p(24, '\0');
  f.records.push_back(routing_record_bytes(0, 3, e, p));
  f.records.push_back(routing_record_bytes(1, 3, e, p));
  return f;
}

void require_error(const std::string& path, const std::string& needle) {
  std::string name = path;
  try {
    read_all(path);
    FAIL("no error for " << path);
  } catch (const moe::Error& e) {
    std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find(name) != std::string::npos);
    CHECK(msg.find(needle) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("half conversion: exact values, subnormals, inf, NaN", "[format][half]") {
  CHECK(float_to_half(1.0f) == 0x3c00);
  CHECK(float_to_half(-2.0f) == 0xc000);
  CHECK(float_to_half(0.1f) == 0x2e66);
  CHECK(float_to_half(65504.0f) == 0x7bff);
  CHECK(float_to_half(65519.99f) == 0x7bff);
  CHECK(float_to_half(65520.0f) == 0x7c00);  // ties to even: rounds up to infinity
  CHECK(float_to_half(1e10f) == 0x7c00);
  CHECK(float_to_half(-INFINITY) == 0xfc00);
  CHECK(float_to_half(-0.0f) == 0x8000);
  CHECK(float_to_half(std::ldexp(1.0f, -24)) == 0x0001);      // smallest subnormal
  CHECK(float_to_half(std::ldexp(1.0f, -25)) == 0x0000);      // half-way to 0: even
  CHECK(float_to_half(std::ldexp(3.0f, -25)) == 0x0002);      // half-way between 1 and 2: even
  CHECK(float_to_half(std::ldexp(1.0f, -14)) == 0x0400);      // smallest normal
  CHECK(float_to_half(std::ldexp(1023.5f, -24)) == 0x0400);   // rounds up into the normals
  CHECK(float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);  // tie -> even mantissa
  CHECK(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);
  CHECK(std::isnan(half_to_float(float_to_half(NAN))));
  CHECK((float_to_half(NAN) & 0x7c00) == 0x7c00);
  CHECK(half_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(half_to_float(0x7c00) == INFINITY);
  CHECK(std::signbit(half_to_float(0x8000)));

  // Every half: half -> float -> half is the identity (NaNs stay NaN), and the bulk paths agree with scalar.
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = uint16_t(i);
  std::vector<float> f(65536);
  halves_to_floats(all.data(), f.data(), all.size());
  int mismatches = 0;
  for (uint32_t i = 0; i < 65536; ++i) {
    float s = half_to_float(uint16_t(i));
    bool nan = (i & 0x7c00) == 0x7c00 && (i & 0x3ff);
    if (nan) {
      mismatches += !(std::isnan(s) && std::isnan(f[i]));
    } else {
      mismatches += std::memcmp(&s, &f[i], 4) != 0;
      mismatches += float_to_half(s) != i;
    }
  }
  CHECK(mismatches == 0);
  std::mt19937 rng(7);
  std::vector<float> xs(100003);
  for (size_t i = 0; i < xs.size(); ++i) {
    uint32_t bits = rng();
    std::memcpy(&xs[i], &bits, 4);
    if (i % 3 == 0) xs[i] = std::ldexp(float(int(rng() % 20001) - 10000), -int(rng() % 40));
  }
  std::vector<uint16_t> hs(xs.size());
  floats_to_halves(xs.data(), hs.data(), xs.size());
  int diff = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    uint16_t s = float_to_half(xs[i]);
    if (std::isnan(xs[i])) diff += !((hs[i] & 0x7c00) == 0x7c00 && (hs[i] & 0x3ff));
    else diff += s != hs[i];
  }
  CHECK(diff == 0);
}

TEST_CASE("routing records round trip for every index and prob dtype", "[format][routing]") {
  struct Case { int experts; const char* prob; const char* idx; };
  for (Case c : {Case{128, "f16", "u8"}, Case{300, "f32", "u16"}, Case{8, "none", "u8"}, Case{16, "f32", ""}}) {
    DYNAMIC_SECTION("experts " << c.experts << " prob " << c.prob) {
      RoutingMeta m = meta(3, c.experts, 4, c.prob);
      m.model_digest = "sha256:abc";
      moe::testing::RoutingSynth synth(3, c.experts, 4, 11);
      std::vector<RoutingRecord> written;
      std::string path = scratch_dir() + "/rt-" + std::to_string(c.experts) + c.prob + ".zst";
      {
        moe::io::Output out(path);
        RoutingWriter w(out, test_header(), m);
        CHECK(w.meta().index_dtype == (c.experts <= 256 ? "u8" : "u16"));
        for (uint64_t id = 0; id < 20; ++id) {
          RoutingRecord r;
          synth.fill(id * 3, int64_t(id), int64_t(id % 7), std::string(c.prob) != "none", 0, 0, r);
          w.write(r);
          written.push_back(r);
          if (id % 5 == 0) w.flush();
        }
        w.finish();
        CHECK(w.count() == 20);
        out.close();
      }
      moe::io::Input in(path);
      RoutingReader r(in);
      CHECK(r.meta().num_experts == c.experts);
      CHECK(r.meta().layer_ids == std::vector<int>{1, 3, 5});
      CHECK(r.meta().model_digest == "sha256:abc");
      CHECK(r.header().producer["program"] == "format_test");
      RoutingRecord got;
      size_t i = 0;
      while (r.next(got)) {
        REQUIRE(i < written.size());
        const RoutingRecord& w = written[i++];
        CHECK(got.id == w.id);
        CHECK(got.first_pos == w.first_pos);
        CHECK(got.n_pos == w.n_pos);
        CHECK(got.experts == w.experts);
        REQUIRE(got.probs.size() == w.probs.size());
        for (size_t j = 0; j < w.probs.size(); ++j)
          CHECK(got.probs[j] == (std::string(c.prob) == "f16" ? half_to_float(float_to_half(w.probs[j])) : w.probs[j]));
      }
      CHECK(i == written.size());
      CHECK_FALSE(r.next(got));  // stays at the end
    }
  }
}

TEST_CASE("rollout records round trip every field, optional ones and unknown keys", "[format][rollout]") {
  std::string path = scratch_dir() + "/rollout.zst";
  RolloutRecord a;
  a.id = 1ull << 40;
  a.group = 7;
  a.sample = 3;
  a.prompt_tokens = {1, 2, 3, 2147483647};
  a.response_tokens = {5, 6};
  a.logprobs = {-0.5f, -1e-30f};
  a.prev_logprobs = {-0.25f, -INFINITY};
  a.finish_reason = "eos";
  a.prompt_text = "1 2 3=6|";
  a.response_text = "(1+2)+3\xe2\x9c\x93";
  a.task = {{"numbers", {1, 2, 3}}, {"target", 6}, {"nested", {{"x", nullptr}, {"ok", true}}}};
  a.reward = 1.0;
  a.advantage = -0.75;
  a.reward_info = {{"format", 0.1}, {"answer", 0.9}};
  a.extra.push_back({"future_key", moe::testing::pack_json(json{{"a", {1, 2}}, {"b", "c"}})});
  a.extra.push_back({"raw_bin", moe::testing::pack_json(moe::testing::bin("\x01\x02"))});
  RolloutRecord b;  // optional fields absent
  b.id = 2;
  b.response_tokens = {9};
  {
    moe::io::Output out(path);
    Header h = test_header();
    h.meta = {{"vocab_size", int64_t(1) << 31}, {"temperature", 1.0}, {"model_digest", ""}};
    RolloutWriter w(out, h);
    w.write(a);
    w.write(b);
    w.finish();
    out.close();
  }
  moe::io::Input in(path);
  RolloutReader r(in);
  CHECK(r.header().kind == "rollout");
  CHECK(r.header().version == kRolloutVersion);
  CHECK(r.header().meta["temperature"] == 1.0);
  RolloutRecord x;
  REQUIRE(r.next(x));
  CHECK(x.id == a.id);
  CHECK(x.group == a.group);
  CHECK(x.sample == a.sample);
  CHECK(x.prompt_tokens == a.prompt_tokens);
  CHECK(x.response_tokens == a.response_tokens);
  CHECK(x.logprobs == a.logprobs);
  CHECK(x.prev_logprobs[0] == a.prev_logprobs[0]);
  CHECK(std::isinf(x.prev_logprobs[1]));
  CHECK(x.finish_reason == a.finish_reason);
  CHECK(x.prompt_text == a.prompt_text);
  CHECK(x.response_text == a.response_text);
  CHECK(x.task == a.task);
  CHECK(x.reward == a.reward);
  CHECK(x.advantage == a.advantage);
  CHECK(x.reward_info == a.reward_info);
  REQUIRE(x.extra.size() == 2);
  CHECK(x.extra == a.extra);  // written back byte for byte
  CHECK(r.offset() > 0);
  REQUIRE(r.next(x));
  CHECK(x.id == 2);
  CHECK(x.prompt_tokens.empty());
  CHECK(x.logprobs.empty());
  CHECK_FALSE(x.reward.has_value());
  CHECK_FALSE(x.advantage.has_value());
  CHECK(x.task == json::object());
  CHECK(x.reward_info == json::object());
  CHECK(x.extra.empty());
  CHECK_FALSE(r.next(x));
}

TEST_CASE("a 50 MB record and 100k small records", "[format][large]") {
  std::string path = scratch_dir() + "/large.zst";
  RolloutRecord big;
  big.response_tokens.resize(50'000'000 / 4);
  for (size_t i = 0; i < big.response_tokens.size(); ++i) big.response_tokens[i] = int32_t((i * 2654435761u) % 50000);
  {
    moe::io::Output out(path);
    RolloutWriter w(out, test_header());
    RolloutRecord small;
    for (uint64_t i = 0; i < 100000; ++i) {
      small.id = i;
      small.response_tokens = {int32_t(i % 1000)};
      w.write(small);
    }
    big.id = 100000;
    w.write(big);
    w.finish();
    out.close();
  }
  moe::io::Input in(path);
  RolloutReader r(in);
  RolloutRecord x;
  uint64_t n = 0;
  bool small_ok = true;
  while (r.next(x)) {
    if (n < 100000) small_ok &= x.id == n && x.response_tokens.size() == 1 && x.response_tokens[0] == int32_t(n % 1000);
    ++n;
  }
  CHECK(small_ok);
  CHECK(n == 100001);
  CHECK(x.id == 100000);
  CHECK(x.response_tokens == big.response_tokens);
}

TEST_CASE("concatenated zstd frames decode transparently, even split inside a record", "[format][stream]") {
  Forge f = good_forge();
  std::string raw = f.raw();
  std::string path = put("frames.zst", Forge::compress_frames(raw, {f.header.size(), f.header.size() + 5, raw.size() - 3}));
  CHECK(read_all(path) == 2);
  // A skippable frame in front is fine too (zstd's own container feature).
  std::string skippable = std::string("\x50\x2a\x4d\x18\x04\x00\x00\x00" "abcd", 12);
  CHECK(read_all(put("skippable.zst", skippable + f.zst())) == 2);
}

TEST_CASE("unknown keys are ignored in headers and records", "[format][stream]") {
  Forge f;
  json h = Forge::header_json("routing", 1, Forge::routing_meta());
  h["future_header_key"] = {1, 2, 3};
  h["meta"]["future_meta_key"] = "x";
  f.header = moe::testing::pack_json(h);
  json r = {{"id", 5}, {"first_pos", 2}, {"n_pos", 1}, {"experts", moe::testing::bin({0, 1, 2, 3})},
            {"probs", moe::testing::bin(std::string(8, '\0'))}, {"later", {{"x", 1}}}};
  f.records.push_back(moe::testing::pack_json(r));
  std::string path = put("unknown-keys.zst", f.zst());
  moe::io::Input in(path);
  RoutingReader rr(in);
  RoutingRecord rec;
  REQUIRE(rr.next(rec));
  CHECK(rec.id == 5);
  CHECK(rec.first_pos == 2);
  CHECK(rec.experts == std::vector<uint16_t>{0, 1, 2, 3});
  CHECK_FALSE(rr.next(rec));
}

TEST_CASE("broken streams are errors naming the file and the offset", "[format][bad]") {
  auto routing = [] { return good_forge(); };
  SECTION("not zstd") { require_error(put("plain.txt", "hello, world\n"), "not a moekit stream (not zstd)"); }
  SECTION("empty") { require_error(put("empty.zst", ""), "empty input"); }
  SECTION("bad magic") {
    Forge f = routing();
    f.header = moe::testing::pack_json(Forge::header_json("routing", 1, Forge::routing_meta(), "moekat"));
    require_error(put("magic.zst", f.zst()), "bad magic");
  }
  SECTION("first object not a map") {
    Forge f = routing();
    f.header = moe::testing::pack_json(json::array({"moekit"}));
    require_error(put("magic2.zst", f.zst()), "bad magic");
  }
  SECTION("unknown kind") {
    Forge f = routing();
    f.header = moe::testing::pack_json(Forge::header_json("routings", 1, Forge::routing_meta()));
    require_error(put("kind.zst", f.zst()), "unknown stream kind");
  }
  SECTION("wrong kind for a typed reader") {
    Forge f = routing();
    std::string path = put("wrongkind.zst", f.zst());
    moe::io::Input in(path);
    CHECK_THROWS_WITH(RolloutReader(in), Catch::Contains(path) && Catch::Contains("expected a rollout stream, found routing"));
  }
  SECTION("future version") {
    Forge f = routing();
    f.header = moe::testing::pack_json(Forge::header_json("routing", 3, Forge::routing_meta()));
    require_error(put("future.zst", f.zst()), "written by a newer moekit");
  }
  SECTION("missing trailer") {
    Forge f = routing();
    f.trailer = false;
    require_error(put("notrailer.zst", f.zst()), "missing trailer");
  }
  SECTION("truncated inside a record") {
    Forge f = routing();
    f.trailer = false;
    std::string raw = f.raw();
    raw.resize(raw.size() - 4);
    require_error(put("truncrec.zst", Forge::compress_frames(raw, {})), "truncated record");
  }
  SECTION("truncated zstd frame") {
    std::string z = routing().zst();
    z.resize(z.size() - 3);
    require_error(put("truncframe.zst", z), "truncated");
  }
  SECTION("count mismatch") {
    Forge f = routing();
    f.count_delta = 1;
    require_error(put("count.zst", f.zst()), "record count mismatch");
  }
  SECTION("checksum mismatch") {
    Forge f = routing();
    f.checksum_xor = 1;
    require_error(put("checksum.zst", f.zst()), "checksum mismatch");
  }
  SECTION("wrong payload length") {
    Forge f = routing();
    f.records[1] = routing_record_bytes(1, 3, std::string(11, '\1'), std::string(24, '\0'));
    require_error(put("payload.zst", f.zst()), "payload is 11 bytes");
  }
  SECTION("non-map record") {
    Forge f = routing();
    f.records[1] = moe::testing::pack_json(json::array({1, 2}));
    require_error(put("nonmap.zst", f.zst()), "record is not a map");
  }
  SECTION("duplicate expert") {
    Forge f = routing();
    f.records[1] = routing_record_bytes(1, 3, {0, 1, 2, 3, 4, 5, 6, 7, 1, 1, 3, 2}, std::string(24, '\0'));
    require_error(put("dup.zst", f.zst()), "appears twice");
  }
  SECTION("expert out of range") {
    Forge f = routing();
    f.records[0] = routing_record_bytes(0, 3, {0, 1, 2, 3, 4, 5, 6, 8, 1, 0, 3, 2}, std::string(24, '\0'));
    require_error(put("range.zst", f.zst()), "out of range");
  }
  SECTION("trailing garbage after the trailer") {
    require_error(put("trailing.zst", routing().zst() + "garbage"), "trailing data after the trailer");
    Forge f = routing();
    require_error(put("trailing2.zst", Forge::compress_frames(f.raw() + f.records[0], {})), "trailing data after the trailer");
    require_error(put("twostreams.zst", f.zst() + f.zst()), "trailing data after the trailer");
  }
  SECTION("duplicate key") {
    Forge f = routing();
    std::string r = f.records[0];
    REQUIRE(uint8_t(r[0]) == 0x85);
    r[0] = char(0x86);  // fixmap of 5 -> 6 entries, the sixth a second "id"
    r += moe::testing::pack_json(json("id")) + moe::testing::pack_json(json(9));
    f.records[0] = r;
    require_error(put("dupkey.zst", f.zst()), "duplicate key \"id\"");
  }
  SECTION("hostile length does not allocate") {
    Forge f = routing();
    f.trailer = false;
    f.records.push_back(std::string("\x81\xa1x\xc6\x7f\xff\xff\xff", 8) + "tiny");  // bin32 of 2 GiB - 1
    require_error(put("hostile.zst", f.zst()), "256 MiB record limit");
    f.records.back() = std::string("\x81\xa1x\xdd\x0f\xff\xff\xff", 8);  // array32 of 268M items, none present
    require_error(put("hostile2.zst", f.zst()), "an array declares 268435455 entries, more than one record may hold");
  }
  SECTION("bad meta") {
    Forge f = routing();
    f.header = moe::testing::pack_json(Forge::header_json("routing", 1, Forge::routing_meta(2, 8, 9)));
    require_error(put("meta.zst", f.zst()), "top_k");
  }
}

TEST_CASE("every file in tests/data/bad is rejected by every reader with its name", "[format][bad]") {
  std::string dir = std::string(MOEKIT_TEST_DATA) + "/bad";
  DIR* d = opendir(dir.c_str());
  REQUIRE(d != nullptr);
  int files = 0;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name[0] == '.' || name == "README.md" || name.size() < 4) continue;
    std::string path = dir + "/" + name;
    ++files;
    INFO(path);
    CHECK_THROWS_WITH(read_all(path), Catch::Contains(path));
    auto routing = [&] {
      moe::io::Input in(path);
      RoutingReader r(in);
      RoutingRecord rec;
      while (r.next(rec)) {
      }
    };
    CHECK_THROWS_AS(routing(), moe::Error);
    CHECK_THROWS_WITH(routing(), Catch::Contains(path));
  }
  closedir(d);
  CHECK(files >= 13);
}

TEST_CASE("writers reject records that do not fit the declared shape", "[format][routing]") {
  std::string path = scratch_dir() + "/reject.zst";
  moe::io::Output out(path);
  RoutingWriter w(out, test_header(), meta(2, 8, 2));
  RoutingRecord r;
  r.n_pos = 1;
  r.experts = {0, 1, 2};
  r.probs = {0, 0, 0};
  CHECK_THROWS_WITH(w.write(r), Catch::Contains("needs 4"));
  r.experts = {0, 1, 2, 2};
  r.probs = {0, 0, 0, 0};
  CHECK_THROWS_WITH(w.write(r), Catch::Contains("appears twice"));
  r.experts = {0, 1, 2, 8};
  CHECK_THROWS_WITH(w.write(r), Catch::Contains("out of range"));
  r.experts = {0, 1, 2, 3};
  r.probs.clear();
  CHECK_THROWS_WITH(w.write(r), Catch::Contains("probs"));
  RoutingMeta bad = meta(2, 300, 2);
  bad.index_dtype = "u8";
  moe::io::Output out2(path + "2");
  CHECK_THROWS_WITH(RoutingWriter(out2, test_header(), bad), Catch::Contains("u8 cannot hold 300"));
}

TEST_CASE("a reader on a pipe sees flushed records before the writer finishes", "[format][flush]") {
  int data[2], go[2];
  REQUIRE(pipe(data) == 0);
  REQUIRE(pipe(go) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // writer: 3 records, flush, wait for the reader's go (or give up after 5 s), then more
    close(data[0]);
    close(go[1]);
    dup2(data[1], 1);
    close(data[1]);
    try {
      moe::io::Output out("-");
      RoutingWriter w(out, test_header(), meta(1, 8, 2, "none"));
      RoutingRecord r;
      r.n_pos = 1;
      r.experts = {1, 2};
      for (uint64_t i = 0; i < 3; ++i) {
        r.id = i;
        w.write(r);
      }
      w.flush();
      pollfd p{go[0], POLLIN, 0};
      if (poll(&p, 1, 5000) != 1) {  // the reader never saw the batch: mark the failure in the stream
        r.id = 999;
        w.write(r);
      }
      r.id = 3;
      w.write(r);
      w.finish();
      out.close();
    } catch (...) {
      _exit(1);
    }
    _exit(0);
  }
  close(data[1]);
  close(go[0]);
  moe::io::Input in("/dev/fd/" + std::to_string(data[0]));
  RoutingReader r(in);
  RoutingRecord rec;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3 && r.next(rec); ++i) ids.push_back(rec.id);
  CHECK(write(go[1], "g", 1) == 1);
  while (r.next(rec)) ids.push_back(rec.id);
  CHECK(ids == std::vector<uint64_t>{0, 1, 2, 3});
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  close(data[0]);
  close(go[1]);
}

TEST_CASE("record_to_json decodes payloads by the header's schema", "[format][json]") {
  Forge f = good_forge();
  std::string path = put("json.zst", f.zst());
  moe::io::Input in(path);
  StreamReader r(in);
  Record rec;
  REQUIRE(r.next(rec));
  json j = record_to_json(r.header(), rec);
  CHECK(j["id"] == 0);
  CHECK(j["experts"] == json::parse("[[[0,1],[2,3]],[[4,5],[6,7]],[[1,0],[3,2]]]"));
  CHECK(j["probs"][2][1][0] == 0.0);
  CHECK(rec.offset == f.header.size());
  CHECK(rec.find("n_pos")->via.u64 == 3);
  CHECK(rec.find("nope") == nullptr);
}

#include "moe/format/route_dump.h"

namespace {
std::string write_routing(const std::string& name, const std::vector<RoutingRecord>& recs) {
  std::string path = scratch_dir() + "/" + name;
  moe::io::Output out(path);
  RoutingWriter w(out, test_header(), meta(1, 4, 2, "f32"));
  for (const auto& r : recs) w.write(r);
  w.finish();
  out.close();
  return path;
}
RoutingRecord rr(uint64_t id, int64_t first, std::vector<uint16_t> e, std::vector<float> p) {
  RoutingRecord r;
  r.id = id;
  r.first_pos = first;
  r.n_pos = int64_t(e.size() / 2);
  r.experts = std::move(e);
  r.probs = std::move(p);
  return r;
}
}  // namespace

TEST_CASE("route diff: exact shares, Jaccard, probability differences and unmatched positions", "[format][diff]") {
  std::string a = write_routing("diff-a.zst", {rr(0, 0, {0, 1, 2, 3, 0, 2}, {.5f, .3f, .4f, .4f, .6f, .1f}),
                                               rr(7, 0, {0, 1, 1, 0}, {.5f, .5f, .5f, .5f})});
  std::string b = write_routing("diff-b.zst", {rr(5, 0, {1, 2}, {.5f, .5f}),
                                               rr(0, 1, {3, 2, 0, 3, 1, 2}, {.3f, .4f, .5f, .2f, .5f, .5f})});
  std::string out_path = scratch_dir() + "/diff.json";
  moe::format::route_dump::DiffSummary s;
  {
    moe::io::Input ia(a), ib(b);
    moe::io::Output out(out_path);
    s = moe::format::route_dump::diff(ia, ib, out, {true});
    out.close();
  }
  CHECK(s.tokens_compared == 2);
  CHECK(s.token_mismatch == 0.5);
  json j = json::parse(moe::io::read_file(out_path));
  CHECK(j["records_compared"] == 1);
  CHECK(j["only_a"]["records"] == 1);
  CHECK(j["only_a"]["positions"] == 3);  // position 0 of id 0, and id 7
  CHECK(j["only_b"]["records"] == 1);
  CHECK(j["only_b"]["positions"] == 2);  // position 3 of id 0, and id 5
  CHECK(j["overall"]["mismatch"] == 0.5);
  CHECK(j["overall"]["jaccard"].get<double>() == Approx(2.0 / 3));
  CHECK(j["overall"]["prob_mad"].get<double>() == Approx(0.2 / 3).epsilon(1e-6));
  CHECK(j["mean_differing_layers"] == 0.5);
  CHECK(j["layers"][0]["layer"] == 1);
  CHECK(j["max_buffered_records"].get<int>() >= 1);
}

TEST_CASE("a Record stays valid while later records are read (payloads are referenced, not copied)", "[format][stream]") {
  std::string path = scratch_dir() + "/keepalive.zst";
  moe::testing::RoutingSynth synth(4, 64, 4, 3);
  std::vector<RoutingRecord> written(40);
  {
    moe::io::Output out(path);
    RoutingWriter w(out, test_header(), meta(4, 64, 4, "f32"));
    for (uint64_t i = 0; i < written.size(); ++i) {
      synth.fill(i, 0, int64_t(50 + 300 * (i % 3)), true, 0, 0, written[i]);  // records of 3 KB .. 60 KB
      w.write(written[i]);
    }
    w.finish();
    out.close();
  }
  moe::io::Input in(path);
  StreamReader r(in, "routing");
  RoutingMeta m = RoutingMeta::from_json(r.header().meta);
  std::vector<Record> held(written.size());  // every record kept alive at once
  for (auto& rec : held) REQUIRE(r.next(rec));
  Record end;
  CHECK_FALSE(r.next(end));
  for (size_t i = 0; i < held.size(); ++i) {
    RoutingRecord got;
    decode_routing(r.name(), m, held[i], got);
    CHECK(got.experts == written[i].experts);
    CHECK(got.probs == written[i].probs);
  }
}

TEST_CASE("skippable frames after the trailer are allowed, data frames are not", "[format][stream]") {
  Forge f = good_forge();
  std::string skippable = std::string("\x5e\x2a\x4d\x18\x04\x00\x00\x00" "seek", 12);
  CHECK(read_all(put("skip-after.zst", f.zst() + skippable)) == 2);
  require_error(put("skip-then-data.zst", f.zst() + skippable + f.zst()), "trailing data after the trailer");
  require_error(put("skip-cut.zst", f.zst() + skippable.substr(0, 10)), "inside a skippable frame");
}

TEST_CASE("mutated streams are read or rejected with moe::Error, never anything worse", "[format][fuzz]") {
  // A valid routing stream and a valid rollout stream, mutated at the msgpack level (then compressed) and at
  // the zstd level. Every outcome must be a clean read or a moe::Error naming the file.
  std::vector<std::string> raws;
  raws.push_back(good_forge().raw());
  {
    std::string path = scratch_dir() + "/fuzz-rollout.zst";
    moe::io::Output out(path);
    Header h = test_header();
    h.meta = {{"vocab_size", 100}};
    RolloutWriter w(out, h);
    RolloutRecord r;
    r.prompt_tokens = {1, 2, 3};
    r.response_tokens = {4, 5};
    r.logprobs = {-1, -2};
    r.task = {{"a", {1, "x", nullptr}}};
    r.reward = 0.5;
    r.extra.push_back({"k", moe::testing::pack_json(json{{"z", 1.5}})});
    for (uint64_t i = 0; i < 3; ++i) {
      r.id = i;
      w.write(r);
    }
    w.finish();
    out.close();
    std::string z = moe::io::read_file(path);
    std::string raw;  // the writer's frame is streamed (no content size): decompress by streaming
    ZSTD_DCtx* d = ZSTD_createDCtx();
    ZSTD_inBuffer in{z.data(), z.size(), 0};
    std::vector<char> buf(1 << 16);
    while (in.pos < in.size) {
      ZSTD_outBuffer o{buf.data(), buf.size(), 0};
      REQUIRE_FALSE(ZSTD_isError(ZSTD_decompressStream(d, &o, &in)));
      raw.append(buf.data(), o.pos);
    }
    ZSTD_freeDCtx(d);
    raws.push_back(raw);
  }
  std::mt19937_64 rng(2024);
  int ok = 0, rejected = 0;
  std::string path = scratch_dir() + "/fuzz.zst";
  for (int iter = 0; iter < 3000; ++iter) {
    std::string raw = raws[iter % raws.size()];
    std::string bytes;
    int mode = int(rng() % 4);
    if (mode < 3) {  // msgpack-level: flip / overwrite / delete bytes
      int edits = 1 + int(rng() % 4);
      for (int e = 0; e < edits && !raw.empty(); ++e) {
        size_t at = rng() % raw.size();
        if (mode == 0) raw[at] = char(raw[at] ^ (1 << (rng() % 8)));
        else if (mode == 1) raw[at] = char(rng());
        else raw.erase(at, 1 + rng() % 8);
      }
      bytes = Forge::compress_frames(raw, {});
    } else {  // zstd-level: corrupt the compressed bytes
      bytes = Forge::compress_frames(raw, {raw.size() / 2});
      size_t at = rng() % bytes.size();
      bytes[at] = char(bytes[at] ^ (1 << (rng() % 8)));
    }
    {
      std::remove(path.c_str());  // a fresh file each round: rewriting in place makes ext4 flush on close
      std::ofstream f(path, std::ios::binary);  // no fsync: 3000 rounds
      f.write(bytes.data(), std::streamsize(bytes.size()));
    }
    try {
      read_all(path);
      ++ok;
    } catch (const moe::Error& e) {
      ++rejected;
      if (std::string(e.what()).find(path) == std::string::npos) FAIL("message without the file name: " << e.what());
    }
  }
  CHECK(rejected > 2000);  // almost every mutation is detected (the checksum sees payload flips)
  INFO("clean reads " << ok);
}

#include <sys/resource.h>

TEST_CASE("a short stream declaring a huge record does not get a huge buffer", "[format][bad]") {
  Forge f = good_forge();
  f.trailer = false;
  f.records.push_back(std::string("\x81\xa1x\xc6\x0f\xf0\x00\x00", 8) + std::string(1000, 'x'));  // bin32 of 255 MiB
  std::string path = put("huge-claim.zst", f.zst());
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  require_error(path, "truncated record");
  getrusage(RUSAGE_SELF, &after);
  CHECK(after.ru_maxrss - before.ru_maxrss < 64 * 1024);  // KiB: far below the 255 MiB claimed
}

TEST_CASE("expert row checks: every duplicate distance and range edge, top-8 fast path and generic", "[format][routing]") {
  for (int k : {8, 7, 2}) {
    for (int experts : {8, 16, 300, 65536}) {
      if (experts < k) continue;
      std::vector<uint16_t> rows(5 * size_t(k));  // 5 valid rows, each of k distinct experts
      for (int r = 0; r < 5; ++r)
        for (int j = 0; j < k; ++j) rows[r * k + j] = uint16_t((j * (experts / k) + r % std::max(1, experts / k)) % experts);
      INFO("k " << k << " experts " << experts);
      REQUIRE(check_expert_rows(rows.data(), 5, k, experts, nullptr) == -1);
      for (int a = 0; a < k; ++a)
        for (int b = 0; b < k; ++b) {
          if (a == b) continue;
          auto bad = rows;
          bad[3 * k + b] = bad[3 * k + a];  // duplicate in row 3
          std::string why;
          int64_t at = check_expert_rows(bad.data(), 5, k, experts, &why);
          CHECK(at == 3 * k + std::max(a, b));
          CHECK(why.find("twice") != std::string::npos);
        }
      if (experts < 65536) {
        for (uint16_t v : {uint16_t(experts), uint16_t(experts + 1), uint16_t(65535), uint16_t(32768)}) {
          if (v < experts) continue;
          auto bad = rows;
          bad[4 * k + k - 1] = v;
          std::string why;
          CHECK(check_expert_rows(bad.data(), 5, k, experts, &why) == 4 * k + k - 1);
          CHECK(why.find("out of range") != std::string::npos);
        }
      }
    }
  }
}

TEST_CASE("a record id seen before in the stream is an error with its offset (rollout and routing)", "[format][bad]") {
  const std::string path = scratch_dir() + "/dup.zst", rpath = scratch_dir() + "/dup-routing.zst";
  {
    moe::io::Output out(path);
    RolloutWriter w(out, test_header());
    RolloutRecord rec;
    for (uint64_t id : {0, 1, 2, 1}) {
      rec.id = id;
      w.write(rec);
    }
    w.finish();
    out.close();
  }
  moe::io::Input in(path);
  RolloutReader r(in);
  RolloutRecord x;
  CHECK(r.next(x));
  CHECK(r.next(x));
  CHECK(r.next(x));
  CHECK_THROWS_WITH(r.next(x), Catch::Contains("dup.zst: offset ") && Catch::Contains("duplicate record id 1"));
  {
    moe::io::Output out(rpath);
    RoutingWriter w(out, test_header(), meta(1, 8, 2, "none"));
    moe::testing::RoutingSynth synth(1, 8, 2, 3);
    for (uint64_t id : {5, 5}) {
      RoutingRecord rr;
      synth.fill(id, 0, 2, false, 0, 0, rr);
      w.write(rr);
    }
    w.finish();
    out.close();
  }
  moe::io::Input rin(rpath);
  RoutingReader rr(rin);
  RoutingRecord y;
  CHECK(rr.next(y));
  CHECK_THROWS_WITH(rr.next(y), Catch::Contains("duplicate record id 5"));
}

TEST_CASE("concatenated streams: next_stream goes on to each one, multi-frame and skippable frames included",
          "[format][stream][follow]") {
  Forge f = good_forge();
  std::string raw = f.raw();
  const std::string a = f.zst();
  const std::string b = Forge::compress_frames(raw, {f.header.size(), f.header.size() + 5, raw.size() - 3});
  const std::string skippable = std::string("\x50\x2a\x4d\x18\x04\x00\x00\x00" "abcd", 12);
  const std::string path = put("concat.zst", a + b + skippable + a);
  auto count_streams = [](const std::string& p, std::vector<uint64_t>& records) {
    moe::io::Input in(p);
    StreamReader r(in, "routing", /*concatenated=*/true);
    do {
      Record rec;
      uint64_t n = 0;
      while (r.next(rec)) {
        CHECK(rec.offset > 0);
        ++n;
      }
      records.push_back(n);
    } while (r.next_stream("routing"));
  };
  std::vector<uint64_t> records;
  count_streams(path, records);
  CHECK(records == std::vector<uint64_t>{2, 2, 2});
  // One stream alone, and a trailing skippable frame, are one stream.
  records.clear();
  count_streams(put("concat1.zst", a + skippable), records);
  CHECK(records == std::vector<uint64_t>{2});
  // Without `concatenated` a second stream is trailing data.
  require_error(path, "trailing data after the trailer");
  // Junk after a trailer, a truncated second stream, and a second stream of another kind are errors.
  for (const auto& [bytes, needle] :
       std::vector<std::pair<std::string, std::string>>{{a + "junk", "neither the end of the input nor a zstd frame"},
                                                        {a + b.substr(0, b.size() - 4), "truncated"},
                                                        {a + a.substr(0, 20), "truncated"}}) {
    records.clear();
    try {
      count_streams(put("concat-bad.zst", bytes), records);
      FAIL("no error for " << needle);
    } catch (const moe::Error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
      CHECK(records == std::vector<uint64_t>{2});  // the first stream was read whole
    }
  }
  Forge roll;
  roll.header = moe::testing::pack_json(Forge::header_json("rollout", 1, json::object()));
  moe::io::Input in(put("concat-kind.zst", a + roll.zst()));
  StreamReader r(in, "routing", true);
  Record rec;
  while (r.next(rec)) {
  }
  CHECK_THROWS_WITH(r.next_stream("routing"), Catch::Contains("wrong stream kind"));
}
