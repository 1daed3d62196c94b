// Test-only: max |a - b| over the F32 tensors of two safetensors files (same names and shapes), printed
// as one number. Exit 1 when the names, dtypes or shapes differ. No libtorch (reads the format directly).
//   moe_tensor_diff [--match SUBSTR] A.safetensors B.safetensors   (--match: only tensors whose name has SUBSTR)
//   moe_tensor_diff --rel A B: max |a - b| / max |a| instead (e.g. gradients of different scales)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

namespace {
struct File {
  nlohmann::json header;
  std::string data;
};
File load(const char* path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(std::string(path) + ": cannot open");
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (all.size() < 8) throw std::runtime_error(std::string(path) + ": too short");
  uint64_t n = 0;
  std::memcpy(&n, all.data(), 8);
  if (8 + n > all.size()) throw std::runtime_error(std::string(path) + ": bad header length");
  File r;
  r.header = nlohmann::json::parse(all.substr(8, n));
  r.data = all.substr(8 + n);
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
    for (auto& [name, ea] : a.header.items()) {
      if (name == "__metadata__") continue;
      if (!b.header.contains(name)) throw std::runtime_error("tensor " + name + " only in " + argv[1]);
      const auto& eb = b.header[name];
      if (ea["dtype"] != eb["dtype"] || ea["shape"] != eb["shape"]) throw std::runtime_error("tensor " + name + " differs in dtype or shape");
      if (ea["dtype"] != "F32" || name.find(match) == std::string::npos) continue;
      const uint64_t a0 = ea["data_offsets"][0], a1 = ea["data_offsets"][1], b0 = eb["data_offsets"][0];
      for (uint64_t i = 0; i < (a1 - a0) / 4; ++i) {
        float x, y;
        std::memcpy(&x, a.data.data() + a0 + 4 * i, 4);
        std::memcpy(&y, b.data.data() + b0 + 4 * i, 4);
        double d = std::fabs(static_cast<double>(x) - y);
        scale = std::fmax(scale, std::fabs(static_cast<double>(x)));
        if (!(d <= worst)) worst = std::isnan(d) ? INFINITY : d;
      }
    }
    for (auto& [name, eb] : b.header.items())
      if (!a.header.contains(name)) throw std::runtime_error("tensor " + name + " only in " + argv[2]);
    if (rel) worst = scale > 0 ? worst / scale : worst;
    std::printf("%.9g\n", worst);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_tensor_diff: %s\n", e.what());
    return 1;
  }
  return 0;
}
