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

  CHECK_THROWS_WITH(CharTokenizer::from_json("{"), Catch::Contains("malformed JSON at byte"));
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

// ---- Hugging Face byte-level BPE: ids and text against HF tokenizers (tests/fixtures/tokenizer, written by
// make_tokenizer_fixtures.py).
#include <zstd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/io/file.h"
#include "moe/tokenizer/hf_tokenizer.h"
#include "moe/tokenizer/tokenizer.h"

namespace {

using moe::tokenizer::HfTokenizer;
using moe::tokenizer::Tokenizer;
const std::string kFix = std::string(MOEKIT_TEST_FIXTURES) + "/tokenizer/";

std::string unzstd(const std::string& path) {
  const std::string z = moe::io::read_file(path);
  std::string out;
  ZSTD_DStream* d = ZSTD_createDStream();
  ZSTD_inBuffer in{z.data(), z.size(), 0};
  std::string buf(1 << 20, '\0');
  while (in.pos < in.size) {
    ZSTD_outBuffer o{buf.data(), buf.size(), 0};
    size_t r = ZSTD_decompressStream(d, &o, &in);
    REQUIRE(!ZSTD_isError(r));
    out.append(buf.data(), o.pos);
  }
  ZSTD_freeDStream(d);
  return out;
}

const HfTokenizer& qwen3() {
  static HfTokenizer t = HfTokenizer::from_json(unzstd(kFix + "qwen3/tokenizer.json.zst"), "qwen3/tokenizer.json");
  return t;
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  REQUIRE(f.good());
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

// Every corpus line: the same ids as HF, the same decoded text as HF, and (Qwen) decode(encode(x)) == NFC(x).
void check_corpus(const HfTokenizer& t, const std::string& expected, bool roundtrip_nfc) {
  auto corpus = read_jsonl(kFix + "corpus.jsonl");
  auto want = read_jsonl(kFix + expected);
  REQUIRE(corpus.size() == want.size());
  size_t same_ids = 0, same_text = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::string text = corpus[i]["text"];
    auto ids = t.encode(text);
    std::vector<int64_t> hf = want[i]["ids"];
    INFO("corpus line " << i + 1 << ": " << nlohmann::json(text).dump().substr(0, 120));
    CHECK(ids == hf);
    const std::string back = t.decode(ids);
    CHECK(back == want[i]["decoded"].get<std::string>());
    if (roundtrip_nfc) CHECK(back == want[i]["nfc"].get<std::string>());
    same_ids += ids == hf;
    same_text += back == want[i]["decoded"].get<std::string>();
  }
  CHECK(same_ids == corpus.size());
  CHECK(same_text == corpus.size());
}

}  // namespace

TEST_CASE("Qwen3 tokenizer.json: the ids of HF tokenizers on the hostile corpus", "[tokenizer][hf]") {
  const HfTokenizer& t = qwen3();
  CHECK(t.encode("Hello world") == std::vector<int64_t>{9707, 1879});
  CHECK(t.size() == 151669);
  CHECK(t.token_to_id("<|im_end|>") == 151645);
  CHECK(t.token_to_id("</think>") == 151668);
  check_corpus(t, "expected-qwen3.jsonl", true);
}

TEST_CASE("GPT-2-style tokenizer.json: ids, lstrip/rstrip/normalized/single_word added tokens, merges spelled a-space-b", "[tokenizer][hf]") {
  HfTokenizer t = HfTokenizer::from_json(moe::io::read_file(kFix + "gpt2/tokenizer.json"), "gpt2/tokenizer.json");
  check_corpus(t, "expected-gpt2.jsonl", false);
}

TEST_CASE("HF tokenizer: invalid UTF-8 is an error naming the offset, and ids without a token decode to nothing", "[tokenizer][hf]") {
  const HfTokenizer& t = qwen3();
  CHECK_THROWS_WITH(t.encode("ok \xff rest"), Catch::Contains("invalid UTF-8 at byte offset 3"));
  CHECK_THROWS_WITH(t.encode("ab\xe4\xb8"), Catch::Contains("byte offset 2"));          // truncated character
  CHECK_THROWS_WITH(t.encode("\xed\xa0\x80"), Catch::Contains("byte offset 0"));        // a surrogate
  CHECK_THROWS_WITH(t.encode("\xc0\xaf"), Catch::Contains("byte offset 0"));            // overlong
  CHECK(t.decode({9707, 151700, 151935, 1879}) == "Hello world");
  CHECK(t.decode({151645}) == "<|im_end|>");
  CHECK(t.decode({151645}, true).empty());
  // A character split across tokens repairs to U+FFFD only when a part is missing.
  auto ids = t.encode("\xe4\xbd\xa0\xe5\xa5\xbd");  // 你好
  CHECK(t.decode(ids) == "\xe4\xbd\xa0\xe5\xa5\xbd");
  auto split = t.encode("\xf0\x93\x80\x80");  // U+13000, an Egyptian hieroglyph: byte tokens
  REQUIRE(split.size() > 1);
  CHECK(t.token_bytes(split[0]).size() < 4);
  CHECK(t.decode({split[0]}) == "\xef\xbf\xbd");  // alone, a part of a character is U+FFFD (as HF)
  CHECK(t.decode(split) == "\xf0\x93\x80\x80");
}

