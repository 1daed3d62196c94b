// Private helpers of the format room: a resumable msgpack size scanner (so a record is fully buffered and
// sized before msgpack allocates anything for it), msgpack <-> JSON conversion, small decoding helpers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>

#include <msgpack.hpp>
#include <nlohmann/json.hpp>

#include "moe/io/limits.h"

namespace moe::io {
class Output;
}

namespace moe::format::detail {

// Largest record (or header) a reader accepts, in packed bytes; deepest nesting, keys per map and values per
// record (moe/io/limits.h, formats/stream.md). A declared length or count above them is an error before
// anything is buffered or allocated, so a hostile length cannot make a reader allocate gigabytes.
inline constexpr size_t kMaxRecordBytes = io::kMaxRecordBytes;
inline constexpr size_t kMaxDepth = io::kMaxDepth;

// Finds the extent of one msgpack object without allocating, and checks the limits (depth, keys per map,
// values per record). Resumable: on kNeedMore the state points at the first incomplete item, so calling
// again with more bytes continues where it stopped.
struct Scan {
  enum Status { kComplete, kNeedMore, kInvalid };
  size_t pos = 0;        // bytes accepted so far (may exceed the bytes available: a bin body in flight)
  std::string error;     // kInvalid: what is wrong, at byte `pos`
  uint64_t items = 0;    // values seen so far (every key and element counted)
  // kComplete: `pos` is the object's size. kNeedMore: `need` is a lower bound on the size. kInvalid with
  // need > max_size: a declared length beyond max_size.
  Status step(const uint8_t* p, size_t avail, size_t max_size, size_t& need);

 private:
  // left[d]: items still to read in the container open at depth d (left[0]: the top-level object).
  uint64_t left[kMaxDepth + 1] = {1};
  int depth = 0;
};

// msgpack object -> JSON for display and for header/task fields. bin becomes {"bin": nbytes}, ext
// {"ext": type, "bytes": n}; non-string scalar map keys are written as their JSON text, map and array keys
// as "<map>" and "<array>".
nlohmann::json to_json(const msgpack::object& o);
// The name to_json gives a map key.
std::string json_key(const msgpack::object& k);
// JSON -> msgpack (objects become maps with string keys, integers keep their sign, floats are float64).
// `level`: the nesting level j lands at in the record (2 for a value under a record key); a container
// beyond kMaxDepth throws moe::Error.
void pack_json(msgpack::packer<msgpack::sbuffer>& pk, const nlohmann::json& j, int level = 2);

// JSON text of a string as nlohmann::json dumps it (invalid UTF-8 replaced by U+FFFD).
std::string quoted(std::string_view s);
// quoted(s) written in pieces of about 1 MiB: a text of hundreds of MiB is never held twice.
void write_quoted(io::Output& out, std::string_view s);
// A JSON object's members in nlohmann's (sorted) key order, each written by its function.
using Fields = std::map<std::string, std::function<void()>>;
void write_object(io::Output& out, const Fields& fields);
// to_json(o).dump() (invalid UTF-8 replaced) written piece by piece, byte for byte the same: strings
// through write_quoted, containers element by element, so memory stays bounded by the largest scalar.
void write_json(io::Output& out, const msgpack::object& o);

const char* type_name(const msgpack::object& o);
inline std::string_view as_key(const msgpack::object& k) {
  return k.type == msgpack::type::STR ? std::string_view(k.via.str.ptr, k.via.str.size) : std::string_view();
}

// Packs a string key.
inline void pack_key(msgpack::packer<msgpack::sbuffer>& pk, std::string_view k) {
  pk.pack_str(static_cast<uint32_t>(k.size()));
  pk.pack_str_body(k.data(), static_cast<uint32_t>(k.size()));
}
inline void pack_bin(msgpack::packer<msgpack::sbuffer>& pk, const void* data, size_t n) {
  pk.pack_bin(static_cast<uint32_t>(n));
  pk.pack_bin_body(static_cast<const char*>(data), static_cast<uint32_t>(n));
}

}  // namespace moe::format::detail
