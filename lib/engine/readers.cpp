// Readers of SGLang, vLLM and plain JSON Lines outputs (formats/routing.md "Engines" says where each
// field comes from and which source files of the engines define it).
#include <cmath>
#include <cstring>
#include <limits>

#include "moe/engine/import.h"
#include "moe/engine/npy.h"
#include "moe/io/error.h"
#include "moe/io/jsonl.h"

namespace moe::engine {
namespace {
using nlohmann::json;

[[noreturn]] void fail(const std::string& where, const std::string& what) { throw Error(where + ": " + what); }

const json* get(const json& o, const char* key) {
  auto it = o.find(key);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

std::vector<int64_t> token_list(const json& v, const std::string& where, const std::string& what) {
  if (!v.is_array()) fail(where, what + " must be a list of token ids");
  std::vector<int64_t> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number_integer()) fail(where, what + "[" + std::to_string(i) + "] is " + v[i].dump() + ", not a token id");
    out.push_back(v[i].get<int64_t>());
  }
  return out;
}

double logprob_value(const json& v) {
  if (v.is_number()) return v.get<double>();
  return std::numeric_limits<double>::quiet_NaN();  // null: missing, reported by the importer
}

// Reads JSON Lines; a line may also hold a JSON array of objects (SGLang answers a batch with one).
void each_object(const std::string& path, const std::function<void(const json&, const std::string&)>& f) {
  io::Input in(path);
  std::string line;
  int64_t lineno = 0;
  while (in.getline(line)) {
    ++lineno;
    const std::string where = in.name() + ":" + std::to_string(lineno);
    size_t b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos) continue;
    json j = io::parse_json(line, where + ": ");
    if (j.is_array()) {
      for (size_t i = 0; i < j.size(); ++i) {
        if (!j[i].is_object()) fail(where, "element " + std::to_string(i) + " of the array is not a JSON object");
        f(j[i], where + " [" + std::to_string(i) + "]");
      }
    } else if (j.is_object()) {
      f(j, where);
    } else {
      fail(where, "expected a JSON object");
    }
  }
}

void common_extras(const json& o, const std::string& where, EngineRecord& r) {
  if (const json* t = get(o, "task")) {
    if (!t->is_object()) fail(where, "\"task\" must be a JSON object");
    r.task = *t;
  }
  if (const json* g = get(o, "group")) {
    if (!g->is_number_unsigned()) fail(where, "\"group\" must be a non-negative integer");
    r.group = g->get<uint64_t>();
  }
}

}  // namespace

