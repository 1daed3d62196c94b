// Hostile input for every reader and writer: nesting, key and value limits, huge declarations, header
// bit flips, corrupt zstd frames, over-long and invalid lines, 64-bit payload overflow, the model dir lock
// and the clean-up of staging dirs. Tag [hostile].
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <string>

#include "../support/stream_forge.h"
#include "moe/format/rollout.h"
#include "moe/format/route_dump.h"
#include "moe/format/safetensors_header.h"
#include "moe/format/stream.h"
#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/io/jsonl.h"
#include "moe/io/limits.h"
#include "moe/io/lock.h"
#include "moe/reward/scorer.h"
#include "scratch.h"

using moe::Error;
using moe::testing::Forge;
using nlohmann::json;

namespace {

std::string dir() {
  static std::string d = moe::testing::make_scratch_dir("moekit-hostile");
  return d;
}

std::string put(const std::string& name, const std::string& bytes) {
  std::string p = dir() + "/" + name;
  moe::io::write_file_atomic(p, bytes);
  return p;
}

std::string nested_json(int levels) {  // {"a":{"a":...{}...}} with `levels` objects
  std::string s;
  for (int i = 0; i < levels; ++i) s += i + 1 < levels ? "{\"a\":" : "{}";
  for (int i = 1; i < levels; ++i) s += "}";
  return s;
}

// Reads every record of a stream file; rethrows the reader's error.
uint64_t read_all(const std::string& path) {
  moe::io::Input in(path);
  moe::format::StreamReader r(in);
  moe::format::Record rec;
  uint64_t n = 0;
  while (r.next(rec)) ++n;
  return n;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string decompress(const std::string& z) {
  ZSTD_DCtx* d = ZSTD_createDCtx();
  std::string out;
  ZSTD_inBuffer in{z.data(), z.size(), 0};
  std::string buf(1 << 16, '\0');
  while (in.pos < in.size) {
    ZSTD_outBuffer o{buf.data(), buf.size(), 0};
    size_t r = ZSTD_decompressStream(d, &o, &in);
    REQUIRE_FALSE(ZSTD_isError(r));
    out.append(buf.data(), o.pos);
  }
  ZSTD_freeDCtx(d);
  return out;
}

moe::format::Header rollout_header() {
  moe::format::Header h;
  h.producer = {{"program", "hostile_test"}};
  h.meta = {{"vocab_size", 100}, {"temperature", 1.0}};
  return h;
}

std::string rollout_stream(const json& task) {
  std::string path = dir() + "/r-" + std::to_string(::getpid()) + ".zst";
  moe::io::Output out(path);
  moe::format::RolloutWriter w(out, rollout_header());
  moe::format::RolloutRecord rec;
  rec.prompt_tokens = {1, 2};
  rec.task = task;
  w.write(rec);
  w.finish();
  out.close();
  return moe::io::read_file(path);
}

}  // namespace

TEST_CASE("JSON text: 64 levels read, 65 are an error found while parsing", "[hostile][io]") {
  CHECK(moe::io::json_depth(moe::io::parse_json(nested_json(64), "x: ")) == 64);
  std::string msg = error_of([] { moe::io::parse_json(nested_json(65), "f.jsonl:3: "); });
  CHECK(msg.find("f.jsonl:3: JSON nested deeper than 64 levels") == 0);
  // 70,000 levels (the crash of issue 11): an error, not a stack overflow.
  std::string deep(70000, '[');
  CHECK(error_of([&] { moe::io::parse_json(deep, "w: "); }).find("deeper than 64") != std::string::npos);
}

TEST_CASE("JSON text: keys per object and values per text are limited", "[hostile][io]") {
  std::string many = "{";
  for (size_t i = 0; i <= moe::io::kMaxMapKeys; ++i) many += (i ? ",\"" : "\"") + std::to_string(i) + "\":0";
  many += "}";
  CHECK(error_of([&] { moe::io::parse_json(many, ""); }).find("more than 65536 keys") != std::string::npos);
  std::string values = "[";
  for (size_t i = 0; i <= moe::io::kMaxItems; ++i) values += i ? ",0" : "0";
  values += "]";
  CHECK(error_of([&] { moe::io::parse_json(values, ""); }).find("more than 1048576 values") != std::string::npos);
}

TEST_CASE("JSON files: the one depth limit, errors naming the file, no cap on keys", "[hostile][io]") {
  // 100,000 levels (a hostile config.json or trainer_state.json): one error naming the file, found while parsing.
  const std::string deep = put("deep.json", "{\"x\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  CHECK(error_of([&] { moe::io::read_json_file(deep); }) == deep + ": JSON nested deeper than 64 levels (the limit of every moekit reader)");
  CHECK(moe::io::json_depth(moe::io::read_json_file(put("d64.json", nested_json(64)))) == 64);
  CHECK(error_of([&] { moe::io::read_json_file(put("d65.json", nested_json(65))); }).find(dir() + "/d65.json: JSON nested deeper than 64") == 0);
  const std::string bad = put("bad.json", "{\"a\": }");
  CHECK(error_of([&] { moe::io::read_json_file(bad); }).find(bad + ": malformed JSON at byte ") == 0);
  // A whole file may hold more keys than a record (a tokenizer's vocabulary): the record limits stay on records.
  std::string many = "{";
  for (size_t i = 0; i <= moe::io::kMaxMapKeys; ++i) many += (i ? ",\"" : "\"") + std::to_string(i) + "\":0";
  many += "}";
  CHECK(moe::io::read_json_file(put("vocab.json", many)).size() == moe::io::kMaxMapKeys + 1);
  CHECK(error_of([&] { moe::io::parse_json(many, ""); }).find("more than 65536 keys") != std::string::npos);
  CHECK(moe::io::parse_ordered_json(R"({"b": 1, "a": 2})", "").begin().key() == "b");
}

TEST_CASE("malformed JSON: byte offset, short escaped echo, invalid UTF-8, number overflow", "[hostile][io]") {
  std::string line = "{\"prompt\": \"ok\", \"x\": \"" + std::string(1 << 20, 'y') + "\xff\"}";
  std::string msg = error_of([&] { moe::io::parse_json(line, "p.jsonl:7: ", 1000); });
  INFO(msg);
  CHECK(msg.find("p.jsonl:7: malformed JSON at byte ") == 0);
  CHECK(msg.find("(offset ") != std::string::npos);
  CHECK(msg.find("UTF-8") != std::string::npos);
  CHECK(msg.find("\\xff") != std::string::npos);
  CHECK(msg.find('\xff') == std::string::npos);
  CHECK(msg.size() < 400);  // the megabyte is not echoed
  msg = error_of([] { moe::io::parse_json("{\"n\": 1E400}", "q: "); });
  CHECK(msg.find("q: malformed JSON") == 0);
}

TEST_CASE("JsonlReader: line, offset and a line longer than the limit", "[hostile][io]") {
  std::string p = put("lines.jsonl", "{\"a\": 1}\n\n{\"a\": [1,, 2]}\n");
  moe::io::JsonlReader r(p);
  json j;
  REQUIRE(r.next(j));
  std::string msg = error_of([&] { r.next(j); });
  INFO(msg);
  CHECK(msg.find(p + ":3: malformed JSON at byte 9 (offset 19)") == 0);
  std::string big = put("big.txt", "short\n" + std::string(5000, 'z') + "\n");
  moe::io::Input in(big);
  std::string l;
  REQUIRE(in.getline(l, 1000));
  msg = error_of([&] { in.getline(l, 1000); });
  CHECK(msg == big + ": offset 6: line 2 is longer than 1000 bytes (the limit of one JSON Lines record)");
}

TEST_CASE("stream records: 64 levels read back, 65 refused by the writer and by the reader", "[hostile][format]") {
  // A task payload of 63 levels is a record of 64: written and read.
  std::string ok = rollout_stream(moe::io::parse_json(nested_json(63), ""));
  CHECK(read_all(put("deep63.zst", ok)) == 1);
  // 64 levels of payload: the writer refuses (the record would be 65 deep).
  CHECK(error_of([] { rollout_stream(moe::io::parse_json(nested_json(64), "")); }).find("deeper than 64") != std::string::npos);
  // A forged record of 65 levels: the reader refuses it, naming its offset.
  Forge f;
  f.header = moe::testing::pack_json(Forge::header_json("rollout", 1, {{"vocab_size", 10}}));
  f.records.push_back(moe::testing::pack_json(json::parse(nested_json(65))));
  std::string p = put("deep65.zst", f.zst());
  std::string msg = error_of([&] { read_all(p); });
  INFO(msg);
  CHECK(msg.find(p + ": offset ") == 0);
  CHECK(msg.find("nested deeper than 64 levels") != std::string::npos);
}

TEST_CASE("stream records: declared counts beyond the limits fail before allocating", "[hostile][format]") {
  Forge f;
  f.header = moe::testing::pack_json(Forge::header_json("rollout", 1, {{"vocab_size", 10}}));
  // {"x": [0 x 300 M]}: 300 M values in ~300 MB that compress to a few hundred KB.
  std::string rec = std::string("\x81\xa1x\xdd\x11\xe1\xa3\x00", 8);
  rec += std::string(2 << 20, '\0');  // only the first 2 M values are present: the count alone must fail
  f.records.push_back(rec);
  f.trailer = false;
  std::string p = put("many-values.zst", f.zst());
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  std::string msg = error_of([&] { read_all(p); });
  getrusage(RUSAGE_SELF, &after);
  INFO(msg);
  CHECK(msg.find("more than one record may hold") != std::string::npos);
  CHECK(after.ru_maxrss - before.ru_maxrss < 64 * 1024);  // KiB
  // A map declaring 70,000 keys.
  Forge g = f;
  g.records = {std::string("\xdf\x00\x01\x11\x70", 5) + std::string(10, '\0')};
  p = put("many-keys.zst", g.zst());
  CHECK(error_of([&] { read_all(p); }).find("declares 70000 keys") != std::string::npos);
}

TEST_CASE("stream records: 65,536 keys with a duplicate found in well under a second", "[hostile][format]") {
  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  const uint32_t n = 65536;
  pk.pack_map(n);
  for (uint32_t i = 0; i < n; ++i) {
    pk.pack(std::to_string(i == n - 1 ? 17 : i));  // the last key repeats "17"
    pk.pack_nil();
  }
  Forge f;
  f.header = moe::testing::pack_json(Forge::header_json("rollout", 1, {{"vocab_size", 10}}));
  f.records.push_back(std::string(sb.data(), sb.size()));
  std::string p = put("dup-keys.zst", f.zst());
  auto t0 = std::chrono::steady_clock::now();
  CHECK(error_of([&] { read_all(p); }).find("duplicate key \"17\"") != std::string::npos);
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 1.0);
}

TEST_CASE("header bit flip: caught from version 2 on, version 1 streams still read by their rule", "[hostile][format]") {
  std::string raw = decompress(rollout_stream(json::object()));
  // meta.temperature 1.0 is packed as the fixint 01 (msgpack-c packs integral doubles as integers): one
  // flipped bit makes it 3, the case of issue 11 (moe-train-step trained at T = 3 with exit 0).
  const std::string one("\xabtemperature\x01", 13);
  size_t at = raw.find(one);
  REQUIRE(at != std::string::npos);
  std::string flipped = raw;
  flipped[at + 12] ^= 0x02;
  std::string p = put("flip-v2.zst", Forge::compress_frames(flipped, {}));
  std::string msg = error_of([&] { read_all(p); });
  INFO(msg);
  CHECK(msg.find("checksum mismatch") != std::string::npos);
  CHECK(msg.find("header or records corrupted") != std::string::npos);
  CHECK(read_all(put("clean-v2.zst", Forge::compress_frames(raw, {}))) == 1);
  // The same flip in a version 1 stream (checksum over records only) reads: that is the old rule.
  Forge f;
  f.header = moe::testing::pack_json(Forge::header_json("rollout", 1, {{"vocab_size", 10}, {"temperature", 1.0}}));
  f.records.push_back(moe::testing::pack_json({{"id", 0}}));
  std::string r1 = f.raw();
  size_t at1 = r1.find(one);
  REQUIRE(at1 != std::string::npos);
  r1[at1 + 12] ^= 0x02;
  CHECK(read_all(put("flip-v1.zst", Forge::compress_frames(r1, {}))) == 1);
}

TEST_CASE("corrupt zstd data is reported at the offset of its frame", "[hostile][format]") {
  Forge f;
  f.header = moe::testing::pack_json(Forge::header_json("rollout", 1, {{"vocab_size", 10}}));
  for (int i = 0; i < 50; ++i) f.records.push_back(moe::testing::pack_json({{"id", i}, {"text", std::string(200, 'a' + i % 26)}}));
  const std::string raw = f.raw();
  const std::string first = Forge::compress_frames(raw.substr(0, raw.size() / 2), {});
  std::string z = Forge::compress_frames(raw, {raw.size() / 2});
  REQUIRE(z.compare(0, first.size(), first) == 0);
  // The second frame's first block header: block type 3 is reserved, so zstd fails inside the frame.
  // Frame header size from its descriptor byte (RFC 8878 3.1.1.1).
  const auto fhd = static_cast<unsigned char>(z[first.size() + 4]);
  const bool single = fhd & 0x20;
  const size_t did[] = {0, 1, 2, 4}, fcs[] = {single ? 1u : 0u, 2, 4, 8};
  const size_t fh = 4 + 1 + (single ? 0 : 1) + did[fhd & 3] + fcs[fhd >> 6];
  z[first.size() + fh] |= 0x06;
  std::string p = put("corrupt-frame.zst", z);
  std::string msg = error_of([&] { read_all(p); });
  INFO(msg);
  CHECK(msg.find(p + ": compressed offset " + std::to_string(first.size()) + ": corrupt zstd data in the frame starting there") == 0);
}

TEST_CASE("show: a text of several MiB is written in pieces and reads byte for byte as one JSON string", "[hostile][format]") {
  // Pieces of 1 MiB end before an ASCII byte: a valid sequence straddling a boundary, an invalid byte and a
  // sequence cut short just before one, control characters, and a truncated sequence at the very end.
  const size_t mib = size_t(1) << 20;
  std::string text(mib - 1, 'a');
  text += "\xc3\xa9" + std::string(mib - 3, 'b') + "\xe9" + "c\"\\\n\t\x01" + std::string(mib, 'd') + "\xf0\x9f\x98\x80";
  text += std::string(mib - 2, 'e') + "\xe2\x82" + "f" + std::string(100, 'g') + "\xe2\x82";
  const std::string path = dir() + "/bigtext.zst";
  {
    moe::io::Output out(path);
    moe::format::RolloutWriter w(out, rollout_header());
    moe::format::RolloutRecord rec;
    rec.prompt_tokens = {1, 2};
    rec.response_tokens = {3};
    rec.prompt_text = "p\xff";
    rec.response_text = text;
    w.write(rec);
    w.finish();
    out.close();
  }
  const std::string shown = dir() + "/bigtext.txt";
  {
    moe::io::Input in(path);
    moe::io::Output out(shown);
    moe::format::route_dump::show(in, out, {});
    out.close();
  }
  const std::string got = moe::io::read_file(shown);
  auto quoted = [](const std::string& s) { return json(s).dump(-1, ' ', false, json::error_handler_t::replace); };
  CHECK(got.find("prompt   (2 tokens): " + quoted("p\xff") + "\n  response (1 tokens): ") != std::string::npos);
  const std::string want = "response (1 tokens): " + quoted(text) + "\n";
  const size_t at = got.find("response (1 tokens): ");
  REQUIRE(at != std::string::npos);
  CHECK(got.compare(at, want.size(), want) == 0);
  CHECK(got.size() == at + want.size());
}

TEST_CASE("stream records: nested map keys are shown as <map>, not as exponentially escaped text", "[hostile][format]") {
  // fuzz_stream's timeout (fuzz/corpus/stream/timeout-nested-map-keys, 60 levels): each map key was shown as
  // its JSON text, which holds the text of its own key escaped once more, doubling at every level. 24 levels
  // here: enough to tell (the old text ran to megabytes), few enough to fail quickly if it comes back.
  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  for (int i = 0; i < 24; ++i) pk.pack_map(1);  // {{{{nil: nil}: nil}...}: nil}
  for (int i = 0; i < 25; ++i) pk.pack_nil();
  const std::string path = dir() + "/mapkeys.zst";
  {
    moe::io::Output out(path);
    moe::format::RolloutWriter w(out, rollout_header());
    moe::format::RolloutRecord rec;
    rec.prompt_tokens = {1, 2};
    rec.extra.emplace_back("x", std::string(sb.data(), sb.size()));
    w.write(rec);
    w.finish();
    out.close();
  }
  moe::io::Input in(path);
  moe::format::StreamReader r(in);
  moe::format::Record rec;
  REQUIRE(r.next(rec));
  const auto t0 = std::chrono::steady_clock::now();
  const json j = moe::format::record_to_json(r.header(), rec);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1));
  CHECK(j.at("x") == json{{"<map>", nullptr}});
  // A scalar key is still shown as its JSON text.
  msgpack::sbuffer sb2;
  msgpack::packer<msgpack::sbuffer> pk2(sb2);
  pk2.pack_map(2);
  pk2.pack_int(7);
  pk2.pack_nil();
  pk2.pack_array(0);
  pk2.pack_true();
  moe::format::RolloutRecord rr;
  moe::format::decode_rollout("t", 100, rec, rr);
  CHECK(moe::format::rollout_to_json(rr).at("x") == json{{"<map>", nullptr}});
  rr.extra = {{"y", std::string(sb2.data(), sb2.size())}};
  CHECK(moe::format::rollout_to_json(rr).at("y") == json{{"7", nullptr}, {"<array>", true}});
}

