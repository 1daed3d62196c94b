#include "moe/model/checkpoint_shards.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/model/checkpoint_files.h"
#include "moe/model/safetensors.h"

namespace moe::model {

std::string make_staging_dir(const std::string& dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  check_carry_over(d);
  std::string tmpl = d + ".tmp-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!::mkdtemp(buf.data()))
    throw Error(dir + ": cannot create a staging directory beside it (does the parent directory exist?): " + std::strerror(errno));
  std::string staged(buf.data());
  mode_t um = ::umask(0);  // mkdtemp makes 0700; give the model dir the usual permissions
  ::umask(um);
  ::chmod(staged.c_str(), 0777 & ~um);
  return staged;
}

void remove_staging_dir(const std::string& staged) noexcept {
  if (staged.empty()) return;
  if (auto* dp = ::opendir(staged.c_str())) {  // flat: files only
    while (auto* ent = ::readdir(dp)) {
      std::string n = ent->d_name;
      if (n != "." && n != "..") ::unlink((staged + "/" + n).c_str());
    }
    ::closedir(dp);
  }
  ::rmdir(staged.c_str());
}

std::string torch_dtype_name(at::ScalarType t) {
  return t == at::kBFloat16 ? "bfloat16" : t == at::kHalf ? "float16" : "float32";
}

int64_t data_bytes(const NamedTensors& tensors) {
  int64_t total = 0;
  for (const auto& nt : tensors) total += static_cast<int64_t>(nt.second.numel() * nt.second.element_size());
  return total;
}

std::vector<NamedTensors> plan_shards(NamedTensors tensors, int64_t max_shard_bytes) {
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<NamedTensors> shards;
  int64_t in_shard = 0;
  for (auto& nt : tensors) {
    const int64_t b = static_cast<int64_t>(nt.second.numel() * nt.second.element_size());
    if (shards.empty() || (!shards.back().empty() && in_shard + b > max_shard_bytes)) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(std::move(nt));
    in_shard += b;
  }
  return shards;
}

std::string shard_file_name(const std::string& stem, int i, int n) {
  char name[64];
  std::snprintf(name, sizeof name, "-%05d-of-%05d.safetensors", i, n);
  return stem + name;
}

std::map<std::string, std::string> write_shards(const std::string& dir, const std::string& stem, const std::vector<NamedTensors>& shards,
                                                int first, int total, const std::map<std::string, std::string>& metadata) {
  std::map<std::string, std::string> map;
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string name = shard_file_name(stem, first + static_cast<int>(k), total);
    write_safetensors(dir + "/" + name, shards[k], metadata, /*staged=*/true);
    for (const auto& nt : shards[k]) map[nt.first] = name;
  }
  return map;
}

void write_shard_index(const std::string& dir, const std::string& stem, int64_t total_size,
                       const std::map<std::string, std::string>& weight_map) {
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total_size}};
  nlohmann::ordered_json map = nlohmann::ordered_json::object();
  for (const auto& [n, f] : weight_map) map[n] = f;
  index["weight_map"] = std::move(map);
  io::write_new_file(dir + "/" + stem + ".safetensors.index.json", index.dump(2) + "\n");
}

}  // namespace moe::model
