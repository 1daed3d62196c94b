#include "moe/model/safetensors_view.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "moe/io/error.h"

namespace moe::model {
namespace {
using nlohmann::json;

bool host_is_little_endian() {
  const uint16_t x = 1;
  uint8_t b;
  std::memcpy(&b, &x, 1);
  return b == 1;
}
}  // namespace

size_t safetensors_element_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

SafetensorsView::SafetensorsView(const std::string& path) : path_(path) {
  if (!host_is_little_endian()) throw Error(path + ": safetensors needs a little-endian host");
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw Error(path + ": " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    int e = errno;
    ::close(fd_);
    throw Error(path + ": " + std::strerror(e));
  }
  size_ = static_cast<size_t>(st.st_size);
  auto bad = [&](const std::string& msg) {
    if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
    ::close(fd_);
    map_ = nullptr;
    fd_ = -1;
    throw Error(path + ": not a valid safetensors file: " + msg);
  };
  if (size_ < 8) bad("truncated (" + std::to_string(size_) + " bytes, shorter than the 8-byte header length)");
  void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
  if (m == MAP_FAILED) {
    int e = errno;
    ::close(fd_);
    throw Error(path + ": mmap: " + std::strerror(e));
  }
  map_ = static_cast<const uint8_t*>(m);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | map_[i];
  if (n > size_ - 8) bad("truncated: header length " + std::to_string(n) + " but only " + std::to_string(size_ - 8) + " bytes follow");
  if (n > (uint64_t(100) << 20)) bad("header length " + std::to_string(n) + " is implausibly large");
  data_start_ = 8 + n;
  json h;
  try {
    h = json::parse(map_ + 8, map_ + 8 + n);
  } catch (const json::parse_error& e) {
    bad(std::string("bad header JSON: ") + e.what());
  }
  if (!h.is_object()) bad("header is not a JSON object");
  uint64_t data_size = size_ - data_start_;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) bad("__metadata__ is not an object");
      for (auto m2 = v.begin(); m2 != v.end(); ++m2)
        if (m2.value().is_string()) metadata_[m2.key()] = m2.value().get<std::string>();
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      bad("entry '" + name + "' lacks dtype, shape or data_offsets");
    TensorEntry e;
    if (!v["dtype"].is_string()) bad("entry '" + name + "': dtype is not a string");
    e.dtype = v["dtype"].get<std::string>();
    size_t es = safetensors_element_size(e.dtype);
    if (es == 0) bad("entry '" + name + "': unknown dtype " + e.dtype);
    if (!v["shape"].is_array()) bad("entry '" + name + "': shape is not a list");
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) bad("entry '" + name + "': bad shape " + v["shape"].dump());
      e.shape.push_back(d.get<int64_t>());
      numel *= static_cast<uint64_t>(d.get<int64_t>());
    }
    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      bad("entry '" + name + "': data_offsets must be two non-negative integers");
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.end < e.begin) bad("entry '" + name + "': data_offsets end before begin");
    if (e.end - e.begin != numel * es)
      bad("entry '" + name + "': " + std::to_string(e.end - e.begin) + " bytes but dtype " + e.dtype + " x shape " +
          v["shape"].dump() + " needs " + std::to_string(numel * es));
    if (e.end > data_size)
      bad("truncated: tensor '" + name + "' ends at data byte " + std::to_string(e.end) + " but the file holds " +
          std::to_string(data_size) + " data bytes");
    if (e.end > e.begin) ranges.emplace_back(e.begin, e.end);
    entries_.emplace(name, std::move(e));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) bad("tensor data ranges overlap");
}

SafetensorsView::~SafetensorsView() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
  if (fd_ >= 0) ::close(fd_);
}

const TensorEntry& SafetensorsView::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw Error(path_ + ": no tensor '" + name + "'");
  return it->second;
}

std::vector<std::string> SafetensorsView::names() const {
  std::vector<std::string> v;
  for (const auto& kv : entries_) v.push_back(kv.first);
  return v;
}

}  // namespace moe::model
