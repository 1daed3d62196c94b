// JSON Lines input: one JSON object per line, blank lines skipped, errors naming file and line.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "moe/io/file.h"
#include "moe/io/limits.h"

namespace moe::io {

// Reads objects from a file or "-". Throws moe::Error "<file>:<line>: malformed JSON at byte B (offset O):
// <reason>, near \"<a few dozen bytes, escaped>\"" (B in the line, O in the file), "<file>:<line>: expected a
// JSON object", "<file>:<line>: JSON nested deeper than 64 levels ..." (the limits of moe/io/limits.h), or
// "<file>: offset O: line N is longer than ..." for a line beyond kMaxRecordBytes.
class JsonlReader {
 public:
  explicit JsonlReader(const std::string& path) : in_(path) {}
  // The next object; false at end of input.
  bool next(nlohmann::json& obj);
  int64_t lineno() const { return lineno_; }  // line of the object last returned
  std::string where() const;                  // "<file>:<line>: ", for messages about that object
  const std::string& name() const { return in_.name(); }

 private:
  Input in_;
  std::string line_;
  int64_t lineno_ = 0;
  uint64_t line_offset_ = 0;
};

// One line of JSON Lines text: false for a blank line, else true with the object in `obj` (errors as
// above, with `where` as their prefix; `line_offset` is the line's byte offset in its file).
bool parse_jsonl_line(const std::string& line, const std::string& where, nlohmann::json& obj, uint64_t line_offset = 0);

// What parse_json counts beyond the depth: keys in one object and values in the whole text. The depth
// limit (kMaxDepth) is the same for every text.
struct JsonLimits {
  size_t max_keys = kMaxMapKeys;
  size_t max_items = kMaxItems;
};
// A record (a JSON Lines line, a payload): every limit of moe/io/limits.h.
inline constexpr JsonLimits kJsonRecord{};
// A whole file a tool reads (config.json, trainer_state.json, tokenizer.json, a safetensors index): the
// depth limit only. Such a file legitimately holds more keys than a record (a 150 k-token vocabulary),
// and its memory is bounded by its size, which the user chose.
inline constexpr JsonLimits kJsonDocument{SIZE_MAX, SIZE_MAX};

// Parses JSON text under the limits of moe/io/limits.h (depth, keys per object, values), checked while
// parsing, so a hostile text never builds a value too deep to copy or print. Errors as above, prefixed
// with `where`; offsets are `base_offset` + the byte in `text`.
nlohmann::json parse_json(std::string_view text, const std::string& where, uint64_t base_offset = 0,
                          const JsonLimits& limits = kJsonRecord);
// The same, keeping the keys of each object in the order of the text.
nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& where, uint64_t base_offset = 0,
                                          const JsonLimits& limits = kJsonRecord);

// Reads and parses a whole JSON file (limits kJsonDocument). Errors name it: "<path>: JSON nested deeper
// than 64 levels ...", "<path>: malformed JSON at byte B (offset B): <reason>, near \"...\"", or the
// error of io::read_file.
nlohmann::json read_json_file(const std::string& path);

// Containers nested in `j`, the outermost counted as 1 (0 for a scalar); stops counting past kMaxDepth + 1.
int json_depth(const nlohmann::json& j);

// At most `max_bytes` of text around byte `at`, non-printable and non-ASCII bytes escaped as \xNN: what an
// error message may echo of a hostile input.
std::string excerpt(std::string_view text, size_t at, size_t max_bytes);

}  // namespace moe::io
