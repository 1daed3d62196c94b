#include "moe/format/safetensors_header.h"

#include <algorithm>
#include <utility>

#include "moe/io/error.h"
#include "moe/io/jsonl.h"

namespace moe::format {

size_t safetensors_element_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* map, size_t size, const std::string& path) {
  using nlohmann::json;
  auto bad = [&](const std::string& msg) { throw Error(path + ": not a valid safetensors file: " + msg); };
  if (size < 8) bad("truncated (" + std::to_string(size) + " bytes, shorter than the 8-byte header length)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | map[i];
  if (n > size - 8) bad("truncated: header length " + std::to_string(n) + " but only " + std::to_string(size - 8) + " bytes follow");
  if (n > (uint64_t(100) << 20)) bad("header length " + std::to_string(n) + " is implausibly large");
  SafetensorsHeader out;
  out.data_start = 8 + n;
  json h;
  try {
    h = io::parse_json(std::string_view(reinterpret_cast<const char*>(map + 8), n), "", 8);
  } catch (const Error& e) {
    bad(std::string("bad header JSON: ") + e.what());
  }
  if (!h.is_object()) bad("header is not a JSON object");
  const uint64_t data_size = size - out.data_start;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const std::string shown = io::excerpt(name, 0, 80);
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) bad("__metadata__ is not an object");
      for (auto m2 = v.begin(); m2 != v.end(); ++m2)
        if (m2.value().is_string()) out.metadata[m2.key()] = m2.value().get<std::string>();
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      bad("entry '" + shown + "' lacks dtype, shape or data_offsets");
    TensorEntry e;
    if (!v["dtype"].is_string()) bad("entry '" + shown + "': dtype is not a string");
    e.dtype = v["dtype"].get<std::string>();
    const size_t es = safetensors_element_size(e.dtype);
    if (es == 0) bad("entry '" + shown + "': unknown dtype " + io::excerpt(e.dtype, 0, 40));
    if (!v["shape"].is_array()) bad("entry '" + shown + "': shape is not a list");
    // Checked multiplication: a shape whose size wraps around 2^64 would pass the range check and make the
    // loader allocate the real (astronomical) size.
    uint64_t bytes = es;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) bad("entry '" + shown + "': bad shape " + io::excerpt(v["shape"].dump(), 0, 80));
      const uint64_t dim = static_cast<uint64_t>(d.get<int64_t>());
      if (dim != 0 && bytes > UINT64_MAX / dim)
        bad("entry '" + shown + "': shape " + io::excerpt(v["shape"].dump(), 0, 80) + " overflows 64-bit sizes");
      bytes *= dim;
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      bad("entry '" + shown + "': data_offsets must be two non-negative integers");
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.end < e.begin) bad("entry '" + shown + "': data_offsets end before begin");
    if (e.end - e.begin != bytes)
      bad("entry '" + shown + "': " + std::to_string(e.end - e.begin) + " bytes but dtype " + e.dtype + " x shape " +
          io::excerpt(v["shape"].dump(), 0, 80) + " needs " + std::to_string(bytes));
    if (e.end > data_size)
      bad("truncated: tensor '" + shown + "' ends at data byte " + std::to_string(e.end) + " but the file holds " +
          std::to_string(data_size) + " data bytes");
    if (e.end > e.begin) ranges.emplace_back(e.begin, e.end);
    out.entries.emplace(name, std::move(e));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) bad("tensor data ranges overlap");
  return out;
}

}  // namespace moe::format
