#include "moe/format/routing.h"

#include <algorithm>
#include <cstring>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "format/internal.h"
#include "moe/io/error.h"

namespace moe::format {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "payloads are memcpy'd: little-endian hosts only");

// Shape limits: generous for real models, small enough that products of them cannot overflow.
constexpr int kMaxLayers = 4096;
constexpr int kMaxTopK = 1024;
constexpr int kMaxExperts = 65536;

int index_bytes(const RoutingMeta& m) { return m.index_dtype == "u8" ? 1 : 2; }
int prob_bytes(const RoutingMeta& m) { return m.prob_dtype == "f16" ? 2 : m.prob_dtype == "f32" ? 4 : 0; }

[[noreturn]] void fail(const std::string& name, uint64_t offset, const std::string& what) {
  throw Error(name + ": offset " + std::to_string(offset) + ": " + what);
}

}  // namespace

nlohmann::json RoutingMeta::to_json() const {
  return {{"num_layers", num_layers}, {"layer_ids", layer_ids},   {"num_experts", num_experts},
          {"top_k", top_k},           {"index_dtype", index_dtype}, {"prob_dtype", prob_dtype},
          {"model_digest", model_digest}};
}

RoutingMeta RoutingMeta::from_json(const nlohmann::json& j) {
  auto bad = [](const std::string& what) -> Error { return Error("bad routing header meta: " + what); };
  if (!j.is_object()) throw bad("meta is not a map");
  auto get_int = [&](const char* key, int lo, int hi) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number_integer()) throw bad(std::string("\"") + key + "\" missing or not an integer");
    int64_t v = it->get<int64_t>();
    if (v < lo || v > hi)
      throw bad(std::string("\"") + key + "\" = " + std::to_string(v) + " out of range " + std::to_string(lo) + ".." +
                std::to_string(hi));
    return static_cast<int>(v);
  };
  auto get_str = [&](const char* key, bool required) {
    auto it = j.find(key);
    if (it == j.end() && !required) return std::string();
    if (it == j.end() || !it->is_string()) throw bad(std::string("\"") + key + "\" missing or not a string");
    return it->get<std::string>();
  };
  RoutingMeta m;
  m.num_layers = get_int("num_layers", 1, kMaxLayers);
  m.num_experts = get_int("num_experts", 1, kMaxExperts);
  m.top_k = get_int("top_k", 1, std::min(kMaxTopK, m.num_experts));
  m.index_dtype = get_str("index_dtype", true);
  m.prob_dtype = get_str("prob_dtype", true);
  m.model_digest = get_str("model_digest", false);
  auto ids = j.find("layer_ids");
  if (ids == j.end() || !ids->is_array() || ids->size() != size_t(m.num_layers))
    throw bad("\"layer_ids\" missing or not an array of num_layers integers");
  for (const auto& x : *ids) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > 1000000)
      throw bad("\"layer_ids\" holds a value that is not a layer index");
    if (std::find(m.layer_ids.begin(), m.layer_ids.end(), x.get<int>()) != m.layer_ids.end())
      throw bad("\"layer_ids\" lists layer " + std::to_string(x.get<int>()) + " twice");
    m.layer_ids.push_back(x.get<int>());
  }
  if (m.index_dtype != "u8" && m.index_dtype != "u16") throw bad("index_dtype \"" + m.index_dtype + "\" is not u8 or u16");
  if (m.index_dtype == "u8" && m.num_experts > 256) throw bad("index_dtype u8 cannot hold " + std::to_string(m.num_experts) + " experts");
  if (m.prob_dtype != "f16" && m.prob_dtype != "f32" && m.prob_dtype != "none")
    throw bad("prob_dtype \"" + m.prob_dtype + "\" is not f16, f32 or none");
  return m;
}