// SGLang /generate response: {"text", "output_ids", "meta_info": {"finish_reason": {"type", "matched"},
// "prompt_tokens", "completion_tokens", "output_token_logprobs": [[logprob, id, text], ...],
// "input_token_logprobs": [...], "routed_experts": base64 int32}}, plus the request's "input_ids" as users
// save them beside the response.
void read_sglang(const std::string& path, const Sink& sink) {
  each_object(path, [&](const json& o, const std::string& where) {
    EngineRecord r;
    r.where = where;
    const json* mi = get(o, "meta_info");
    if (!mi || !mi->is_object()) fail(where, "no \"meta_info\" object: not an SGLang /generate response");
    const json* out_ids = get(o, "output_ids");
    const json* olp = get(*mi, "output_token_logprobs");
    if (out_ids) r.response = token_list(*out_ids, where, "output_ids");
    if (olp) {
      if (!olp->is_array()) fail(where, "meta_info.output_token_logprobs must be a list of [logprob, token_id, text]");
      std::vector<double> lps;
      std::vector<int64_t> ids;
      for (size_t i = 0; i < olp->size(); ++i) {
        const json& e = (*olp)[i];
        if (!e.is_array() || e.size() < 2 || !e[1].is_number_integer())
          fail(where, "meta_info.output_token_logprobs[" + std::to_string(i) + "] is not [logprob, token_id, ...]");
        lps.push_back(logprob_value(e[0]));
        ids.push_back(e[1].get<int64_t>());
      }
      if (!out_ids) r.response = ids;
      else if (ids != r.response)
        fail(where, "meta_info.output_token_logprobs names other tokens than output_ids");
      r.logprobs = lps;
    }
    if (!out_ids && !olp) fail(where, "no \"output_ids\" (and no meta_info.output_token_logprobs): the response's token ids are needed");
    if (const json* in = get(o, "input_ids")) {
      r.prompt = token_list(*in, where, "input_ids");
    } else if (const json* ilp = get(*mi, "input_token_logprobs")) {
      if (!ilp->is_array()) fail(where, "meta_info.input_token_logprobs must be a list");
      for (size_t i = 0; i < ilp->size(); ++i) {
        const json& e = (*ilp)[i];
        if (!e.is_array() || e.size() < 2 || !e[1].is_number_integer())
          fail(where, "meta_info.input_token_logprobs[" + std::to_string(i) + "] is not [logprob, token_id, ...]");
        r.prompt.push_back(e[1].get<int64_t>());
      }
    } else {
      fail(where, "no prompt token ids: save the request's \"input_ids\" in the line (or ask for input_token_logprobs "
                  "with logprob_start_len 0)");
    }
    if (const json* pt = get(*mi, "prompt_tokens"); pt && pt->is_number_integer() && pt->get<int64_t>() != int64_t(r.prompt.size()))
      fail(where, "meta_info.prompt_tokens is " + pt->dump() + " but the prompt has " + std::to_string(r.prompt.size()) + " token ids");
    if (const json* ct = get(*mi, "completion_tokens");
        ct && ct->is_number_integer() && ct->get<int64_t>() != int64_t(r.response.size()))
      fail(where, "meta_info.completion_tokens is " + ct->dump() + " but output_ids has " + std::to_string(r.response.size()));
    if (const json* fr = get(*mi, "finish_reason")) {
      const json* type = fr->is_object() ? get(*fr, "type") : fr;
      const std::string t = type && type->is_string() ? type->get<std::string>() : "";
      if (t == "length") r.finish_reason = "length";
      else if (t == "stop") {
        const json* m = fr->is_object() ? get(*fr, "matched") : nullptr;
        r.finish_reason = m && m->is_string() ? "stop" : "eos";
      } else if (t == "abort") fail(where, "the request was aborted (finish_reason abort): its output is incomplete");
      else fail(where, "meta_info.finish_reason " + fr->dump() + " is not stop or length");
    }
    if (const json* re = get(*mi, "routed_experts")) {
      if (!re->is_string()) fail(where, "meta_info.routed_experts must be base64 text (int32 ids)");
      const std::string raw = base64_decode(re->get<std::string>(), where + ": meta_info.routed_experts");
      if (raw.size() % 4) fail(where, "meta_info.routed_experts decodes to " + std::to_string(raw.size()) + " bytes, not whole int32 values");
      r.experts.resize(raw.size() / 4);
      for (size_t i = 0; i < r.experts.size(); ++i) {
        int32_t v;
        std::memcpy(&v, raw.data() + 4 * i, 4);
        r.experts[i] = v;
      }
      r.has_routing = true;  // layers = 0: a flat buffer, shaped by the importer
    }
    if (const json* t = get(o, "text"); t && t->is_string()) r.response_text = t->get<std::string>();
    common_extras(o, where, r);
    sink(r);
  });
}

namespace {

// vLLM's finish: finish_reason "stop" with stop_reason null is the EOS token; a stop string or stop token
// id in stop_reason is "stop".
std::string vllm_finish(const json& c, const std::string& where) {
  const json* fr = get(c, "finish_reason");
  if (!fr) return "";
  if (!fr->is_string()) fail(where, "finish_reason must be a string");
  const std::string f = fr->get<std::string>();
  if (f == "length") return "length";
  if (f == "stop") return get(c, "stop_reason") ? "stop" : "eos";
  if (f == "abort") fail(where, "the request was aborted (finish_reason abort): its output is incomplete");
  fail(where, "finish_reason \"" + f + "\" is not stop or length");
}

}  // namespace

