#include "moe/io/jsonl.h"

#include "moe/io/error.h"

namespace moe::io {

bool parse_jsonl_line(const std::string& line, const std::string& where, nlohmann::json& obj) {
  if (line.find_first_not_of(" \t\r") == std::string::npos) return false;
  try {
    obj = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(where + "malformed JSON (" + e.what() + ")");
  }
  if (!obj.is_object()) throw Error(where + "expected a JSON object");
  return true;
}

bool JsonlReader::next(nlohmann::json& obj) {
  while (in_.getline(line_)) {
    ++lineno_;
    if (parse_jsonl_line(line_, where(), obj)) return true;
  }
  return false;
}

std::string JsonlReader::where() const { return in_.name() + ":" + std::to_string(lineno_) + ": "; }

}  // namespace moe::io
