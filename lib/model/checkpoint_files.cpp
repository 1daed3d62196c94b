#include "moe/model/checkpoint_files.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <regex>

#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/model/checkpoint_shards.h"
#include "moe/model/safetensors.h"

namespace moe::model {

bool is_weight_file(const std::string& name) {
  static const std::regex shard(R"(^model-\d{5}-of-\d{5}\.safetensors$)");
  return name == "model.safetensors" || name == "model.safetensors.index.json" || std::regex_match(name, shard);
}

namespace {
// The trainer's files: optimizer.safetensors, or its shards and index (expert parallel), and
// trainer_state.json. Written anew by every save, never carried over.
bool is_training_state_file(const std::string& name) {
  static const std::regex shard(R"(^optimizer-\d{5}-of-\d{5}\.safetensors$)");
  return name == "optimizer.safetensors" || name == "optimizer.safetensors.index.json" || name == "trainer_state.json" ||
         std::regex_match(name, shard);
}
}  // namespace

void write_weights(const std::string& dir, std::vector<std::pair<std::string, at::Tensor>> tensors, int64_t max_shard_bytes) {
  const int64_t total = data_bytes(tensors);
  std::vector<NamedTensors> shards = plan_shards(std::move(tensors), max_shard_bytes);
  if (shards.size() <= 1) {
    write_safetensors(dir + "/model.safetensors", shards.empty() ? NamedTensors{} : shards[0], {{"format", "pt"}}, /*staged=*/true);
    return;
  }
  const int n = static_cast<int>(shards.size());
  write_shard_index(dir, "model", total, write_shards(dir, "model", shards, 1, n, {{"format", "pt"}}));
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
    if (is_weight_file(n) || is_training_state_file(n) || ::stat(to.c_str(), &st) == 0) continue;
    if (::stat(from.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    io::Input in(from);  // streamed: a carried file may be large
    io::Output out(to, io::Output::NewFile{});
    std::vector<char> buf(1 << 20);
    for (size_t n; (n = in.read(buf.data(), buf.size())) > 0;) out.write(buf.data(), n);
    out.close();
  }
}

void write_companions(const std::string& staged, const std::string& old_dir, const std::string& config_json,
                      const std::vector<std::pair<std::string, std::string>>& files) {
  io::write_new_file(staged + "/config.json", config_json);
  for (const auto& [name, contents] : files) {
    if (name.empty() || name.find('/') != std::string::npos) throw Error("save: bad file name '" + name + "'");
    io::write_new_file(staged + "/" + name, contents);
  }
  carry_over_files(old_dir, staged);
}

std::vector<std::pair<std::string, std::string>> companion_files(const std::string& model_dir) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& n : entries(model_dir)) {
    if (is_weight_file(n) || n == "config.json" || is_training_state_file(n)) continue;
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
