// Limits every reader and writer of moekit enforces on one record (a stream map, a JSON Lines line, a
// JSON file), documented in formats/stream.md. They bound the memory and time a hostile input can cost:
// a declared size beyond them is an error before anything is allocated for it.
#pragma once
#include <cstddef>

namespace moe::io {

// Containers (maps/objects, arrays) nested inside each other in one value, the outermost counted as 1.
// The same for JSON text and msgpack, readers and writers: a record moekit writes can always be read back.
inline constexpr int kMaxDepth = 64;
// Keys in one map or JSON object.
inline constexpr size_t kMaxMapKeys = size_t(1) << 16;
// Values (scalars and containers, every key and every element counted) in one record or JSON text.
inline constexpr size_t kMaxItems = size_t(1) << 20;
// Bytes of one packed record (stream map) or one JSON Lines line.
inline constexpr size_t kMaxRecordBytes = size_t(256) << 20;

}  // namespace moe::io