#ifdef __SSE2__
// Rows of exactly 8 experts (the common top-8): one SSE2 register per row. A duplicate pair sits at lane
// distance d or 8 - d for some d in 1..4, so comparing the row with its rotations by 1..4 lanes finds it;
// out of range is a saturating subtract of num_experts - 1. True when every row is fine.
static bool rows_ok_k8(const uint16_t* e, size_t rows, int num_experts) {
  const __m128i last = _mm_set1_epi16(static_cast<short>(num_experts - 1));
  const __m128i zero = _mm_setzero_si128();
  __m128i bad = zero;
  for (size_t r = 0; r < rows; ++r) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(e + 8 * r));
    __m128i acc = _mm_subs_epu16(v, last);  // nonzero lanes: index > num_experts - 1
    acc = _mm_or_si128(acc, _mm_cmpeq_epi16(v, _mm_or_si128(_mm_srli_si128(v, 2), _mm_slli_si128(v, 14))));
    acc = _mm_or_si128(acc, _mm_cmpeq_epi16(v, _mm_or_si128(_mm_srli_si128(v, 4), _mm_slli_si128(v, 12))));
    acc = _mm_or_si128(acc, _mm_cmpeq_epi16(v, _mm_or_si128(_mm_srli_si128(v, 6), _mm_slli_si128(v, 10))));
    acc = _mm_or_si128(acc, _mm_cmpeq_epi16(v, _mm_shuffle_epi32(v, 0x4e)));  // rotate by 4 lanes
    bad = _mm_or_si128(bad, acc);
  }
  return _mm_movemask_epi8(_mm_cmpeq_epi8(bad, zero)) == 0xffff;
}
#endif

int64_t check_expert_rows(const uint16_t* e, size_t rows, int k, int num_experts, std::string* why) {
#ifdef __SSE2__
  if (k == 8 && num_experts >= 8 && rows_ok_k8(e, rows, num_experts)) return -1;  // else: find and name the fault
#endif
  // One stamp per expert id: stamp == the row's tag means "already seen in this row", so nothing is
  // cleared between rows. The per-thread table is fetched once (thread_local access is not free).
  thread_local std::vector<uint32_t> seen_table(kMaxExperts, 0);
  thread_local uint32_t last_tag = 0;
  uint32_t* seen = seen_table.data();
  uint32_t tag = last_tag;
  const uint16_t limit = static_cast<uint16_t>(std::min(num_experts, kMaxExperts) - 1);
  int64_t bad = -1;
  for (size_t r = 0; r < rows && bad < 0; ++r) {
    if (++tag == 0) {
      std::fill(seen_table.begin(), seen_table.end(), 0);
      tag = 1;
    }
    const uint16_t* row = e + r * size_t(k);
    for (int j = 0; j < k; ++j) {
      const uint16_t x = row[j];
      if (x > limit || seen[x] == tag) {
        bad = int64_t(r * k + j);
        if (why)
          *why = x > limit ? "expert index " + std::to_string(x) + " out of range (num_experts " + std::to_string(num_experts) + ")"
                           : "expert " + std::to_string(x) + " appears twice in one (position, layer)";
        break;
      }
      seen[x] = tag;
    }
  }
  last_tag = tag;
  return bad;
}

// u8 -> u16 widening of index payloads (SSE2 is part of x86-64; elsewhere the compiler's loop).
static void widen_u8(const unsigned char* src, uint16_t* dst, size_t n) {
  size_t i = 0;
#ifdef __SSE2__
  const __m128i zero = _mm_setzero_si128();
  for (; i + 16 <= n; i += 16) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm_unpacklo_epi8(v, zero));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i + 8), _mm_unpackhi_epi8(v, zero));
  }
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

// ---------------------------------------------------------------------------------------------- writer

RoutingWriter::RoutingWriter(io::Output& out, Header header, RoutingMeta meta, int zstd_level)
    : w_(out, [&] {
        header.kind = "routing";
        header.version = kRoutingVersion;
        if (meta.index_dtype.empty()) meta.index_dtype = meta.num_experts <= 256 ? "u8" : "u16";
        if (meta.prob_dtype.empty()) meta.prob_dtype = "f32";
        if (meta.layer_ids.empty())
          for (int i = 0; i < meta.num_layers; ++i) meta.layer_ids.push_back(i);
        RoutingMeta::from_json(meta.to_json());  // the same checks as a reader: never write what cannot be read
        if (!header.meta.is_object()) header.meta = nlohmann::json::object();
        const nlohmann::json mj = meta.to_json();
        for (const auto& [key, value] : mj.items()) header.meta[key] = value;
        return header;
      }(), zstd_level) {
  meta_ = RoutingMeta::from_json(w_.header().meta);
}