// vLLM: a RequestOutput as JSON ({"prompt_token_ids", "outputs": [CompletionOutput: "token_ids", "text",
// "logprobs": [{"<id>": {"logprob"}}], "routed_experts", "finish_reason", "stop_reason"]}) or an OpenAI-compatible
// completion ({"choices": [{"prompt_token_ids", "token_ids", "text", "logprobs": {"token_logprobs"},
// "routed_experts": base64 .npy}]}).
void read_vllm(const std::string& path, const Sink& sink) {
  uint64_t request = 0;  // a RequestOutput's outputs are the n samples of one prompt: one group
  each_object(path, [&](const json& o, const std::string& where) {
    const json* outputs = get(o, "outputs");
    const json* choices = get(o, "choices");
    if (!outputs && !choices) fail(where, "neither \"outputs\" (RequestOutput) nor \"choices\" (OpenAI completion): not a vLLM output");
    const json& list = outputs ? *outputs : *choices;
    if (!list.is_array()) fail(where, std::string(outputs ? "\"outputs\"" : "\"choices\"") + " must be a list");
    std::vector<int64_t> prompt;
    if (outputs) {
      const json* p = get(o, "prompt_token_ids");
      if (!p) fail(where, "no \"prompt_token_ids\"");
      prompt = token_list(*p, where, "prompt_token_ids");
    }
    for (size_t i = 0; i < list.size(); ++i) {
      const json& c = list[i];
      const std::string w = where + " " + (outputs ? "outputs[" : "choices[") + std::to_string(i) + "]";
      if (!c.is_object()) fail(w, "is not a JSON object");
      EngineRecord r;
      r.where = w;
      if (outputs) {
        r.prompt = prompt;
      } else {
        const json* p = get(c, "prompt_token_ids");
        if (!p) fail(w, "no \"prompt_token_ids\" (ask the server with \"return_token_ids\": true)");
        r.prompt = token_list(*p, w, "prompt_token_ids");
      }
      const json* ids = get(c, "token_ids");
      if (!ids) fail(w, outputs ? "no \"token_ids\"" : "no \"token_ids\" (ask the server with \"return_token_ids\": true)");
      r.response = token_list(*ids, w, "token_ids");
      if (const json* lp = get(c, "logprobs")) {
        std::vector<double> v;
        if (outputs) {
          // SampleLogprobs: one {token_id: Logprob} dict per position; the sampled token is always in it.
          if (!lp->is_array()) fail(w, "logprobs must be a list of {token_id: {logprob, ...}} dicts");
          if (lp->size() != r.response.size())
            fail(w, "logprobs has " + std::to_string(lp->size()) + " positions for " + std::to_string(r.response.size()) + " tokens");
          for (size_t t = 0; t < lp->size(); ++t) {
            const json& d = (*lp)[t];
            const std::string key = std::to_string(r.response[t]);
            const json* e = d.is_object() ? get(d, key.c_str()) : nullptr;
            if (!e) fail(w, "logprobs[" + std::to_string(t) + "] has no entry for the sampled token " + key);
            const json* x = e->is_object() ? get(*e, "logprob") : e;
            v.push_back(x ? logprob_value(*x) : std::numeric_limits<double>::quiet_NaN());
          }
        } else {
          const json* tl = lp->is_object() ? get(*lp, "token_logprobs") : nullptr;
          if (!tl || !tl->is_array()) fail(w, "logprobs.token_logprobs must be a list");
          for (const auto& x : *tl) v.push_back(logprob_value(x));
        }
        r.logprobs = v;
      }
      r.finish_reason = vllm_finish(c, w);
      if (const json* t = get(c, "text"); t && t->is_string()) r.response_text = t->get<std::string>();
      if (!outputs) {
        if (const json* pt = get(o, "prompt"); pt && pt->is_string()) r.prompt_text = pt->get<std::string>();
      } else if (const json* pt = get(o, "prompt"); pt && pt->is_string()) {
        r.prompt_text = pt->get<std::string>();
      }
      if (const json* re = get(c, "routed_experts")) routing_from_json(*re, w, "routed_experts", r);
      if (outputs) r.group = request;
      common_extras(o, where, r);
      common_extras(c, w, r);
      sink(r);
    }
    ++request;
  });
}

