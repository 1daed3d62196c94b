// Pre-tokenizers of tokenizer.json: Sequence, Split (Regex or String pattern; Isolated or Removed; invert)
// and ByteLevel (add_prefix_space; use_regex splits with GPT-2's pattern). The byte-to-character mapping
// of ByteLevel is not done here: the BPE model works on raw bytes (bpe.cpp).
#include "moe/io/error.h"
#include "parts.h"

namespace moe::tokenizer::parts {
namespace {

using nlohmann::json;

// GPT-2's pattern, which ByteLevel uses when use_regex is true (HF tokenizers byte_level.rs).
const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string quote_meta(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}-/#").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

// Splits every piece at the regex matches: Isolated keeps matches and gaps as pieces, Removed keeps the
// gaps only; invert swaps the roles of matches and gaps.
void split_pieces(Pieces& p, const Regex& re, bool removed, bool invert) {
  std::vector<std::pair<size_t, size_t>> out, m;
  out.reserve(p.ranges.size() * 2);
  for (auto [a, b] : p.ranges) {
    m.clear();
    re.matches(std::string_view(p.buf).substr(a, b - a), a, m);
    size_t prev = a;
    auto keep = [&](size_t x, size_t y, bool is_match) {
      if (x == y) return;
      if (removed && is_match != invert) return;
      out.emplace_back(x, y);
    };
    for (auto [x, y] : m) {
      keep(prev, x, false);
      keep(x, y, true);
      prev = y;
    }
    keep(prev, b, false);
  }
  p.ranges.swap(out);
}

class Sequence : public PreTokenizer {
 public:
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  void apply(Pieces& p) const override {
    for (const auto& s : steps) s->apply(p);
  }
};

class Split : public PreTokenizer {
 public:
  Split(const std::string& pattern, bool removed, bool invert, const std::string& origin)
      : re_(pattern, origin), removed_(removed), invert_(invert) {}
  void apply(Pieces& p) const override { split_pieces(p, re_, removed_, invert_); }

 private:
  Regex re_;
  bool removed_, invert_;
};

class ByteLevel : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, bool use_regex, const std::string& origin) : add_prefix_space_(add_prefix_space) {
    if (use_regex) re_ = std::make_unique<Regex>(kGpt2Pattern, origin);
  }
  void apply(Pieces& p) const override {
    if (add_prefix_space_) {
      // Every piece gets a leading space unless it has one (HF applies it per piece, not per text).
      std::string buf;
      std::vector<std::pair<size_t, size_t>> ranges;
      for (auto [a, b] : p.ranges) {
        size_t start = buf.size();
        if (p.buf[a] != ' ') buf += ' ';
        buf.append(p.buf, a, b - a);
        ranges.emplace_back(start, buf.size());
      }
      p.buf.swap(buf);
      p.ranges.swap(ranges);
    }
    if (re_) split_pieces(p, *re_, false, false);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> re_;
};

bool flag(const json& j, const char* key, bool dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  return j[key].get<bool>();
}

}  // namespace

std::unique_ptr<PreTokenizer> PreTokenizer::from_json(const json& j, const std::string& origin, bool& byte_level) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw Error(origin + ": pre_tokenizer " + j.dump() + " has no \"type\"");
  const std::string type = j["type"];
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
      throw Error(origin + ": pre_tokenizer Sequence without a \"pretokenizers\" list");
    auto s = std::make_unique<Sequence>();
    for (const auto& x : j["pretokenizers"]) s->steps.push_back(from_json(x, origin, byte_level));
    return s;
  }
  if (type == "Split") {
    const json& pat = j.value("pattern", json());
    std::string pattern;
    if (pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string())
      pattern = pat["Regex"];
    else if (pat.is_object() && pat.contains("String") && pat["String"].is_string())
      pattern = quote_meta(pat["String"]);
    else
      throw Error(origin + ": pre_tokenizer Split: \"pattern\" must be {\"Regex\": ...} or {\"String\": ...}");
    const std::string behavior = j.value("behavior", std::string());
    if (behavior != "Isolated" && behavior != "Removed")
      throw Error(origin + ": pre_tokenizer Split: behavior \"" + behavior + "\" is not supported (Isolated or Removed)");
    return std::make_unique<Split>(pattern, behavior == "Removed", flag(j, "invert", false), origin);
  }
  if (type == "ByteLevel") {
    byte_level = true;
    return std::make_unique<ByteLevel>(flag(j, "add_prefix_space", true), flag(j, "use_regex", true), origin);
  }
  throw Error(origin + ": pre_tokenizer \"" + type + "\" is not supported (Sequence, Split, ByteLevel)");
}

}  // namespace moe::tokenizer::parts
