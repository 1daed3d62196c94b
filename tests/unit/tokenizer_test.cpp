#include <catch2/catch.hpp>

#include "moe/io/error.h"
#include "moe/tokenizer/char_tokenizer.h"

using moe::tokenizer::CharTokenizer;

TEST_CASE("default char vocabulary covers the Countdown format", "[tokenizer]") {
  CharTokenizer t = CharTokenizer::default_vocab();
  CHECK(t.size() == 98);
  CHECK(t.pad_id() == 0);
  CHECK(t.eos_id() == 1);
  std::string s = "3 7 12=33|(7 + 12) + 3*1-2/2\n";
  auto ids = t.encode(s);
  REQUIRE(ids.size() == s.size());
  CHECK(ids.back() == 2);          // "\n"
  CHECK(ids[0] == 3 + ('3' - 32)); // printable ASCII follow the three first tokens
  CHECK(t.decode(ids) == s);
  ids.push_back(t.eos_id());
  CHECK(t.decode(ids) == s + "<eos>");
  CHECK(t.decode(ids, true) == s);
}

TEST_CASE("encode names an unknown character and its position", "[tokenizer]") {
  CharTokenizer t = CharTokenizer::default_vocab();
  CHECK_THROWS_WITH(t.encode("1+2\t3"), Catch::Contains("byte 0x09") && Catch::Contains("position 3"));
  CHECK_THROWS_WITH(t.encode("\xc3\xa9"), Catch::Contains("position 0"));
  CHECK_THROWS_AS(t.decode({98}), moe::Error);
  CHECK_THROWS_AS(t.decode({-1}), moe::Error);
}

TEST_CASE("tokenizer.json round trip and bad files", "[tokenizer]") {
  CharTokenizer t = CharTokenizer::default_vocab();
  std::string js = t.to_json();
  CharTokenizer u = CharTokenizer::from_json(js);
  CHECK(u.tokens() == t.tokens());
  CHECK(u.to_json() == js);
  CHECK(u.bos_id() == -1);

  CHECK_THROWS_WITH(CharTokenizer::from_json("{"), Catch::Contains("not valid JSON"));
  CHECK_THROWS_WITH(CharTokenizer::from_json(R"({"model": {"type": "BPE"}})"), Catch::Contains("Hugging Face"));
  CHECK_THROWS_WITH(CharTokenizer::from_json(R"({"type": "char", "version": 2, "tokens": []})"), Catch::Contains("version"));
  CHECK_THROWS_WITH(CharTokenizer::from_json(R"({"type": "char", "tokens": ["<pad>", "<eos>", "a", "a"], "pad_id": 0, "eos_id": 1})"),
                    Catch::Contains("duplicate"));
  CHECK_THROWS_WITH(CharTokenizer::from_json(R"({"type": "char", "tokens": ["<pad>", "<eos>", "ab"], "pad_id": 0, "eos_id": 1})"),
                    Catch::Contains("not one character"));
  CHECK_THROWS_WITH(CharTokenizer::from_json(R"({"type": "char", "tokens": ["<pad>", "a"], "pad_id": 0, "eos_id": 5})"),
                    Catch::Contains("outside"));
  CHECK_THROWS_WITH(CharTokenizer::from_json(R"({"type": "char", "tokens": ["<pad>", "a"], "pad_id": 0})"),
                    Catch::Contains("eos_id"));
}