TEST_CASE("show --jsonl: the piecewise writer is byte for byte the dump of rollout_to_json", "[hostile][format]") {
  // Tokens and log-probs over several 64 Ki chunks, texts over several 1 MiB pieces with invalid UTF-8,
  // and unknown keys of every msgpack type: nested maps with duplicate, non-string, map and array keys,
  // bin, ext, floats, negative integers, and an unknown key named like a known JSON field.
  moe::format::RolloutRecord r;
  r.id = 7;
  r.group = 3;
  r.sample = 1;
  for (int i = 0; i < 200000; ++i) r.prompt_tokens.push_back(i * 7919 % 151936);
  for (int i = 0; i < 150000; ++i) {
    r.response_tokens.push_back(i % 1000);
    r.logprobs.push_back(-0.001f * float(i % 9973) - 1e-7f);
    r.prev_logprobs.push_back(float(i) * -3.25e-5f);
  }
  const size_t mib = size_t(1) << 20;
  r.prompt_text = std::string(mib + 5, 'p') + "\xff\"\n" + std::string(mib, '\x01');
  r.response_text = "r\xc3\xa9\xe2\x82";
  r.finish_reason = "length";
  r.task = json{{"answer", "\\frac{1}{2}"}, {"numbers", {1, 2, 3}}, {"bad", "\xfe"}};
  r.reward = 0.1;
  r.advantage = -1.0 / 3.0;
  r.reward_info = json{{"format", 0.1}};
  msgpack::sbuffer a;
  {
    msgpack::packer<msgpack::sbuffer> pk(a);
    pk.pack_map(7);
    pk.pack(std::string("z"));
    pk.pack(1.5);
    pk.pack(std::string("a"));
    pk.pack_array(4);
    pk.pack(-5);
    pk.pack(std::string(mib + 3, 'x') + "\xc0");
    pk.pack_bin(3);
    pk.pack_bin_body("abc", 3);
    pk.pack_ext(2, 9);
    pk.pack_ext_body("zz", 2);
    pk.pack(std::string("z"));  // a duplicate key: the first stays
    pk.pack_nil();
    pk.pack(42);
    pk.pack(true);
    pk.pack_map(0);
    pk.pack(false);
    pk.pack_array(1);
    pk.pack(1);
    pk.pack(std::string("\xff"));
    pk.pack(std::string("k\xff"));
    pk.pack(1e300);
  }
  msgpack::sbuffer b;
  {
    msgpack::packer<msgpack::sbuffer> pk(b);
    pk.pack(std::string("an unknown key named like a known field"));
  }
  r.extra = {{"x_blob", std::string(a.data(), a.size())}, {"logprobs", std::string(b.data(), b.size())}};
  const std::string path = dir() + "/jsonl.txt";
  {
    moe::io::Output out(path);
    moe::format::write_rollout_json(out, r);
    out.close();
  }
  const std::string want = moe::format::rollout_to_json(r).dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  const std::string got = moe::io::read_file(path);
  CHECK(got.size() == want.size());
  CHECK(got == want);
  CHECK(got.find("\"logprobs\":\"an unknown key") != std::string::npos);
}

