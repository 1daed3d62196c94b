// lib/engine: the strict .npy reader (against files numpy wrote), base64, the engine-layer -> MoE-layer
// mapping, and the importer's checks on each kind of mismatch.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "moe/engine/import.h"
#include "moe/engine/npy.h"
#include "moe/format/rollout.h"
#include "moe/format/routing.h"
#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/model/config.h"
#include "scratch.h"

using namespace moe::engine;
using nlohmann::json;

namespace {

const std::string kData = std::string(MOEKIT_TEST_DATA) + "/engines";

moe::model::ModelConfig fixture_model() { return moe::model::load_config(kData + "/config.json"); }

std::string scratch(const std::string& name) {
  static const std::string dir = moe::testing::make_scratch_dir("moekit-engine");
  return dir + "/" + name;
}

// One well-formed record for fixture_model(): prompt 3 tokens, response 2, routing [4, 4 layers, 2] on the
// all-layer axis with dense layer 0 left at zeros (as SGLang and vLLM leave it).
EngineRecord good_record() {
  EngineRecord r;
  r.where = "test:1";
  r.prompt = {10, 11, 12};
  r.response = {13, 1};
  r.logprobs = std::vector<double>{-0.5, -1.0};
  r.has_routing = true;
  r.rows = 4;
  r.layers = 4;
  r.k = 2;
  r.experts.assign(4 * 4 * 2, 0);
  for (int t = 0; t < 4; ++t)
    for (int l = 1; l < 4; ++l) {
      r.experts[(t * 4 + l) * 2] = (t + l) % 8;
      r.experts[(t * 4 + l) * 2 + 1] = (t + l + 3) % 8;
    }
  return r;
}

// Imports `recs` and returns the error message ("" when it worked).
std::string import_error(std::vector<EngineRecord> recs, ImportOptions o = {}) {
  if (o.temperature == 0) o.temperature = 1.0;
  o.from = "test";
  moe::io::Output out(scratch("r.zst")), rout(scratch("x.zst"));
  try {
    Importer imp(fixture_model(), o, out, &rout);
    for (auto& r : recs) imp.add(r);
    imp.finish();
    rout.close();
    out.close();
  } catch (const moe::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("npy: the reader gives what numpy saved, dtype, shape and values", "[engine][npy]") {
  std::ifstream f(kData + "/npy/expected.json");
  json expect = json::parse(f);
  REQUIRE(expect.size() == 8);
  for (auto it = expect.begin(); it != expect.end(); ++it) {
    INFO(it.key());
    NpyFile n;
    read_npy_file(kData + "/npy/" + it.key() + ".npy", n);
    const json& e = it.value();
    std::string dtype = e["dtype"].get<std::string>() == "bool" ? "uint8" : e["dtype"].get<std::string>();
    CHECK(n.arr.dtype_name() == dtype);
    CHECK(n.arr.shape == e["shape"].get<std::vector<int64_t>>());
    const auto values = e["values"].get<std::vector<double>>();
    REQUIRE(n.arr.numel() == values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      if (n.arr.kind == 'f') CHECK(n.arr.float_at(i) == Approx(values[i]).margin(1e-12));
      else CHECK(double(n.arr.int_at(i)) == values[i]);
    }
  }
}

TEST_CASE("npy: fortran order, big-endian, object arrays and wrong lengths are errors naming the file", "[engine][npy]") {
  const std::pair<const char*, const char*> cases[] = {{"bad_fortran", "fortran_order True"},
                                                      {"bad_bigendian", "'>i4' is not a little-endian"},
                                                      {"bad_object", "'|O' is not a little-endian"},
                                                      {"bad_truncated", "data is 92 bytes, dtype <i4 x shape needs 96"},
                                                      {"bad_trailing", "data is 100 bytes, dtype <i4 x shape needs 96"}};
  for (const auto& [name, msg] : cases) {
    INFO(name);
    NpyFile n;
    try {
      read_npy_file(kData + "/npy/" + name + ".npy", n);
      FAIL("accepted");
    } catch (const moe::Error& e) {
      CHECK_THAT(e.what(), Catch::Contains(std::string(name) + ".npy: npy:") && Catch::Contains(msg));
    }
  }
  std::string junk = "not an array at all";
  CHECK_THROWS_WITH(parse_npy(reinterpret_cast<const uint8_t*>(junk.data()), junk.size(), "x"), Catch::Contains("no \\x93NUMPY magic"));
}

TEST_CASE("npy: write_npy gives bytes numpy reads back (checked through our reader on numpy's own layout)", "[engine][npy]") {
  // numpy's header for int32 (2, 3, 4) is exactly this dict, padded to 64 bytes: compare with the file numpy wrote.
  NpyFile ref;
  read_npy_file(kData + "/npy/int32_3d.npy", ref);
  std::string ours = write_npy("<i4", {2, 3, 4}, ref.arr.data, ref.arr.numel() * 4);
  CHECK(ours == ref.bytes);
  NpyFile ref1;
  read_npy_file(kData + "/npy/int16_1d.npy", ref1);
  CHECK(write_npy("<i2", {3}, ref1.arr.data, 6) == ref1.bytes);
}

TEST_CASE("base64: RFC 4648 test vectors both ways, bad text rejected", "[engine]") {
  const std::pair<const char*, const char*> v[] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},        {"foo", "Zm9v"},
                                                  {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, enc] : v) {
    CHECK(base64_encode(plain, std::strlen(plain)) == enc);
    CHECK(base64_decode(enc, "t") == plain);
  }
  CHECK(base64_decode("Zm9vYg", "t") == "foob");  // padding optional
  CHECK_THROWS_WITH(base64_decode("Zm9v!g==", "field"), Catch::Contains("field: base64 text holds a character"));
  CHECK_THROWS_WITH(base64_decode("Zm9vY", "field"), Catch::Contains("bad length"));
}

TEST_CASE("layer mapping: engine rows of each MoE layer, dense layers excluded", "[engine][layers]") {
  moe::model::ModelConfig mc = fixture_model();  // 4 layers, layer 0 dense
  REQUIRE(mc.moe_layer_ids() == std::vector<int>{1, 2, 3});
  CHECK(engine_rows_of_moe_layers(mc, 4, LayerAxis::all) == std::vector<int>{1, 2, 3});
  CHECK(engine_rows_of_moe_layers(mc, 3, LayerAxis::moe) == std::vector<int>{0, 1, 2});
  CHECK(engine_rows_of_moe_layers(mc, 4, LayerAxis::detect) == std::vector<int>{1, 2, 3});
  CHECK(engine_rows_of_moe_layers(mc, 3, LayerAxis::detect) == std::vector<int>{0, 1, 2});
  CHECK_THROWS_WITH(engine_rows_of_moe_layers(mc, 5, LayerAxis::detect),
                    Catch::Contains("routing has 5 layers: the model has 4 layers, 3 of them MoE (1,2,3)"));
  CHECK_THROWS_WITH(engine_rows_of_moe_layers(mc, 3, LayerAxis::all), Catch::Contains("--engine-layers all needs one per model layer"));
  CHECK_THROWS_WITH(engine_rows_of_moe_layers(mc, 4, LayerAxis::moe), Catch::Contains("--engine-layers moe needs one per MoE layer"));
  // decoder_sparse_step 2: layers 1 and 3 are MoE.
  mc.mlp_only_layers.clear();
  mc.decoder_sparse_step = 2;
  CHECK(engine_rows_of_moe_layers(mc, 4, LayerAxis::detect) == std::vector<int>{1, 3});
  CHECK(engine_rows_of_moe_layers(mc, 2, LayerAxis::detect) == std::vector<int>{0, 1});
  // Every layer MoE: both axes coincide, the identity.
  mc.decoder_sparse_step = 1;
  CHECK(engine_rows_of_moe_layers(mc, 4, LayerAxis::detect) == std::vector<int>{0, 1, 2, 3});
}

TEST_CASE("importer: a good record lands with the MoE layers' experts at positions 0..T-2", "[engine][import]") {
  ImportOptions o;
  o.temperature = 0.7;
  o.from = "test";
  {
    moe::io::Output out(scratch("g.zst")), rout(scratch("gx.zst"));
    Importer imp(fixture_model(), o, out, &rout);
    EngineRecord r = good_record();
    imp.add(r);
    EngineRecord r2 = good_record();  // same prompt: same group, sample 1
    imp.add(r2);
    imp.finish();
    rout.close();
    out.close();
  }
  moe::io::Input in(scratch("g.zst")), rin(scratch("gx.zst"));
  moe::format::RolloutReader rr(in);
  CHECK(rr.header().meta["temperature"] == 0.7);
  moe::format::RolloutRecord rec;
  REQUIRE(rr.next(rec));
  CHECK(rec.id == 0);
  CHECK(rec.logprobs == std::vector<float>{-0.5f, -1.0f});
  REQUIRE(rr.next(rec));
  CHECK(rec.id == 1);
  CHECK(rec.group == 0);
  CHECK(rec.sample == 1);
  moe::format::RoutingReader rt(rin);
  CHECK(rt.meta().layer_ids == std::vector<int>{1, 2, 3});
  moe::format::RoutingRecord x;
  REQUIRE(rt.next(x));
  CHECK(x.first_pos == 0);
  CHECK(x.n_pos == 4);
  EngineRecord g = good_record();
  for (int t = 0; t < 4; ++t)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 2; ++k) CHECK(x.experts[(t * 3 + j) * 2 + k] == g.experts[(t * 4 + j + 1) * 2 + k]);
}

