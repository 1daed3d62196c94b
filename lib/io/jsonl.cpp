#include "moe/io/jsonl.h"

#include <algorithm>
#include <cstdio>
#include <vector>

#include "moe/io/error.h"
#include "moe/io/limits.h"

namespace moe::io {
namespace {

// Thrown by the parse callback when a limit is crossed (kept apart from nlohmann's own errors).
struct LimitExceeded {
  std::string what;
};

// nlohmann's message without its "[json.exception...] parse error at line 1, column N: " prefix and its
// "; last read: '...'" echo (which can be megabytes, or invalid UTF-8, of the input).
std::string parse_reason(const std::string& msg) {
  std::string r = msg;
  auto col = r.find(", column ");
  if (col != std::string::npos) {
    auto colon = r.find(": ", col);
    if (colon != std::string::npos) r = r.substr(colon + 2);
  }
  auto last = r.find("; last read:");
  if (last != std::string::npos) r = r.substr(0, last);
  return r;
}

}  // namespace

std::string excerpt(std::string_view text, size_t at, size_t max_bytes) {
  size_t from = at > max_bytes / 2 ? at - max_bytes / 2 : 0;
  size_t to = std::min(text.size(), from + max_bytes);
  std::string out;
  if (from > 0) out += "...";
  for (size_t i = from; i < to; ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    }
  }
  if (to < text.size()) out += "...";
  return out;
}

namespace {

template <class Json>
Json parse_json_as(std::string_view text, const std::string& where, uint64_t base_offset, const JsonLimits& limits) {
  using json = Json;
  std::vector<size_t> keys;  // keys seen in the object open at each depth
  size_t items = 0;
  auto cb = [&](int depth, typename json::parse_event_t ev, json&) {
    switch (ev) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        // `depth` counts the containers already open: this one is at level depth + 1.
        if (depth + 1 > kMaxDepth)
          throw LimitExceeded{"nested deeper than " + std::to_string(kMaxDepth) + " levels (the limit of every moekit reader)"};
        if (++items > limits.max_items) throw LimitExceeded{"more than " + std::to_string(limits.max_items) + " values"};
        if (ev == json::parse_event_t::object_start) {
          if (keys.size() < static_cast<size_t>(depth) + 2) keys.resize(depth + 2);
          keys[depth + 1] = 0;
        }
        break;
      case json::parse_event_t::key:
        if (static_cast<size_t>(depth) < keys.size() && ++keys[depth] > limits.max_keys)
          throw LimitExceeded{"an object with more than " + std::to_string(limits.max_keys) + " keys"};
        break;
      case json::parse_event_t::value:
        if (++items > limits.max_items) throw LimitExceeded{"more than " + std::to_string(limits.max_items) + " values"};
        break;
      default: break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), cb);
  } catch (const LimitExceeded& e) {
    throw Error(where + "JSON " + e.what);
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte is 1-based: the byte where the parser stopped.
    const size_t at = e.byte > 0 ? e.byte - 1 : 0;
    throw Error(where + "malformed JSON at byte " + std::to_string(at) + " (offset " + std::to_string(base_offset + at) +
                "): " + parse_reason(e.what()) + ", near \"" + excerpt(text, at, 32) + "\"");
  } catch (const nlohmann::json::exception& e) {
    // E.g. out_of_range 406: a number beyond double ("1E400"), found while parsing, without a position.
    throw Error(where + "malformed JSON: " + parse_reason(e.what()));
  }
}

}  // namespace

nlohmann::json parse_json(std::string_view text, const std::string& where, uint64_t base_offset, const JsonLimits& limits) {
  return parse_json_as<nlohmann::json>(text, where, base_offset, limits);
}

nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& where, uint64_t base_offset,
                                          const JsonLimits& limits) {
  return parse_json_as<nlohmann::ordered_json>(text, where, base_offset, limits);
}

nlohmann::json read_json_file(const std::string& path) {
  const std::string text = read_file(path);
  return parse_json(text, path + ": ", 0, kJsonDocument);
}

namespace {
// Recursion is bounded: nothing below level kMaxDepth + 1 is visited.
int depth_at(const nlohmann::json& v, int level) {
  if (!v.is_structured()) return level - 1;
  if (level > kMaxDepth) return level;
  int d = level;
  for (const auto& c : v) d = std::max(d, depth_at(c, level + 1));
  return d;
}
}  // namespace

int json_depth(const nlohmann::json& j) { return depth_at(j, 1); }

bool parse_jsonl_line(const std::string& line, const std::string& where, nlohmann::json& obj, uint64_t line_offset) {
  if (line.find_first_not_of(" \t\r") == std::string::npos) return false;
  obj = parse_json(line, where, line_offset);
  if (!obj.is_object()) throw Error(where + "expected a JSON object");
  return true;
}

bool JsonlReader::next(nlohmann::json& obj) {
  for (;;) {
    line_offset_ = in_.offset();
    if (!in_.getline(line_, kMaxRecordBytes)) return false;
    ++lineno_;
    if (parse_jsonl_line(line_, where(), obj, line_offset_)) return true;
  }
}

std::string JsonlReader::where() const { return in_.name() + ":" + std::to_string(lineno_) + ": "; }

}  // namespace moe::io
