// The header of a safetensors file (u64 LE length, JSON object of entries), parsed and checked without
// libtorch, so the model loader and the fuzzing harness share one parser.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moe::format {

struct TensorEntry {
  std::string dtype;           // safetensors dtype name: "F32", "BF16", "F16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range relative to the start of the data section
};

struct SafetensorsHeader {
  size_t data_start = 0;  // 8 + header length
  std::map<std::string, TensorEntry> entries;
  std::map<std::string, std::string> metadata;  // string values of __metadata__
};

// Bytes of one element of a safetensors dtype; 0 for a name it does not know.
size_t safetensors_element_size(const std::string& dtype);

// Parses the header of the `size` bytes at `file` (the whole file, or at least its header when
// `file_size` gives the real size). Throws moe::Error "<name>: not a valid safetensors file: <what>" for
// a file shorter than its header or than any tensor's range ("truncated"), a header over 100 MiB or not
// a JSON object of entries with dtype/shape/data_offsets (limits of moe/io/limits.h), an unknown dtype, a
// shape whose byte size overflows 64 bits or differs from its range, or overlapping ranges.
SafetensorsHeader parse_safetensors_header(const uint8_t* file, size_t size, const std::string& name);

}  // namespace moe::format