TEST_CASE("HF tokenizer.json parts it does not implement are errors naming them", "[tokenizer][hf]") {
  auto base = nlohmann::json::parse(moe::io::read_file(kFix + "gpt2/tokenizer.json"));
  auto with = [&](const char* key, nlohmann::json v) {
    auto j = base;
    j[key] = v;
    return j.dump();
  };
  CHECK_THROWS_WITH(HfTokenizer::from_json(with("normalizer", {{"type", "Lowercase"}}), "t.json"),
                    Catch::Contains("t.json") && Catch::Contains("\"Lowercase\" is not supported"));
  CHECK_THROWS_WITH(HfTokenizer::from_json(with("pre_tokenizer", {{"type", "Whitespace"}}), "t.json"),
                    Catch::Contains("pre_tokenizer \"Whitespace\" is not supported"));
  CHECK_THROWS_WITH(HfTokenizer::from_json(with("pre_tokenizer", nullptr), "t.json"), Catch::Contains("only byte-level BPE"));
  CHECK_THROWS_WITH(HfTokenizer::from_json(with("decoder", {{"type", "Metaspace"}}), "t.json"), Catch::Contains("decoder Metaspace"));
  auto m = base;
  m["model"]["type"] = "WordPiece";
  CHECK_THROWS_WITH(HfTokenizer::from_json(m.dump(), "t.json"), Catch::Contains("\"WordPiece\" is not supported"));
  m = base;
  m["model"]["merges"].push_back("zzq qqz");
  CHECK_THROWS_WITH(HfTokenizer::from_json(m.dump(), "t.json"), Catch::Contains("is not in the vocab"));
  m = base;
  m["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}},
                                                                 {{"type", "ByteLevel"}}}}};
  CHECK_THROWS_WITH(HfTokenizer::from_json(m.dump(), "t.json"), Catch::Contains("regex") && Catch::Contains("t.json"));
  CHECK_THROWS_WITH(HfTokenizer::from_json("{\"model\": ", "t.json"), Catch::Contains("t.json: malformed JSON"));
}

#include "moe/tokenizer/chat.h"

TEST_CASE("ChatML rendering: the text and ids of transformers' apply_chat_template with Qwen3's template", "[tokenizer][chat]") {
  const std::string tmpl = moe::io::read_file(kFix + "qwen3_chat_template.jinja");
  const HfTokenizer& t = qwen3();
  auto rows = read_jsonl(kFix + "chat-qwen3.jsonl");
  REQUIRE(rows.size() >= 10);
  for (const auto& r : rows) {
    std::vector<moe::tokenizer::ChatMessage> msgs;
    for (const auto& m : r["messages"]) msgs.push_back({m["role"], m["content"]});
    const std::string text = moe::tokenizer::render_chat(msgs, tmpl, r["enable_thinking"]);
    INFO(r["messages"].dump());
    CHECK(text == r["text"].get<std::string>());
    CHECK(t.encode(text, false) == r["ids"].get<std::vector<int64_t>>());
  }
}

TEST_CASE("ChatML rendering refuses what it cannot render", "[tokenizer][chat]") {
  using moe::tokenizer::render_chat;
  std::vector<moe::tokenizer::ChatMessage> hi{{"user", "hi"}};
  const std::string llama3 = "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}";
  CHECK_THROWS_WITH(render_chat(hi, llama3, true), Catch::Contains("not ChatML") && Catch::Contains("prompt_ids"));
  CHECK_THROWS_WITH(render_chat(hi, "", true), Catch::Contains("no chat template"));
  const std::string plain = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}"
                            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  CHECK(render_chat(hi, plain, true) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  CHECK_THROWS_WITH(render_chat(hi, plain, false), Catch::Contains("no enable_thinking switch"));
  CHECK_THROWS_WITH(render_chat({{"tool", "x"}}, plain, true), Catch::Contains("role \"tool\""));
  CHECK_THROWS_WITH(render_chat({}, plain, true), Catch::Contains("no messages"));
  // Qwen2.5 writes its default system message when none is given.
  const std::string qwen25 = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
                             "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
                             "{%- endif %}";
  CHECK(render_chat(hi, qwen25, true) ==
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}
