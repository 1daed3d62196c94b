#include "moe/model/checkpoint_files.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <regex>

#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/model/safetensors.h"

namespace moe::model {

bool is_weight_file(const std::string& name) {
  static const std::regex shard(R"(^model-\d{5}-of-\d{5}\.safetensors$)");
  return name == "model.safetensors" || name == "model.safetensors.index.json" || std::regex_match(name, shard);
}

void write_weights(const std::string& dir, std::vector<std::pair<std::string, at::Tensor>> tensors, int64_t max_shard_bytes) {
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  auto bytes_of = [](const at::Tensor& t) { return static_cast<int64_t>(t.numel() * t.element_size()); };
  int64_t total = 0;
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
  int64_t in_shard = 0;
  for (auto& nt : tensors) {
    const int64_t b = bytes_of(nt.second);
    if (!shards.back().empty() && in_shard + b > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(std::move(nt));
    in_shard += b;
    total += b;
  }
  if (shards.size() == 1) {
    write_safetensors(dir + "/model.safetensors", shards[0], {{"format", "pt"}}, /*staged=*/true);
    return;
  }
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total}};
  nlohmann::ordered_json map = nlohmann::ordered_json::object();
  const int n = static_cast<int>(shards.size());
  for (int i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i + 1, n);
    write_safetensors(dir + "/" + name, shards[i], {{"format", "pt"}}, /*staged=*/true);
    for (const auto& nt : shards[i]) map[nt.first] = name;
  }
  index["weight_map"] = std::move(map);
  io::write_new_file(dir + "/model.safetensors.index.json", index.dump(2) + "\n");
}

namespace {
// The entries of dir (without . and ..); empty if dir does not exist.
std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  DIR* dp = ::opendir(dir.c_str());
  if (!dp) return out;
  while (auto* e = ::readdir(dp)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  ::closedir(dp);
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

void check_carry_over(const std::string& old_dir) {
  for (const auto& n : entries(old_dir)) {
    struct stat st;
    if (::lstat((old_dir + "/" + n).c_str(), &st) == 0 && S_ISDIR(st.st_mode))
      throw Error(old_dir + "/" + n + ": a subdirectory in the model dir; moekit replaces the whole dir when it saves, "
                  "so move it out first");
  }
}

void carry_over_files(const std::string& old_dir, const std::string& staged) {
  for (const auto& n : entries(old_dir)) {
    const std::string from = old_dir + "/" + n, to = staged + "/" + n;
    struct stat st;
    // Ours (training state included: a fresh save must not inherit an older run's), or written anew.
    if (is_weight_file(n) || n == "optimizer.safetensors" || n == "trainer_state.json" || ::stat(to.c_str(), &st) == 0) continue;
    if (::stat(from.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    io::Input in(from);  // streamed: a carried file may be large
    io::Output out(to, io::Output::NewFile{});
    std::vector<char> buf(1 << 20);
    for (size_t n; (n = in.read(buf.data(), buf.size())) > 0;) out.write(buf.data(), n);
    out.close();
  }
}

std::vector<std::pair<std::string, std::string>> companion_files(const std::string& model_dir) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& n : entries(model_dir)) {
    if (is_weight_file(n) || n == "config.json" || n == "optimizer.safetensors" || n == "trainer_state.json") continue;
    struct stat st;
    if (::stat((model_dir + "/" + n).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    out.emplace_back(n, io::read_file(model_dir + "/" + n));
  }
  return out;
}

int64_t parse_size(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (const std::exception&) {
    throw UsageError("size '" + s + "' is not a number with an optional unit (e.g. 5GB, 500MB)");
  }
  std::string unit = s.substr(pos);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double mult = 1;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "KB") mult = 1e3;
  else if (unit == "MB") mult = 1e6;
  else if (unit == "GB") mult = 1e9;
  else if (unit == "KIB") mult = 1024.0;
  else if (unit == "MIB") mult = 1024.0 * 1024;
  else if (unit == "GIB") mult = 1024.0 * 1024 * 1024;
  else throw UsageError("size '" + s + "': unknown unit (B, KB, MB, GB, KiB, MiB, GiB)");
  if (!(v > 0)) throw UsageError("size '" + s + "' must be positive");
  return static_cast<int64_t>(v * mult);
}

}  // namespace moe::model