void RoutingWriter::write(const RoutingRecord& rec) {
  const RoutingMeta& m = meta_;
  const std::string name = "routing record id " + std::to_string(rec.id);
  if (rec.first_pos < 0 || rec.n_pos < 0) throw Error(name + ": first_pos and n_pos must be >= 0");
  const size_t cells = size_t(rec.n_pos) * m.num_layers * m.top_k;
  if (rec.experts.size() != cells)
    throw Error(name + ": experts has " + std::to_string(rec.experts.size()) + " values, shape [" +
                std::to_string(rec.n_pos) + ", " + std::to_string(m.num_layers) + ", " + std::to_string(m.top_k) +
                "] needs " + std::to_string(cells));
  const int pb = prob_bytes(m);
  if (pb && rec.probs.size() != cells)
    throw Error(name + ": probs has " + std::to_string(rec.probs.size()) + " values, the shape needs " + std::to_string(cells));
  if (!pb && !rec.probs.empty()) throw Error(name + ": probs given but the stream's prob_dtype is none");
  std::string why;
  int64_t bad = check_expert_rows(rec.experts.data(), size_t(rec.n_pos) * m.num_layers, m.top_k, m.num_experts, &why);
  if (bad >= 0) throw Error(name + ": " + why);

  buf_.clear();
  msgpack::packer<msgpack::sbuffer> pk(buf_);
  pk.pack_map(pb ? 5 : 4);
  detail::pack_key(pk, "id");
  pk.pack_uint64(rec.id);
  detail::pack_key(pk, "first_pos");
  pk.pack_int64(rec.first_pos);
  detail::pack_key(pk, "n_pos");
  pk.pack_int64(rec.n_pos);
  detail::pack_key(pk, "experts");
  if (index_bytes(m) == 1) {
    scratch_.resize(cells);
    for (size_t i = 0; i < cells; ++i) scratch_[i] = static_cast<char>(rec.experts[i]);
    detail::pack_bin(pk, scratch_.data(), cells);
  } else {
    detail::pack_bin(pk, rec.experts.data(), cells * 2);
  }
  if (pb) {
    detail::pack_key(pk, "probs");
    if (pb == 2) {
      scratch_.resize(cells * 2);
      floats_to_halves(rec.probs.data(), scratch_.data(), cells);
      detail::pack_bin(pk, scratch_.data(), cells * 2);
    } else {
      detail::pack_bin(pk, rec.probs.data(), cells * 4);
    }
  }
  w_.write_packed(buf_.data(), buf_.size());
}

void RoutingWriter::flush() { w_.flush(); }
void RoutingWriter::finish() { w_.finish(); }
uint64_t RoutingWriter::count() const { return w_.count(); }

// ---------------------------------------------------------------------------------------------- reader

