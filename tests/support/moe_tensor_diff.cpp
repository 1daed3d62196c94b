// Test-only: max |a - b| over the F32 tensors of two safetensors files (same names and shapes), printed
// as one number. Exit 1 when the names, dtypes or shapes differ. No libtorch (reads the format directly).
// A file named *.index.json stands for the shards its weight_map names (each tensor once, every tensor of
// every shard named: else exit 1), so a sharded checkpoint compares with a single file.
//   moe_tensor_diff [--match SUBSTR] A.safetensors B.safetensors   (--match: only tensors whose name has SUBSTR)
//   moe_tensor_diff --rel A B: max |a - b| / max |a| instead (e.g. gradients of different scales)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace {
struct Shard {
  nlohmann::json header;
  std::string data;
};
Shard load_one(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open");
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (all.size() < 8) throw std::runtime_error(path + ": too short");
  uint64_t n = 0;
  std::memcpy(&n, all.data(), 8);
  if (8 + n > all.size()) throw std::runtime_error(path + ": bad header length");
  Shard r;
  r.header = nlohmann::json::parse(all.substr(8, n));
  r.data = all.substr(8 + n);
  return r;
}
// name -> (header entry, data of its shard)
struct File {
  std::map<std::string, std::shared_ptr<Shard>> files;
  std::map<std::string, std::pair<nlohmann::json, const std::string*>> tensors;
  bool contains(const std::string& n) const { return tensors.count(n) != 0; }
};
bool ends_with(const std::string& s, const std::string& t) { return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0; }
File load(const char* path_c) {
  const std::string path = path_c;
  File r;
  if (!ends_with(path, ".index.json")) {
    auto sh = std::make_shared<Shard>(load_one(path));
    r.files[path] = sh;
    for (auto& [name, e] : sh->header.items())
      if (name != "__metadata__") r.tensors[name] = {e, &sh->data};
    return r;
  }
  std::ifstream f(path);
  if (!f) throw std::runtime_error(path + ": cannot open");
  const nlohmann::json index = nlohmann::json::parse(f);
  const std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/'));
  for (auto& [name, file] : index.at("weight_map").items()) {
    const std::string p = dir + "/" + file.get<std::string>();
    auto& sh = r.files[p];
    if (!sh) sh = std::make_shared<Shard>(load_one(p));
    if (!sh->header.contains(name)) throw std::runtime_error(p + ": lacks " + name + " (named by the index)");
    r.tensors[name] = {sh->header[name], &sh->data};
  }
  for (auto& [p, sh] : r.files)
    for (auto& [name, e] : sh->header.items())
      if (name != "__metadata__" && index["weight_map"].value(name, "") != p.substr(p.rfind('/') + 1))
        throw std::runtime_error(p + ": holds " + name + ", which the index does not map to it");
  return r;
}
}  // namespace

int main(int argc, char** argv) {
  std::string match;
  bool rel = false;
  if (argc >= 2 && std::strcmp(argv[1], "--rel") == 0) {
    rel = true;
    ++argv;
    --argc;
  }
  if (argc == 5 && std::strcmp(argv[1], "--match") == 0) {
    match = argv[2];
    argv += 2;
    argc -= 2;
  }
  if (argc != 3) {
    std::fprintf(stderr, "usage: moe_tensor_diff [--match SUBSTR] A.safetensors B.safetensors\n");
    return 2;
  }
  try {
    File a = load(argv[1]), b = load(argv[2]);
    double worst = 0, scale = 0;
    for (auto& [name, pa] : a.tensors) {
      const auto& ea = pa.first;
      if (!b.contains(name)) throw std::runtime_error("tensor " + name + " only in " + argv[1]);
      const auto& eb = b.tensors[name].first;
      const std::string& da = *pa.second;
      const std::string& db = *b.tensors[name].second;
      if (ea["dtype"] != eb["dtype"] || ea["shape"] != eb["shape"]) throw std::runtime_error("tensor " + name + " differs in dtype or shape");
      if (ea["dtype"] != "F32" || name.find(match) == std::string::npos) continue;
      const uint64_t a0 = ea["data_offsets"][0], a1 = ea["data_offsets"][1], b0 = eb["data_offsets"][0];
      for (uint64_t i = 0; i < (a1 - a0) / 4; ++i) {
        float x, y;
        std::memcpy(&x, da.data() + a0 + 4 * i, 4);
        std::memcpy(&y, db.data() + b0 + 4 * i, 4);
        double d = std::fabs(static_cast<double>(x) - y);
        scale = std::fmax(scale, std::fabs(static_cast<double>(x)));
        if (!(d <= worst)) worst = std::isnan(d) ? INFINITY : d;
      }
    }
    for (auto& [name, eb] : b.tensors)
      if (!a.contains(name)) throw std::runtime_error("tensor " + name + " only in " + argv[2]);
    if (rel) worst = scale > 0 ? worst / scale : worst;
    std::printf("%.9g\n", worst);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_tensor_diff: %s\n", e.what());
    return 1;
  }
  return 0;
}
