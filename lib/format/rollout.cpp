#include "moe/format/rollout.h"

#include <cstring>

#include "format/internal.h"
#include "moe/io/error.h"

namespace moe::format {
namespace {

[[noreturn]] void fail(const std::string& name, uint64_t offset, const std::string& what) {
  throw Error(name + ": offset " + std::to_string(offset) + ": " + what);
}

// msgpack packer streams: one counts the bytes a value packs to, the other appends them to a string.
struct ByteCount {
  size_t n = 0;
  void write(const char*, size_t k) { n += k; }
};
struct StringSink {
  std::string& s;
  void write(const char* d, size_t k) { s.append(d, k); }
};

constexpr std::string_view kKnown[] = {"id",        "group",         "sample",      "prompt_tokens", "response_tokens",
                              "logprobs",  "prev_logprobs", "finish_reason", "prompt_text", "response_text",
                              "task",      "reward",        "advantage",   "reward_info"};
constexpr int kNumKnown = sizeof(kKnown) / sizeof(kKnown[0]);

int known_index(std::string_view k) {
  for (int i = 0; i < kNumKnown; ++i)
    if (k == kKnown[i]) return i;
  return -1;
}

template <class T>
void pack_array_bin(msgpack::packer<msgpack::sbuffer>& pk, const std::vector<T>& v) {
  static_assert(sizeof(T) == 4, "int32 / float32 payloads");
  detail::pack_bin(pk, v.data(), v.size() * 4);
}

}  // namespace

int64_t rollout_vocab_size(const Header& header) {
  auto it = header.meta.find("vocab_size");
  if (it == header.meta.end() || !it->is_number_integer() || it->get<int64_t>() <= 0) return 0;
  return it->get<int64_t>();
}

// ---------------------------------------------------------------------------------------------- writer

RolloutWriter::RolloutWriter(io::Output& out, Header header, int zstd_level)
    : w_(out, [&] {
        header.kind = "rollout";
        header.version = kRolloutVersion;
        return header;
      }(), zstd_level) {}

void RolloutWriter::write(const RolloutRecord& r) {
  const std::string name = "rollout record id " + std::to_string(r.id);
  const size_t nresp = r.response_tokens.size();
  if (!r.logprobs.empty() && r.logprobs.size() != nresp)
    throw Error(name + ": " + std::to_string(r.logprobs.size()) + " logprobs for " + std::to_string(nresp) + " response tokens");
  if (!r.prev_logprobs.empty() && r.prev_logprobs.size() != nresp)
    throw Error(name + ": " + std::to_string(r.prev_logprobs.size()) + " prev_logprobs for " + std::to_string(nresp) +
                " response tokens");
  if (!r.task.is_object()) throw Error(name + ": task must be a JSON object");
  if (!r.reward_info.is_object()) throw Error(name + ": reward_info must be a JSON object");
  for (const auto& [k, v] : r.extra) {
    if (known_index(k) >= 0 || k == "trailer") throw Error(name + ": extra key \"" + k + "\" collides with a reserved key");
    detail::Scan scan;
    size_t need = 0;
    if (v.empty() || scan.step(reinterpret_cast<const uint8_t*>(v.data()), v.size(), detail::kMaxRecordBytes, need) !=
                         detail::Scan::kComplete || scan.pos != v.size())
      throw Error(name + ": extra value of \"" + k + "\" is not exactly one packed msgpack object");
  }

  buf_.clear();
  msgpack::packer<msgpack::sbuffer> pk(buf_);
  uint32_t n = 10 + !r.prev_logprobs.empty() + r.reward.has_value() + r.advantage.has_value() + !r.reward_info.empty() +
               static_cast<uint32_t>(r.extra.size());
  pk.pack_map(n);
  detail::pack_key(pk, "id");
  pk.pack_uint64(r.id);
  detail::pack_key(pk, "group");
  pk.pack_uint64(r.group);
  detail::pack_key(pk, "sample");
  pk.pack_uint32(r.sample);
  detail::pack_key(pk, "prompt_tokens");
  pack_array_bin(pk, r.prompt_tokens);
  detail::pack_key(pk, "response_tokens");
  pack_array_bin(pk, r.response_tokens);
  detail::pack_key(pk, "logprobs");
  pack_array_bin(pk, r.logprobs);
  if (!r.prev_logprobs.empty()) {
    detail::pack_key(pk, "prev_logprobs");
    pack_array_bin(pk, r.prev_logprobs);
  }
  detail::pack_key(pk, "finish_reason");
  detail::pack_key(pk, r.finish_reason);
  detail::pack_key(pk, "prompt_text");
  detail::pack_key(pk, r.prompt_text);
  detail::pack_key(pk, "response_text");
  detail::pack_key(pk, r.response_text);
  detail::pack_key(pk, "task");
  detail::pack_json(pk, r.task);
  if (r.reward) {
    detail::pack_key(pk, "reward");
    pk.pack_double(*r.reward);
  }
  if (r.advantage) {
    detail::pack_key(pk, "advantage");
    pk.pack_double(*r.advantage);
  }
  if (!r.reward_info.empty()) {
    detail::pack_key(pk, "reward_info");
    detail::pack_json(pk, r.reward_info);
  }
  for (const auto& [k, v] : r.extra) {
    detail::pack_key(pk, k);
    buf_.write(v.data(), v.size());
  }
  // The map size above counts the 10 keys always written plus the optional ones.
  w_.write_packed(buf_.data(), buf_.size());
}

void RolloutWriter::flush() { w_.flush(); }
void RolloutWriter::finish() { w_.finish(); }
uint64_t RolloutWriter::count() const { return w_.count(); }

// ---------------------------------------------------------------------------------------------- reader

void decode_rollout(const std::string& name, int64_t vocab_size, const Record& raw, RolloutRecord& rec) {
  const msgpack::object& map = raw.map();
  const uint64_t at = raw.offset;
  if (map.type != msgpack::type::MAP) fail(name, at, "record is not a map");
  const msgpack::object* f[kNumKnown] = {};
  rec.extra.clear();
  for (uint32_t i = 0; i < map.via.map.size; ++i) {
    const auto& kv = map.via.map.ptr[i];
    auto k = detail::as_key(kv.key);
    int idx = known_index(k);
    if (idx < 0) {
      // Packed straight into a string of the exact size: no growing buffer, no second copy of a value
      // that may be most of a 256 MiB record.
      ByteCount count;
      msgpack::pack(count, kv.val);
      std::string packed;
      packed.reserve(count.n);
      StringSink sink{packed};
      msgpack::pack(sink, kv.val);
      rec.extra.emplace_back(std::string(k), std::move(packed));
      continue;
    }
    if (f[idx]) fail(name, at, "duplicate key \"" + std::string(k) + "\"");
    f[idx] = &kv.val;
  }
  auto where = [&](std::string_view key) { return "\"" + std::string(key) + "\""; };
  auto get_uint = [&](int i, uint64_t max) {
    const msgpack::object* o = f[i];
    if (!o) fail(name, at, "rollout record without " + where(kKnown[i]));
    if (o->type != msgpack::type::POSITIVE_INTEGER || o->via.u64 > max)
      fail(name, at, where(kKnown[i]) + " must be a non-negative integer, found " + detail::type_name(*o));
    return o->via.u64;
  };
  rec.id = get_uint(0, UINT64_MAX);
  rec.group = get_uint(1, UINT64_MAX);
  rec.sample = static_cast<uint32_t>(get_uint(2, UINT32_MAX));

  auto get_bin4 = [&](int i, bool required, auto& out) {
    const msgpack::object* o = f[i];
    out.clear();
    if (!o) {
      if (required) fail(name, at, "rollout record id " + std::to_string(rec.id) + " without " + where(kKnown[i]));
      return;
    }
    if (o->type != msgpack::type::BIN) fail(name, at, where(kKnown[i]) + " must be bin, found " + detail::type_name(*o));
    if (o->via.bin.size % 4)
      fail(name, at, where(kKnown[i]) + " payload of " + std::to_string(o->via.bin.size) + " bytes is not a multiple of 4");
    out.resize(o->via.bin.size / 4);
    if (o->via.bin.size) std::memcpy(out.data(), o->via.bin.ptr, o->via.bin.size);
  };
  get_bin4(3, true, rec.prompt_tokens);
  get_bin4(4, true, rec.response_tokens);
  get_bin4(5, false, rec.logprobs);
  get_bin4(6, false, rec.prev_logprobs);
  const size_t nresp = rec.response_tokens.size();
  if (!rec.logprobs.empty() && rec.logprobs.size() != nresp)
    fail(name, at, "\"logprobs\" holds " + std::to_string(rec.logprobs.size()) + " values for " + std::to_string(nresp) +
                       " response tokens");
  if (!rec.prev_logprobs.empty() && rec.prev_logprobs.size() != nresp)
    fail(name, at, "\"prev_logprobs\" holds " + std::to_string(rec.prev_logprobs.size()) + " values for " +
                       std::to_string(nresp) + " response tokens");
  for (const auto* toks : {&rec.prompt_tokens, &rec.response_tokens})
    for (int32_t t : *toks)
      if (t < 0 || (vocab_size > 0 && t >= vocab_size))
        fail(name, at, "token id " + std::to_string(t) + " out of range (vocab_size " + std::to_string(vocab_size) + ")");

  auto get_str = [&](int i, std::string& out) {
    out.clear();
    if (!f[i]) return;
    if (f[i]->type != msgpack::type::STR) fail(name, at, where(kKnown[i]) + " must be str, found " + detail::type_name(*f[i]));
    out.assign(f[i]->via.str.ptr, f[i]->via.str.size);
  };
  get_str(7, rec.finish_reason);
  get_str(8, rec.prompt_text);
  get_str(9, rec.response_text);
  auto get_map = [&](int i, nlohmann::json& out) {
    out = nlohmann::json::object();
    if (!f[i]) return;
    if (f[i]->type != msgpack::type::MAP) fail(name, at, where(kKnown[i]) + " must be a map, found " + detail::type_name(*f[i]));
    out = detail::to_json(*f[i]);
  };
  get_map(10, rec.task);
  get_map(13, rec.reward_info);
  auto get_num = [&](int i, std::optional<double>& out) {
    out.reset();
    const msgpack::object* o = f[i];
    if (!o || o->type == msgpack::type::NIL) return;
    switch (o->type) {
      case msgpack::type::FLOAT32:
      case msgpack::type::FLOAT64: out = o->via.f64; break;
      case msgpack::type::POSITIVE_INTEGER: out = double(o->via.u64); break;
      case msgpack::type::NEGATIVE_INTEGER: out = double(o->via.i64); break;
      default: fail(name, at, where(kKnown[i]) + " must be a number, found " + detail::type_name(*o));
    }
  };
  get_num(11, rec.reward);
  get_num(12, rec.advantage);
}

RolloutReader::RolloutReader(io::Input& in, bool concatenated)
    : r_(in, "rollout", concatenated), vocab_size_(rollout_vocab_size(r_.header())) {}

bool RolloutReader::next_stream() {
  if (!r_.next_stream("rollout")) return false;
  vocab_size_ = rollout_vocab_size(r_.header());
  seen_ids_.clear();
  return true;
}

const Header& RolloutReader::header() const { return r_.header(); }

bool RolloutReader::next(RolloutRecord& rec) {
  if (!r_.next(raw_)) return false;
  decode_rollout(r_.name(), vocab_size_, raw_, rec);
  if (!seen_ids_.insert(rec.id).second)
    throw Error(r_.name() + ": offset " + std::to_string(raw_.offset) + ": duplicate record id " + std::to_string(rec.id));
  return true;
}

uint64_t RolloutReader::offset() const { return raw_.offset; }
const std::string& RolloutReader::name() const { return r_.name(); }

}  // namespace moe::format