TEST_CASE("importer: every mismatch is an error naming the record", "[engine][import]") {
  CHECK(import_error({good_record()}) == "");
  {
    EngineRecord r = good_record();
    r.experts[(1 * 4 + 2) * 2] = 8;
    CHECK_THAT(import_error({r}), Catch::Contains("test:1: record 0: position 1, layer 2: expert 8 out of range (the model has 8 experts)"));
  }
  {
    EngineRecord r = good_record();
    r.experts[(2 * 4 + 3) * 2] = -1;
    CHECK_THAT(import_error({r}), Catch::Contains("position 2, layer 3: expert -1 out of range"));
  }
  {
    EngineRecord r = good_record();
    r.experts[(0 * 4 + 1) * 2 + 1] = r.experts[(0 * 4 + 1) * 2];
    CHECK_THAT(import_error({r}), Catch::Contains("record 0: position 0, layer 1: expert 1 appears twice"));
  }
  {
    EngineRecord r = good_record();
    r.rows = 3;
    r.experts.resize(3 * 4 * 2);
    CHECK_THAT(import_error({r}), Catch::Contains("routing has 3 positions for 5 tokens (3 prompt + 2 response); expected 4"));
    ImportOptions o;
    o.prefix_omitted = true;
    CHECK(import_error({r}, o) == "");
  }
  {
    EngineRecord r = good_record();
    r.rows = 6;
    r.experts.resize(6 * 4 * 2);
    CHECK_THAT(import_error({r}), Catch::Contains("routing has 6 positions for 5 tokens"));
  }
  {
    EngineRecord r = good_record();  // a row for the never-forwarded last token: dropped
    r.rows = 5;
    r.experts.resize(5 * 4 * 2, 0);
    CHECK(import_error({r}) == "");
  }
  {
    EngineRecord r = good_record();
    r.layers = 2;
    r.k = 4;
    CHECK_THAT(import_error({r}), Catch::Contains("routing has top-4 experts per layer, the model routes to 2"));
  }
  {
    EngineRecord r = good_record();
    r.layers = 8;
    r.rows = 2;
    CHECK_THAT(import_error({r}), Catch::Contains("record 0: routing has 8 layers: the model has 4 layers, 3 of them MoE"));
  }
  {
    EngineRecord r = good_record();
    r.logprobs.reset();
    CHECK_THAT(import_error({r}), Catch::Contains("test:1: record 0: no log-probs"));
    ImportOptions o;
    o.require_logprobs = false;
    CHECK(import_error({r}, o) == "");
  }
  {
    EngineRecord r = good_record();
    (*r.logprobs)[1] = std::nan("");
    CHECK_THAT(import_error({r}), Catch::Contains("log-prob of response token 1 is missing"));
    (*r.logprobs)[1] = 0.5;
    CHECK_THAT(import_error({r}), Catch::Contains("not a log-probability"));
    r.logprobs = std::vector<double>{-1};
    CHECK_THAT(import_error({r}), Catch::Contains("1 log-probs for 2 response tokens"));
  }
  {
    EngineRecord r = good_record();
    r.response[0] = 98;
    CHECK_THAT(import_error({r}), Catch::Contains("response token 0 is 98, outside the model's vocabulary 0..97"));
  }
  {
    EngineRecord r = good_record();
    r.has_routing = false;
    CHECK_THAT(import_error({r}), Catch::Contains("record 0: no routed experts"));
  }
  {
    EngineRecord a = good_record(), b = good_record(), c = good_record();
    a.group = 0;
    b.group = 1;
    c.group = 0;
    CHECK_THAT(import_error({a, b, c}), Catch::Contains("record 2: group 0 appears again after another group"));
    b.group.reset();
    b.id = 0;
    CHECK_THAT(import_error({a, b}), Catch::Contains("duplicate id 0"));
  }
}
