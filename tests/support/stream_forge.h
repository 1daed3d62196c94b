// Test-only: builds moekit streams byte by byte, including broken ones, and synthesises routing data
// with skewed (Zipf-like) expert popularity. Used by moe_gen_routing, the unit tests and the benchmark.
#pragma once
#define XXH_INLINE_ALL
#include <xxhash.h>
#include <zstd.h>

#include <cmath>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include <msgpack.hpp>
#include <nlohmann/json.hpp>

#include "moe/format/routing.h"

namespace moe::testing {

// Packs a JSON value as msgpack (maps with string keys; binary values become bin).
inline void pack_json_value(msgpack::packer<msgpack::sbuffer>& pk, const nlohmann::json& j) {
  using vt = nlohmann::json::value_t;
  switch (j.type()) {
    case vt::null: case vt::discarded: pk.pack_nil(); break;
    case vt::boolean: j.get<bool>() ? pk.pack_true() : pk.pack_false(); break;
    case vt::number_integer: pk.pack_int64(j.get<int64_t>()); break;
    case vt::number_unsigned: pk.pack_uint64(j.get<uint64_t>()); break;
    case vt::number_float: pk.pack_double(j.get<double>()); break;
    case vt::string: pk.pack(j.get<std::string>()); break;
    case vt::binary: {
      const auto& b = j.get_binary();
      pk.pack_bin(uint32_t(b.size()));
      pk.pack_bin_body(reinterpret_cast<const char*>(b.data()), uint32_t(b.size()));
      break;
    }
    case vt::array:
      pk.pack_array(uint32_t(j.size()));
      for (const auto& x : j) pack_json_value(pk, x);
      break;
    case vt::object:
      pk.pack_map(uint32_t(j.size()));
      for (auto it = j.begin(); it != j.end(); ++it) {
        pk.pack(it.key());
        pack_json_value(pk, it.value());
      }
      break;
  }
}

inline std::string pack_json(const nlohmann::json& j) {
  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  pack_json_value(pk, j);
  return std::string(sb.data(), sb.size());
}

inline nlohmann::json bin(const std::string& bytes) {
  return nlohmann::json::binary(std::vector<uint8_t>(bytes.begin(), bytes.end()));
}

// A stream assembled from packed pieces: header, records, trailer; compressed at the end.
struct Forge {
  std::string header, trailer_override;
  std::vector<std::string> records;
  bool trailer = true;
  int64_t count_delta = 0;     // added to the true record count in the trailer
  uint64_t checksum_xor = 0;   // xored into the true checksum in the trailer

  static nlohmann::json routing_meta(int layers = 2, int experts = 8, int top_k = 2, const char* idx = "u8",
                                     const char* prob = "f16") {
    std::vector<int> ids(layers);
    std::iota(ids.begin(), ids.end(), 0);
    return {{"num_layers", layers}, {"layer_ids", ids}, {"num_experts", experts}, {"top_k", top_k},
            {"index_dtype", idx},   {"prob_dtype", prob}, {"model_digest", ""}};
  }
  static nlohmann::json header_json(const std::string& kind, int64_t version, const nlohmann::json& meta,
                                    const std::string& magic = "moekit") {
    return {{"magic", magic}, {"kind", kind}, {"version", version}, {"producer", {{"program", "forge"}}}, {"meta", meta}};
  }

  std::string trailer_bytes() const {
    if (!trailer_override.empty()) return trailer_override;
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    if (header_version() >= 2) XXH3_64bits_update(&st, header.data(), header.size());  // version 2: header covered
    for (const auto& r : records) XXH3_64bits_update(&st, r.data(), r.size());
    nlohmann::json t = {{"trailer", {{"count", uint64_t(int64_t(records.size()) + count_delta)},
                                     {"checksum", XXH3_64bits_digest(&st) ^ checksum_xor}}}};
    return pack_json(t);
  }
  // The header's "version" (0 when it has none or is not a map): from 2 on the checksum covers the header.
  int64_t header_version() const {
    try {
      msgpack::object_handle oh = msgpack::unpack(header.data(), header.size());
      const msgpack::object& m = oh.get();
      if (m.type != msgpack::type::MAP) return 0;
      for (uint32_t i = 0; i < m.via.map.size; ++i) {
        const auto& kv = m.via.map.ptr[i];
        if (kv.key.type == msgpack::type::STR && std::string(kv.key.via.str.ptr, kv.key.via.str.size) == "version" &&
            kv.val.type == msgpack::type::POSITIVE_INTEGER)
          return static_cast<int64_t>(kv.val.via.u64);
      }
    } catch (const std::exception&) {
    }
    return 0;
  }
  // The uncompressed msgpack sequence.
  std::string raw() const {
    std::string s = header;
    for (const auto& r : records) s += r;
    if (trailer) s += trailer_bytes();
    return s;
  }
  // Compressed, each piece of `raw()` split at `cuts` (uncompressed offsets) into its own zstd frame.
  std::string zst(const std::vector<size_t>& cuts = {}) const { return compress_frames(raw(), cuts); }