void decode_routing(const std::string& name, const RoutingMeta& m, const Record& raw, RoutingRecord& rec) {
  const msgpack::object& map = raw.map();
  const uint64_t at = raw.offset;
  if (map.type != msgpack::type::MAP) fail(name, at, "record is not a map");
  const msgpack::object *id = nullptr, *first = nullptr, *npos = nullptr, *experts = nullptr, *probs = nullptr;
  for (uint32_t i = 0; i < map.via.map.size; ++i) {
    auto k = detail::as_key(map.via.map.ptr[i].key);
    const msgpack::object* v = &map.via.map.ptr[i].val;
    const msgpack::object** slot = k == "id" ? &id : k == "first_pos" ? &first : k == "n_pos" ? &npos
                                 : k == "experts" ? &experts : k == "probs" ? &probs : nullptr;
    if (!slot) continue;  // unknown keys are ignored (newer minor additions)
    if (*slot) fail(name, at, "duplicate key \"" + std::string(k) + "\"");
    *slot = v;
  }
  auto need_uint = [&](const msgpack::object* o, const char* key) {
    if (!o) fail(name, at, std::string("routing record without \"") + key + "\"");
    if (o->type != msgpack::type::POSITIVE_INTEGER)
      fail(name, at, std::string("\"") + key + "\" must be a non-negative integer, found " + detail::type_name(*o));
    return o->via.u64;
  };
  rec.id = need_uint(id, "id");
  uint64_t fp = need_uint(first, "first_pos"), np = need_uint(npos, "n_pos");
  // Bounds keep n_pos * layers * k * 4 bytes far from overflowing 64 bits (2^36 * 2^12 * 2^10 * 4 = 2^60).
  if (fp > (uint64_t(1) << 36) || np > (uint64_t(1) << 36)) fail(name, at, "first_pos or n_pos is implausibly large (> 2^36)");
  rec.first_pos = int64_t(fp);
  rec.n_pos = int64_t(np);
  const size_t cells = size_t(np) * m.num_layers * m.top_k;
  const size_t rows = size_t(np) * m.num_layers;
  auto shape = [&] {
    return "[" + std::to_string(np) + ", " + std::to_string(m.num_layers) + ", " + std::to_string(m.top_k) + "]";
  };

  if (!experts) fail(name, at, "routing record id " + std::to_string(rec.id) + " without \"experts\"");
  if (experts->type != msgpack::type::BIN)
    fail(name, at, std::string("\"experts\" must be bin (packed ") + m.index_dtype + "), found " + detail::type_name(*experts));
  const int ib = index_bytes(m);
  if (experts->via.bin.size != cells * ib)
    fail(name, at, "\"experts\" payload is " + std::to_string(experts->via.bin.size) + " bytes, shape " + shape() + " " +
                       m.index_dtype + " needs " + std::to_string(cells * ib));
  rec.experts.resize(cells);
  const auto* src = reinterpret_cast<const unsigned char*>(experts->via.bin.ptr);
  if (ib == 1) {
    widen_u8(src, rec.experts.data(), cells);
  } else {
    std::memcpy(rec.experts.data(), src, cells * 2);
  }
  std::string why;
  int64_t bad = check_expert_rows(rec.experts.data(), rows, m.top_k, m.num_experts, &why);
  if (bad >= 0) {
    int64_t row = bad / m.top_k;
    fail(name, at, "record id " + std::to_string(rec.id) + ", position " + std::to_string(fp + row / m.num_layers) +
                       ", layer " + std::to_string(m.layer_ids[row % m.num_layers]) + ": " + why);
  }

  const int pb = prob_bytes(m);
  if (!pb) {
    if (probs) fail(name, at, "\"probs\" present but the header's prob_dtype is none");
    rec.probs.clear();
    return;
  }
  if (!probs) fail(name, at, "routing record id " + std::to_string(rec.id) + " without \"probs\" (prob_dtype " + m.prob_dtype + ")");
  if (probs->type != msgpack::type::BIN)
    fail(name, at, std::string("\"probs\" must be bin (packed ") + m.prob_dtype + "), found " + detail::type_name(*probs));
  if (probs->via.bin.size != cells * pb)
    fail(name, at, "\"probs\" payload is " + std::to_string(probs->via.bin.size) + " bytes, shape " + shape() + " " +
                       m.prob_dtype + " needs " + std::to_string(cells * pb));
  rec.probs.resize(cells);
  if (pb == 2) halves_to_floats(probs->via.bin.ptr, rec.probs.data(), cells);
  else std::memcpy(rec.probs.data(), probs->via.bin.ptr, cells * 4);
}

RoutingReader::RoutingReader(io::Input& in, bool concatenated) : r_(in, "routing", concatenated) {
  try {
    meta_ = RoutingMeta::from_json(r_.header().meta);
  } catch (const Error& e) {
    r_.fail(0, e.what());
  }
}

bool RoutingReader::next_stream() {
  if (!r_.next_stream("routing")) return false;
  try {
    meta_ = RoutingMeta::from_json(r_.header().meta);
  } catch (const Error& e) {
    r_.fail(0, e.what());
  }
  seen_ids_.clear();
  return true;
}

const Header& RoutingReader::header() const { return r_.header(); }

bool RoutingReader::next(RoutingRecord& rec) {
  if (!r_.next(raw_)) return false;
  if (max_positions_ > 0) {  // before the payload is widened into rec.experts
    const msgpack::object* np = raw_.find("n_pos");
    if (np && np->type == msgpack::type::POSITIVE_INTEGER && np->via.u64 > static_cast<uint64_t>(max_positions_))
      r_.fail(raw_.offset, "routing record declares " + std::to_string(np->via.u64) + " positions, more than the model's " +
                               std::to_string(max_positions_) + " (max_position_embeddings)");
  }
  decode_routing(r_.name(), meta_, raw_, rec);
  if (!seen_ids_.insert(rec.id).second)
    throw Error(r_.name() + ": offset " + std::to_string(raw_.offset) + ": duplicate record id " + std::to_string(rec.id));
  return true;
}

uint64_t RoutingReader::offset() const { return raw_.offset; }
const std::string& RoutingReader::name() const { return r_.name(); }

}  // namespace moe::format
