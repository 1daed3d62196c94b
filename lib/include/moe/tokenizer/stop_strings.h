// Stop strings of a generation (--stop): found in the decoded text, so a stop string split over several
// tokens (or inside one) is found as soon as its last byte is generated.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "moe/tokenizer/tokenizer.h"

namespace moe::tokenizer {

class StopStrings {
 public:
  StopStrings(const Tokenizer& tok, std::vector<std::string> stops);  // empty strings are a moe::UsageError
  bool empty() const { return stops_.empty(); }
  // True if the text of the last tokens of `ids` contains a stop string (called after every token, so the
  // first hit is the one the last token completed).
  bool hit(const std::vector<int64_t>& ids) const;
  // `text` up to (without) the first stop string in it; the whole text when there is none.
  std::string cut(const std::string& text) const;

 private:
  const Tokenizer* tok_;
  std::vector<std::string> stops_;
  size_t longest_ = 0;
};

}  // namespace moe::tokenizer