  static std::string compress_frames(const std::string& raw, std::vector<size_t> cuts) {
    cuts.push_back(raw.size());
    std::string out;
    size_t start = 0;
    for (size_t c : cuts) {
      std::string frame(ZSTD_compressBound(c - start), '\0');
      size_t n = ZSTD_compress(frame.data(), frame.size(), raw.data() + start, c - start, 3);
      if (ZSTD_isError(n)) throw std::runtime_error("zstd");
      out.append(frame.data(), n);
      start = c;
    }
    return out;
  }
};

// Deterministic per-(seed, id, position, layer) randomness, independent of record chunking.
inline uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Routing with per-layer Zipf popularity (exponent 0.9, a different expert order per layer), distinct
// top-k per row drawn by weight, and descending probabilities. `perturb` replaces one expert in that share
// of (position, layer) rows (decided by perturb_seed), so diff has a known answer.
class RoutingSynth {
 public:
  RoutingSynth(int layers, int experts, int top_k, uint64_t seed) : L_(layers), E_(experts), K_(top_k), seed_(seed) {
    for (int l = 0; l < L_; ++l) {
      std::vector<int> perm(E_);
      std::iota(perm.begin(), perm.end(), 0);
      uint64_t s = splitmix(seed ^ (0x1000 + l));
      for (int i = E_ - 1; i > 0; --i) std::swap(perm[i], perm[(s = splitmix(s)) % (i + 1)]);
      std::vector<double> w(E_);
      for (int i = 0; i < E_; ++i) w[perm[i]] = 1.0 / std::pow(i + 1.0, 0.9);
      build_alias(w);
    }
  }

  void fill(uint64_t id, int64_t first_pos, int64_t n_pos, bool with_probs, double perturb, uint64_t perturb_seed,
            format::RoutingRecord& rec) const {
    rec.id = id;
    rec.first_pos = first_pos;
    rec.n_pos = n_pos;
    rec.experts.resize(size_t(n_pos) * L_ * K_);
    rec.probs.resize(with_probs ? rec.experts.size() : 0);
    std::vector<uint8_t> used(E_);
    for (int64_t t = 0; t < n_pos; ++t)
      for (int l = 0; l < L_; ++l) {
        uint64_t s = splitmix(seed_ ^ splitmix(id * 0x100000001b3ull ^ uint64_t(first_pos + t) * 131 ^ uint64_t(l) << 48));
        uint16_t* row = &rec.experts[(size_t(t) * L_ + l) * K_];
        for (int k = 0; k < K_; ++k) {
          int e = draw(l, s = splitmix(s));
          while (used[e]) e = (e + 1) % E_;  // rare with these weights; keeps rows distinct
          used[e] = 1;
          row[k] = uint16_t(e);
        }
        if (perturb > 0) {
          uint64_t ps = splitmix(perturb_seed ^ splitmix(id * 7919 ^ uint64_t(first_pos + t) * 104729 ^ uint64_t(l) << 40));
          if (double(ps >> 11) * 0x1.0p-53 < perturb) {
            int e = int(splitmix(ps) % E_);
            while (used[e]) e = (e + 1) % E_;
            used[row[K_ - 1]] = 0;
            used[e] = 1;
            row[K_ - 1] = uint16_t(e);
          }
        }
        for (int k = 0; k < K_; ++k) used[row[k]] = 0;
        if (with_probs) {
          float* p = &rec.probs[(size_t(t) * L_ + l) * K_];
          // Descending probabilities whose top-k mass is 0.5 .. 0.95 (a softmax over all experts sums to 1).
          double v = 1, sum = 0;
          for (int k = 0; k < K_; ++k) {
            p[k] = float(v);
            sum += v;
            v *= 0.5 + 0.45 * double((s = splitmix(s)) >> 11) * 0x1.0p-53;
          }
          const double mass = 0.5 + 0.45 * double((s = splitmix(s)) >> 11) * 0x1.0p-53;
          for (int k = 0; k < K_; ++k) p[k] = float(p[k] * mass / sum);
        }
      }
  }

 private:
  void build_alias(const std::vector<double>& w) {
    double sum = std::accumulate(w.begin(), w.end(), 0.0);
    std::vector<double> q(E_);
    std::vector<int> small, large;
    for (int i = 0; i < E_; ++i) {
      q[i] = w[i] * E_ / sum;
      (q[i] < 1 ? small : large).push_back(i);
    }
    std::vector<double> prob(E_, 1.0);
    std::vector<int> alias(E_);
    std::iota(alias.begin(), alias.end(), 0);
    while (!small.empty() && !large.empty()) {
      int s = small.back(), g = large.back();
      small.pop_back();
      prob[s] = q[s];
      alias[s] = g;
      q[g] -= 1 - q[s];
      if (q[g] < 1) {
        large.pop_back();
        small.push_back(g);
      }
    }
    prob_.push_back(prob);
    alias_.push_back(alias);
  }
  int draw(int l, uint64_t r) const {
    int i = int((r >> 32) % uint64_t(E_));
    double u = double(r & 0xffffffffu) * 0x1.0p-32;
    return u < prob_[l][i] ? i : alias_[l][i];
  }
  int L_, E_, K_;
  uint64_t seed_;
  std::vector<std::vector<double>> prob_;
  std::vector<std::vector<int>> alias_;
};

}  // namespace moe::testing