// moekit's plain JSON Lines (formats/rollout.md "Importing"): prompt_ids, response_ids, logprobs,
// routed_experts [positions][layers][k] (or base64 .npy), optional id/group/sample/first_pos, texts, task;
// any other key joins the task payload.
void read_jsonl(const std::string& path, const Sink& sink) {
  static const char* kKnown[] = {"prompt_ids", "response_ids", "logprobs", "routed_experts", "routed_probs", "first_pos", "id",
                                 "group", "sample", "finish_reason", "prompt_text", "response_text", "task"};
  each_object(path, [&](const json& o, const std::string& where) {
    EngineRecord r;
    r.where = where;
    const json* p = get(o, "prompt_ids");
    const json* q = get(o, "response_ids");
    if (!p || !q) fail(where, "a record needs \"prompt_ids\" and \"response_ids\"");
    r.prompt = token_list(*p, where, "prompt_ids");
    r.response = token_list(*q, where, "response_ids");
    if (const json* lp = get(o, "logprobs")) {
      if (!lp->is_array()) fail(where, "\"logprobs\" must be a list of numbers");
      std::vector<double> v;
      for (const auto& x : *lp) v.push_back(logprob_value(x));
      r.logprobs = v;
    }
    if (const json* re = get(o, "routed_experts")) routing_from_json(*re, where, "routed_experts", r);
    if (const json* rp = get(o, "routed_probs")) {
      if (!r.has_routing) fail(where, "\"routed_probs\" without \"routed_experts\"");
      std::function<void(const json&)> flat = [&](const json& x) {
        if (x.is_array()) {
          for (const auto& y : x) flat(y);
        } else if (x.is_number()) {
          r.probs.push_back(x.get<float>());
        } else {
          fail(where, "\"routed_probs\" holds " + x.dump() + ", not a number");
        }
      };
      flat(*rp);
    }
    auto get_uint = [&](const char* key) -> std::optional<uint64_t> {
      const json* v = get(o, key);
      if (!v) return std::nullopt;
      if (!v->is_number_unsigned()) fail(where, std::string("\"") + key + "\" must be a non-negative integer");
      return v->get<uint64_t>();
    };
    r.id = get_uint("id");
    r.group = get_uint("group");
    if (auto s = get_uint("sample")) {
      if (*s > UINT32_MAX) fail(where, "\"sample\" is too large");
      r.sample = uint32_t(*s);
    }
    if (auto f = get_uint("first_pos")) r.first_pos = int64_t(*f);
    auto get_str = [&](const char* key, std::string& out) {
      const json* v = get(o, key);
      if (!v) return;
      if (!v->is_string()) fail(where, std::string("\"") + key + "\" must be a string");
      out = v->get<std::string>();
    };
    get_str("finish_reason", r.finish_reason);
    if (!r.finish_reason.empty() && r.finish_reason != "eos" && r.finish_reason != "length" && r.finish_reason != "stop")
      fail(where, "\"finish_reason\" must be eos, length or stop");
    get_str("prompt_text", r.prompt_text);
    get_str("response_text", r.response_text);
    if (const json* t = get(o, "task")) {
      if (!t->is_object()) fail(where, "\"task\" must be a JSON object");
      r.task = *t;
    }
    for (auto it = o.begin(); it != o.end(); ++it) {
      bool known = false;
      for (const char* k : kKnown) known |= it.key() == k;
      if (!known) r.task[it.key()] = it.value();
    }
    sink(r);
  });
}

}  // namespace moe::engine