TEST_CASE("countdown payloads outside 64 bits are errors, never read modulo 2^64", "[hostile][reward]") {
  moe::format::RolloutRecord rec;
  rec.response_text = "1 - 2";
  rec.task = json::parse(R"({"numbers": [1, 2], "target": 18446744073709551615})");
  moe::reward::RewardOptions o;
  CHECK(error_of([&] { moe::reward::score_record(rec, o); }).find("18446744073709551615 is outside the signed 64-bit") !=
        std::string::npos);
  rec.task = json::parse(R"({"numbers": [1, 99999999999999999999], "target": 3})");
  CHECK(error_of([&] { moe::reward::score_record(rec, o); }).find("too large to hold exactly") != std::string::npos);
  rec.task = json::parse(R"({"numbers": [1, 2], "target": -1})");  // the honest -1 grades as before
  CHECK(moe::reward::score_record(rec, o).correct);
}

TEST_CASE("safetensors header: a shape whose size wraps around 2^64 is an error", "[hostile][format]") {
  std::string h = R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})";
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
  file += h;
  std::string msg = error_of([&] {
    moe::format::parse_safetensors_header(reinterpret_cast<const uint8_t*>(file.data()), file.size(), "w.safetensors");
  });
  CHECK(msg.find("w.safetensors: not a valid safetensors file: entry 'a'") == 0);
}

