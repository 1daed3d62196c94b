// verl's rollout batch (DataProto.batch) saved as a safetensors file or a directory of .npy files.
#include <sys/stat.h>

#include <map>

#include "moe/engine/import.h"
#include "moe/engine/npy.h"
#include "moe/io/error.h"
#include "moe/io/jsonl.h"
#include "moe/model/safetensors_view.h"

namespace moe::engine {
namespace {

NumArray from_safetensors(const model::SafetensorsView& f, const std::string& name) {
  const model::TensorEntry& e = f.entry(name);
  NumArray a;
  const std::string& d = e.dtype;
  if (d == "BOOL" || d == "U8") a.kind = 'u', a.itemsize = 1;
  else if (d[0] == 'I' || d[0] == 'U' || d[0] == 'F') {
    a.kind = d[0] == 'I' ? 'i' : d[0] == 'U' ? 'u' : 'f';
    a.itemsize = int(model::safetensors_element_size(d));
    if (a.itemsize == 0 || (a.kind == 'f' && a.itemsize == 1)) throw Error(f.path() + ": tensor '" + name + "' has dtype " + d + ", not an integer or float type this reader takes");
  } else {
    throw Error(f.path() + ": tensor '" + name + "' has dtype " + d + ", not an integer or float type this reader takes");
  }
  a.shape = e.shape;
  a.data = f.bytes(e);
  return a;
}

bool is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

// Keys (verl's agent loop): prompts [B, Pp] left-padded, responses [B, Pr] right-padded, attention_mask
// [B, Pp + Pr], rollout_log_probs [B, Pr] (optional), routed_experts [B, Pp + Pr, layers, k] (optional)
// with the engine's rows placed from the first real prompt token (left-pad offset) on.
void read_verl(const std::string& path, const Sink& sink) {
  std::map<std::string, NumArray> t;
  std::unique_ptr<model::SafetensorsView> st;
  std::map<std::string, NpyFile> npy;
  std::string non_tensor;
  const char* keys[] = {"prompts", "responses", "attention_mask", "rollout_log_probs", "routed_experts"};
  if (path == "-" || path.empty()) throw UsageError("--from verl reads a directory of .npy files or a .safetensors file, not stdin");
  if (is_dir(path)) {
    for (const char* k : keys) {
      const std::string f = path + "/" + k + ".npy";
      struct stat s;
      if (::stat(f.c_str(), &s) != 0) continue;
      read_npy_file(f, npy[k]);
      t[k] = npy[k].arr;
    }
    struct stat s;
    if (::stat((path + "/non_tensor_batch.jsonl").c_str(), &s) == 0) non_tensor = path + "/non_tensor_batch.jsonl";
  } else {
    std::string head(8, '\0');
    {
      io::Input in(path);
      head.resize(in.read(head.data(), head.size()));
    }
    if (head.size() >= 6 && head.compare(0, 6, "\x93NUMPY") == 0)
      throw Error(path + ": a single .npy array; verl's batch is several (prompts, responses, attention_mask, ...): give their directory");
    st = std::make_unique<model::SafetensorsView>(path);
    for (const char* k : keys)
      if (st->has(k)) t[k] = from_safetensors(*st, k);
    struct stat s;
    if (::stat((path + ".jsonl").c_str(), &s) == 0) non_tensor = path + ".jsonl";
  }
  for (const char* k : {"prompts", "responses", "attention_mask"})
    if (!t.count(k)) throw Error(path + ": no '" + std::string(k) + "' array (a verl batch needs prompts, responses, attention_mask)");
  const NumArray &P = t["prompts"], &R = t["responses"], &M = t["attention_mask"];
  auto shape_str = [](const NumArray& a) {
    std::string s = "[";
    for (size_t i = 0; i < a.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(a.shape[i]);
    return s + "]";
  };
  if (P.shape.size() != 2 || R.shape.size() != 2 || M.shape.size() != 2)
    throw Error(path + ": prompts, responses and attention_mask must be 2-D, found " + shape_str(P) + ", " + shape_str(R) + ", " + shape_str(M));
  const int64_t B = P.shape[0], Pp = P.shape[1], Pr = R.shape[1];
  if (R.shape[0] != B || M.shape[0] != B || M.shape[1] != Pp + Pr)
    throw Error(path + ": shapes disagree: prompts " + shape_str(P) + ", responses " + shape_str(R) + ", attention_mask " + shape_str(M) +
                " (needs [B, prompts + responses])");
  for (const auto* a : {&P, &R, &M})
    if (a->kind == 'f') throw Error(path + ": token ids and masks must be integers, found " + a->dtype_name());
  const NumArray* L = t.count("rollout_log_probs") ? &t["rollout_log_probs"] : nullptr;
  if (L && (L->shape.size() != 2 || L->shape[0] != B || L->shape[1] != Pr))
    throw Error(path + ": rollout_log_probs is " + shape_str(*L) + ", expected [" + std::to_string(B) + ", " + std::to_string(Pr) + "]");
  const NumArray* X = t.count("routed_experts") ? &t["routed_experts"] : nullptr;
  if (X && (X->shape.size() != 4 || X->shape[0] != B || X->shape[1] != Pp + Pr))
    throw Error(path + ": routed_experts is " + shape_str(*X) + ", expected [" + std::to_string(B) + ", " + std::to_string(Pp + Pr) +
                ", layers, top_k]");
  if (X && X->kind == 'f') throw Error(path + ": routed_experts must hold integers, found " + X->dtype_name());
  std::unique_ptr<io::JsonlReader> nt;
  if (!non_tensor.empty()) nt = std::make_unique<io::JsonlReader>(non_tensor);

  for (int64_t b = 0; b < B; ++b) {
    EngineRecord r;
    r.where = path + ": row " + std::to_string(b);
    auto mask = [&](int64_t j) {
      const int64_t v = M.int_at(size_t(b * (Pp + Pr) + j));
      if (v != 0 && v != 1) throw Error(r.where + ": attention_mask holds " + std::to_string(v) + ", not 0 or 1");
      return v;
    };
    int64_t np = 0, nr = 0;
    for (int64_t j = 0; j < Pp; ++j) {
      const int64_t v = mask(j);
      if (v == 0 && np > 0) throw Error(r.where + ": the prompt is not left-padded (attention_mask 0 after 1 at column " + std::to_string(j) + ")");
      np += v;
    }
    for (int64_t j = 0; j < Pr; ++j) {
      const int64_t v = mask(Pp + j);
      if (v == 1 && nr < j) throw Error(r.where + ": the response is not right-padded (attention_mask 1 after 0 at column " + std::to_string(Pp + j) + ")");
      nr += v;
    }
    for (int64_t j = Pp - np; j < Pp; ++j) r.prompt.push_back(P.int_at(size_t(b * Pp + j)));
    for (int64_t j = 0; j < nr; ++j) r.response.push_back(R.int_at(size_t(b * Pr + j)));
    if (L) {
      std::vector<double> v;
      for (int64_t j = 0; j < nr; ++j) v.push_back(L->float_at(size_t(b * Pr + j)));
      r.logprobs = v;
    }
    if (X) {
      const int64_t layers = X->shape[2], k = X->shape[3], rows = np + nr - 1;
      r.rows = rows;
      r.layers = layers;
      r.k = k;
      r.has_routing = true;
      r.experts.resize(size_t(rows * layers * k));
      const size_t base = size_t((b * (Pp + Pr) + (Pp - np)) * layers * k);
      for (size_t i = 0; i < r.experts.size(); ++i) r.experts[i] = X->int_at(base + i);
    }
    if (nt) {
      nlohmann::json o;
      if (!nt->next(o)) throw Error(non_tensor + ": fewer lines than the batch's " + std::to_string(B) + " rows");
      const std::string w = nt->where();
      auto str = [&](const char* key, std::string& out) {
        auto it = o.find(key);
        if (it == o.end() || it->is_null()) return;
        if (!it->is_string()) throw Error(w + "\"" + key + "\" must be a string");
        out = it->get<std::string>();
      };
      str("prompt_text", r.prompt_text);
      str("response_text", r.response_text);
      str("finish_reason", r.finish_reason);
      if (auto it = o.find("task"); it != o.end()) {
        if (!it->is_object()) throw Error(w + "\"task\" must be a JSON object");
        r.task = *it;
      }
      for (const char* key : {"id", "group", "sample"}) {
        auto it = o.find(key);
        if (it == o.end() || it->is_null()) continue;
        if (!it->is_number_unsigned()) throw Error(w + "\"" + key + "\" must be a non-negative integer");
        const uint64_t v = it->get<uint64_t>();
        if (key[0] == 'i') r.id = v;
        else if (key[0] == 'g') r.group = v;
        else r.sample = uint32_t(v);
      }
    }
    sink(r);
  }
  if (nt) {
    nlohmann::json o;
    if (nt->next(o)) throw Error(nt->where() + "more lines than the batch's " + std::to_string(B) + " rows");
  }
}

}  // namespace moe::engine
