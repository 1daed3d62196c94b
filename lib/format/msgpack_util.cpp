#include <cmath>

#include "format/internal.h"
#include "moe/io/error.h"

namespace moe::format::detail {
namespace {
uint64_t be(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | p[i];
  return v;
}
}  // namespace

Scan::Status Scan::step(const uint8_t* p, size_t avail, size_t max_size, size_t& need) {
  for (;;) {
    while (depth > 0 && left[depth] == 0) --depth;  // close finished containers
    if (depth == 0 && left[0] == 0) break;
    if (pos >= avail) {
      need = pos + 1;
      return kNeedMore;
    }
    const uint8_t b = p[pos];
    size_t hdr = 1;      // bytes of the item's header, including the type byte
    int len_bytes = 0;   // bytes of a big-endian length following the type byte
    uint64_t body = 0;   // payload bytes after the header
    uint64_t count = 0;  // array elements or map entries
    int mult = 0;        // 0 = not a container, 1 = array, 2 = map
    if (b <= 0x7f || b >= 0xe0) {
    } else if (b <= 0x8f) {
      count = b & 0x0f;
      mult = 2;
    } else if (b <= 0x9f) {
      count = b & 0x0f;
      mult = 1;
    } else if (b <= 0xbf) {
      body = b & 0x1f;
    } else {
      switch (b) {
        case 0xc0: case 0xc2: case 0xc3: break;
        case 0xc1: error = "invalid msgpack byte 0xc1"; return kInvalid;
        case 0xc4: case 0xd9: len_bytes = 1; break;  // bin8, str8
        case 0xc5: case 0xda: len_bytes = 2; break;
        case 0xc6: case 0xdb: len_bytes = 4; break;
        case 0xc7: len_bytes = 1; body = 1; break;  // ext8: len, type, data
        case 0xc8: len_bytes = 2; body = 1; break;
        case 0xc9: len_bytes = 4; body = 1; break;
        case 0xca: body = 4; break;
        case 0xcb: body = 8; break;
        case 0xcc: case 0xd0: body = 1; break;
        case 0xcd: case 0xd1: body = 2; break;
        case 0xce: case 0xd2: body = 4; break;
        case 0xcf: case 0xd3: body = 8; break;
        case 0xd4: body = 2; break;   // fixext1: type + 1
        case 0xd5: body = 3; break;
        case 0xd6: body = 5; break;
        case 0xd7: body = 9; break;
        case 0xd8: body = 17; break;
        case 0xdc: len_bytes = 2; mult = 1; break;
        case 0xdd: len_bytes = 4; mult = 1; break;
        case 0xde: len_bytes = 2; mult = 2; break;
        case 0xdf: len_bytes = 4; mult = 2; break;
        default: error = "invalid msgpack byte"; return kInvalid;
      }
    }
    hdr += len_bytes;
    if (pos + hdr > avail) {
      need = pos + hdr;
      return kNeedMore;
    }
    if (len_bytes) {
      uint64_t n = be(p + pos + 1, len_bytes);
      if (mult == 0) body += n;
      else count = n;
    }
    if (body > max_size || pos + hdr + body > max_size) {
      need = max_size + 1;
      error = "declared length exceeds the record size limit";
      return kInvalid;
    }
    if (++items > io::kMaxItems) {
      error = "more than " + std::to_string(io::kMaxItems) + " values in one record (the limit of every moekit reader)";
      return kInvalid;
    }
    if (mult == 2 && count > io::kMaxMapKeys) {
      error = "a map declares " + std::to_string(count) + " keys, more than the limit of " +
              std::to_string(io::kMaxMapKeys);
      return kInvalid;
    }
    const uint64_t children = count * static_cast<uint64_t>(mult);
    // Every child is at least one byte and one value: a count beyond the limits cannot be honest.
    if (children > io::kMaxItems - items || children > max_size - pos) {
      error = std::string(mult == 2 ? "a map" : "an array") + " declares " + std::to_string(count) +
              " entries, more than one record may hold";
      return kInvalid;
    }
    --left[depth];
    pos += hdr + body;
    if (mult) {
      if (depth + 1 > static_cast<int>(kMaxDepth)) {
        error = "nested deeper than " + std::to_string(kMaxDepth) + " levels (the limit of every moekit reader)";
        return kInvalid;
      }
      left[++depth] = children;
    }
  }
  if (pos > avail) {
    need = pos;
    return kNeedMore;
  }
  need = pos;
  return kComplete;
}

nlohmann::json to_json(const msgpack::object& o) {
  using msgpack::type::object_type;
  switch (o.type) {
    case object_type::NIL: return nullptr;
    case object_type::BOOLEAN: return o.via.boolean;
    case object_type::POSITIVE_INTEGER: return o.via.u64;
    case object_type::NEGATIVE_INTEGER: return o.via.i64;
    case object_type::FLOAT32:
    case object_type::FLOAT64: return o.via.f64;
    case object_type::STR: return std::string(o.via.str.ptr, o.via.str.size);
    case object_type::BIN: return nlohmann::json{{"bin", o.via.bin.size}};
    case object_type::EXT: return nlohmann::json{{"ext", o.via.ext.type()}, {"bytes", o.via.ext.size}};
    case object_type::ARRAY: {
      nlohmann::json a = nlohmann::json::array();
      for (uint32_t i = 0; i < o.via.array.size; ++i) a.push_back(to_json(o.via.array.ptr[i]));
      return a;
    }
    case object_type::MAP: {
      nlohmann::json m = nlohmann::json::object();
      for (uint32_t i = 0; i < o.via.map.size; ++i) {
        const auto& kv = o.via.map.ptr[i];
        std::string key = json_key(kv.key);  // first of equal keys kept
        if (!m.contains(key)) m[key] = to_json(kv.val);
      }
      return m;
    }
  }
  return nullptr;
}

std::string json_key(const msgpack::object& k) {
  using msgpack::type::object_type;
  // A non-string scalar key is shown as its JSON text. A map or array key is shown as "<map>" or "<array>":
  // its text would hold its own keys' texts escaped once more, doubling at every level (60 nested map keys
  // in a 400-byte record were 2^60 bytes of text: found by fuzz_stream).
  return k.type == object_type::STR     ? std::string(k.via.str.ptr, k.via.str.size)
         : k.type == object_type::MAP   ? std::string("<map>")
         : k.type == object_type::ARRAY ? std::string("<array>")
                                        : to_json(k).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void pack_json(msgpack::packer<msgpack::sbuffer>& pk, const nlohmann::json& j, int level) {
  using vt = nlohmann::json::value_t;
  if (j.is_structured() && level > static_cast<int>(kMaxDepth))
    throw Error("a JSON value nested deeper than " + std::to_string(kMaxDepth) + " levels cannot be written to a stream");
  switch (j.type()) {
    case vt::null:
    case vt::discarded: pk.pack_nil(); break;
    case vt::boolean: j.get<bool>() ? pk.pack_true() : pk.pack_false(); break;
    case vt::number_integer: pk.pack_int64(j.get<int64_t>()); break;
    case vt::number_unsigned: pk.pack_uint64(j.get<uint64_t>()); break;
    case vt::number_float: pk.pack_double(j.get<double>()); break;
    case vt::string: {
      const auto& s = j.get_ref<const std::string&>();
      pack_key(pk, s);
      break;
    }
    case vt::binary: {
      const auto& b = j.get_binary();
      pack_bin(pk, b.data(), b.size());
      break;
    }
    case vt::array:
      pk.pack_array(static_cast<uint32_t>(j.size()));
      for (const auto& x : j) pack_json(pk, x, level + 1);
      break;
    case vt::object:
      pk.pack_map(static_cast<uint32_t>(j.size()));
      for (auto it = j.begin(); it != j.end(); ++it) {
        pack_key(pk, it.key());
        pack_json(pk, it.value(), level + 1);
      }
      break;
  }
}

const char* type_name(const msgpack::object& o) {
  using msgpack::type::object_type;
  switch (o.type) {
    case object_type::NIL: return "nil";
    case object_type::BOOLEAN: return "bool";
    case object_type::POSITIVE_INTEGER: return "uint";
    case object_type::NEGATIVE_INTEGER: return "negative int";
    case object_type::FLOAT32: return "float32";
    case object_type::FLOAT64: return "float64";
    case object_type::STR: return "str";
    case object_type::BIN: return "bin";
    case object_type::ARRAY: return "array";
    case object_type::MAP: return "map";
    case object_type::EXT: return "ext";
  }
  return "?";
}

}  // namespace moe::format::detail