TEST_CASE("Output: prepare() stages, commit() lands, a symlink's target is replaced and the link kept", "[hostile][io]") {
  std::string p = dir() + "/staged.txt";
  {
    moe::io::Output o(p);
    o.write("x");
    o.prepare();
    struct stat st;
    CHECK(::stat(p.c_str(), &st) != 0);  // not yet in place
    CHECK(::stat(o.temp_path().c_str(), &st) == 0);
  }  // destroyed without commit: the temporary goes
  struct stat st;
  CHECK(::stat(p.c_str(), &st) != 0);
  moe::io::write_file_atomic(dir() + "/target.txt", "old");
  REQUIRE(::symlink("target.txt", (dir() + "/link.txt").c_str()) == 0);
  moe::io::write_file_atomic(dir() + "/link.txt", "new");
  REQUIRE(::lstat((dir() + "/link.txt").c_str(), &st) == 0);
  CHECK(S_ISLNK(st.st_mode));
  CHECK(moe::io::read_file(dir() + "/target.txt") == "new");
  // A FIFO is written in place: a reader sees the bytes, the FIFO stays a FIFO.
  std::string fifo = dir() + "/fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  pid_t child = ::fork();
  if (child == 0) {
    moe::io::write_file_atomic(fifo, "through the pipe");
    ::_exit(0);
  }
  CHECK(moe::io::read_file(fifo) == "through the pipe");
  int status = 0;
  ::waitpid(child, &status, 0);
  CHECK(status == 0);
  REQUIRE(::lstat(fifo.c_str(), &st) == 0);
  CHECK(S_ISFIFO(st.st_mode));
}

