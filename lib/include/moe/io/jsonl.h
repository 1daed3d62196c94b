// JSON Lines input: one JSON object per line, blank lines skipped, errors naming file and line.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "moe/io/file.h"

namespace moe::io {

// Reads objects from a file or "-". Throws moe::Error "<file>:<line>: malformed JSON (...)" or
// "<file>:<line>: expected a JSON object".
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
};

// One line of JSON Lines text: false for a blank line, else true with the object in `obj` (errors as
// above, with `where` as their prefix).
bool parse_jsonl_line(const std::string& line, const std::string& where, nlohmann::json& obj);

}  // namespace moe::io
