#include "moe/tokenizer/stop_strings.h"

#include <algorithm>

#include "moe/io/error.h"

namespace moe::tokenizer {

StopStrings::StopStrings(const Tokenizer& tok, std::vector<std::string> stops) : tok_(&tok), stops_(std::move(stops)) {
  for (const auto& s : stops_) {
    if (s.empty()) throw UsageError("--stop: an empty stop string");
    longest_ = std::max(longest_, s.size());
  }
}

bool StopStrings::hit(const std::vector<int64_t>& ids) const {
  if (stops_.empty() || ids.empty()) return false;
  // The tail of tokens whose text covers the longest stop string (plus a character that a token boundary
  // may split): earlier matches were found at earlier steps. Tokens may have no text (ids without a token),
  // so the tail grows until it is long enough.
  std::string tail;
  for (size_t k = std::min(ids.size(), longest_ + 1);; k = std::min(ids.size(), k * 2)) {
    tail = tok_->decode(std::vector<int64_t>(ids.end() - static_cast<std::ptrdiff_t>(k), ids.end()));
    if (k < ids.size())  // the tail may start inside a character: its U+FFFD is not in the text
      while (tail.compare(0, 3, "\xef\xbf\xbd") == 0) tail.erase(0, 3);
    if (tail.size() >= longest_ + 4 || k == ids.size()) break;
  }
  // A match that ended before the last token would have stopped the generation then.
  for (const auto& s : stops_)
    if (tail.find(s) != std::string::npos) return true;
  return false;
}

std::string StopStrings::cut(const std::string& text) const {
  size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, text.find(s));
  return first == std::string::npos ? text : text.substr(0, first);
}

}  // namespace moe::tokenizer