TEST_CASE("DirLock: a second holder fails naming the pid, or waits", "[hostile][io]") {
  const std::string model = dir() + "/ckpt";
  int ready[2], go[2];
  REQUIRE(::pipe(ready) == 0);
  REQUIRE(::pipe(go) == 0);
  pid_t child = ::fork();
  if (child == 0) {  // holds the lock until told to let go
    moe::io::DirLock l(model, false);
    char c = 1;
    (void)!::write(ready[1], &c, 1);
    (void)!::read(go[0], &c, 1);
    ::_exit(0);
  }
  char c;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  std::string msg = error_of([&] { moe::io::DirLock l(model, false); });
  CHECK(msg == model + ": locked by another moe-train-step (pid " + std::to_string(child) + ", lock file " + model +
                   ".lock); use --wait to wait for it");
  (void)!::write(go[1], &c, 1);
  { moe::io::DirLock l(model, true); }  // waits for the child's exit, then holds it
  int status = 0;
  ::waitpid(child, &status, 0);
  // A file of that name that is not ours is never overwritten.
  const std::string other = dir() + "/user";
  moe::io::write_file_atomic(other + ".lock", "my notes\n");
  CHECK(error_of([&] { moe::io::DirLock l(other, false); }).find("is not a moekit lock file") != std::string::npos);
  CHECK(moe::io::read_file(other + ".lock") == "my notes\n");
}

