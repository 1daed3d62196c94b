// JSON Lines input: one JSON object per line, blank lines skipped, errors naming file and line.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "moe/io/file.h"

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

// Parses JSON text under the limits of moe/io/limits.h (depth, keys per object, values), checked while
// parsing, so a hostile text never builds a value too deep to copy or print. Errors as above, prefixed
// with `where`; offsets are `base_offset` + the byte in `text`.
nlohmann::json parse_json(std::string_view text, const std::string& where, uint64_t base_offset = 0);

// Containers nested in `j`, the outermost counted as 1 (0 for a scalar); stops counting past kMaxDepth + 1.
int json_depth(const nlohmann::json& j);

// At most `max_bytes` of text around byte `at`, non-printable and non-ASCII bytes escaped as \xNN: what an
// error message may echo of a hostile input.
std::string excerpt(std::string_view text, size_t at, size_t max_bytes);

}  // namespace moe::io
