#include "moe/model/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/io/jsonl.h"

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

c10::ScalarType scalar_type_of(const std::string& d) {
  if (d == "F32") return at::kFloat;
  if (d == "BF16") return at::kBFloat16;
  if (d == "F16") return at::kHalf;
  if (d == "F64") return at::kDouble;
  if (d == "I64") return at::kLong;
  if (d == "I32") return at::kInt;
  if (d == "I16") return at::kShort;
  if (d == "I8") return at::kChar;
  if (d == "U8") return at::kByte;
  if (d == "BOOL") return at::kBool;
  throw Error("safetensors dtype " + d + " is not supported");
}

std::string safetensors_dtype(c10::ScalarType t) {
  switch (t) {
    case at::kFloat: return "F32";
    case at::kBFloat16: return "BF16";
    case at::kHalf: return "F16";
    case at::kDouble: return "F64";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default: throw Error(std::string("cannot write tensors of dtype ") + c10::toString(t) + " to safetensors");
  }
}

at::Tensor SafetensorsFile::get(const std::string& name, c10::optional<c10::ScalarType> dtype) const {
  const TensorEntry& e = entry(name);
  c10::ScalarType st = scalar_type_of(e.dtype);
  // Read straight into the tensor, which owns its memory: the file may be closed afterwards.
  at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(st));
  if (e.end > e.begin) read_bytes(e, t.data_ptr());
  if (dtype && *dtype != st) {
    if (!at::isFloatingType(st) || !at::isFloatingType(*dtype))
      throw Error(path() + ": tensor '" + name + "' of dtype " + e.dtype + " cannot be converted to " + c10::toString(*dtype));
    t = t.to(*dtype);
  }
  return t;
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata, bool staged) {
  if (!host_is_little_endian()) throw Error(path + ": safetensors needs a little-endian host");
  std::map<std::string, at::Tensor> sorted;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__" || name.empty()) throw Error(path + ": invalid tensor name '" + name + "'");
    if (!sorted.emplace(name, t).second) throw Error(path + ": duplicate tensor name '" + name + "'");
  }
  json h = json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  for (auto& [name, t0] : sorted) {
    at::Tensor t = t0.detach().to(at::kCPU).contiguous();
    uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    h[name] = {{"dtype", safetensors_dtype(t.scalar_type())}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(t);
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  uint8_t len[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  // A staged file (a checkpoint's) is written with O_DIRECT through an 8 MiB buffer (see Output::NewFile);
  // otherwise each tensor goes from its own storage to the fd in one write.
  std::unique_ptr<io::Output> out = staged ? std::make_unique<io::Output>(path, io::Output::NewFile{true}, 8 << 20)
                                           : std::make_unique<io::Output>(path, 1 << 20);
  out->write(len, 8);
  out->write(header);
  for (const auto& t : data)
    if (t.numel() > 0) out->write(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size());
  out->close();
}

namespace {
bool path_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}
}  // namespace

bool Checkpoint::exists(const std::string& dir, const std::string& stem) {
  return path_exists(dir + "/" + stem + ".safetensors") || path_exists(dir + "/" + stem + ".safetensors.index.json");
}

Checkpoint::Checkpoint(const std::string& dir, const std::string& stem) : dir_(dir) {
  const std::string single = dir + "/" + stem + ".safetensors", index = single + ".index.json";
  if (path_exists(single)) {
    source_ = single;
    files_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const auto& n : files_[0]->names()) where_[n] = 0;
    return;
  }
  if (!path_exists(index)) throw Error(dir + ": no " + stem + ".safetensors or " + stem + ".safetensors.index.json");
  source_ = index;
  json j = io::read_json_file(index);
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw Error(index + ": missing object 'weight_map'");
  std::map<std::string, size_t> shard_ix;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string() || it.value().get<std::string>().empty() ||
        it.value().get<std::string>().find('/') != std::string::npos)
      throw Error(index + ": weight_map[\"" + it.key() + "\"] is not a file name of this directory");
    const std::string shard = it.value().get<std::string>();
    auto s = shard_ix.find(shard);
    if (s == shard_ix.end()) {
      files_.push_back(std::make_unique<SafetensorsFile>(dir + "/" + shard));
      s = shard_ix.emplace(shard, files_.size() - 1).first;
    }
    if (!files_[s->second]->has(it.key()))
      throw Error(files_[s->second]->path() + ": has no tensor " + it.key() + " (named by " + index + ")");
    where_[it.key()] = s->second;
  }
}

const TensorEntry& Checkpoint::entry(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw Error(dir_ + ": missing tensor '" + name + "'");
  return files_[it->second]->entry(name);
}
std::string Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw Error(dir_ + ": missing tensor '" + name + "'");
  return files_[it->second]->path();
}
at::Tensor Checkpoint::get(const std::string& name, c10::optional<c10::ScalarType> dtype) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw Error(dir_ + ": missing tensor '" + name + "'");
  return files_[it->second]->get(name, dtype);
}
std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> v;
  for (const auto& kv : where_) v.push_back(kv.first);
  return v;
}

}  // namespace moe::model