TEST_CASE("clean_stale_staging removes what killed steps left, restores a lone backup", "[hostile][io]") {
  const std::string model = dir() + "/m";
  REQUIRE(::mkdir(model.c_str(), 0755) == 0);
  moe::io::write_file_atomic(model + "/config.json", "{}");
  for (const char* s : {".tmp-abc123", ".tmp-XyZ789"}) {
    REQUIRE(::mkdir((model + s).c_str(), 0755) == 0);
    moe::io::write_file_atomic(model + s + "/model.safetensors", "partial");
  }
  REQUIRE(::mkdir((model + ".tmp-keepme-not-ours").c_str(), 0755) == 0);  // another name: left alone
  CHECK(moe::io::is_staging_name(model + ".tmp-abc123"));
  CHECK_FALSE(moe::io::is_staging_name(model));
  CHECK(moe::io::clean_stale_staging(model) == 2);
  struct stat st;
  CHECK(::stat((model + ".tmp-abc123").c_str(), &st) != 0);
  CHECK(::stat((model + ".tmp-keepme-not-ours").c_str(), &st) == 0);
  CHECK(moe::io::read_file(model + "/config.json") == "{}");
  // Killed between the fallback's two renames: no dir, one backup -> it is the checkpoint again.
  const std::string backup = model + ".old-0123456789ab";
  REQUIRE(::rename(model.c_str(), backup.c_str()) == 0);
  CHECK(moe::io::clean_stale_staging(model) == 0);
  CHECK(moe::io::read_file(model + "/config.json") == "{}");
  CHECK(error_of([&] { moe::io::check_not_staging(model + ".tmp-abc123"); }).find("not a checkpoint") != std::string::npos);
}
