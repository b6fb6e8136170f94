// GGUF writer and encoders: the file parsed back by a reader written here from the spec, Q8_0 /
// Q4_0 blocks against hand-computed bytes and against an independent dequantization, the fallback
// rule, quantized codes mapped into blocks, and the stories260K export's metadata and layout.
#include <ATen/ATen.h>

#include "export/gguf.h"
#include "models/loader.h"
#include "quant/pack.h"
#include "quant/qlinear.h"
#include "models/llama2c.h"
#include "quant/quantize.h"

#include <cmath>
#include <cstring>
#include <map>
#include <variant>

#include "test_util.h"
#include "unit/models/models_test_util.h"

using dsk::gguf::TensorType;
namespace gguf = dsk::gguf;

namespace {

// ---------------------------------------------------------------------------
// A tiny GGUF reader, from the spec (independent of the writer's code).
struct Value {
  uint32_t type = 0;
  uint64_t u = 0;  // unsigned / bool
  int64_t i = 0;
  double f = 0;
  std::string s;
  uint32_t elem_type = 0;
  std::vector<Value> arr;
};
struct TensorInfo {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type = 0;
  uint64_t offset = 0;
};
struct File {
  uint32_t version = 0;
  std::map<std::string, Value> kv;
  std::vector<std::string> keys;  // in file order
  std::vector<TensorInfo> tensors;
  uint64_t data_start = 0;
  std::string bytes;
  std::string tensor_bytes(const TensorInfo& t, uint64_t n) const { return bytes.substr(data_start + t.offset, n); }
  const TensorInfo& tensor(const std::string& name) const {
    for (const auto& t : tensors)
      if (t.name == name) return t;
    FAIL("no tensor " << name);
    return tensors.front();
  }
};

struct Cursor {
  const std::string& b;
  size_t p = 0;
  template <typename T>
  T get() {
    REQUIRE(p + sizeof(T) <= b.size());
    T v;
    std::memcpy(&v, b.data() + p, sizeof(T));
    p += sizeof(T);
    return v;
  }
  std::string str() {
    uint64_t n = get<uint64_t>();
    REQUIRE(p + n <= b.size());
    std::string s = b.substr(p, n);
    p += n;
    return s;
  }
  Value value(uint32_t type) {
    Value v;
    v.type = type;
    switch (type) {
      case 0: v.u = get<uint8_t>(); break;
      case 1: v.i = get<int8_t>(); break;
      case 2: v.u = get<uint16_t>(); break;
      case 3: v.i = get<int16_t>(); break;
      case 4: v.u = get<uint32_t>(); break;
      case 5: v.i = get<int32_t>(); break;
      case 6: v.f = get<float>(); break;
      case 7: v.u = get<uint8_t>(); break;
      case 8: v.s = str(); break;
      case 9: {
        v.elem_type = get<uint32_t>();
        uint64_t n = get<uint64_t>();
        for (uint64_t k = 0; k < n; ++k) v.arr.push_back(value(v.elem_type));
        break;
      }
      case 10: v.u = get<uint64_t>(); break;
      case 11: v.i = get<int64_t>(); break;
      case 12: v.f = get<double>(); break;
      default: FAIL("unknown value type " << type);
    }
    return v;
  }
};

File parse(const std::string& bytes) {
  File f;
  f.bytes = bytes;
  Cursor c{f.bytes};
  REQUIRE(f.bytes.substr(0, 4) == "GGUF");
  c.p = 4;
  f.version = c.get<uint32_t>();
  uint64_t n_tensors = c.get<uint64_t>(), n_kv = c.get<uint64_t>();
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.str();
    uint32_t t = c.get<uint32_t>();
    f.kv[key] = c.value(t);
    f.keys.push_back(key);
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.name = c.str();
    uint32_t nd = c.get<uint32_t>();
    for (uint32_t d = 0; d < nd; ++d) t.ne.push_back(c.get<uint64_t>());
    t.type = c.get<uint32_t>();
    t.offset = c.get<uint64_t>();
    f.tensors.push_back(t);
  }
  uint64_t align = f.kv.count("general.alignment") ? f.kv["general.alignment"].u : 32;
  f.data_start = (c.p + align - 1) / align * align;
  for (size_t k = c.p; k < f.data_start; ++k) REQUIRE(f.bytes[k] == 0);
  return f;
}

uint16_t half_bits(float f) { return c10::Half(f).x; }

uint16_t u16_at(const std::string& s, size_t p) {
  uint16_t v;
  std::memcpy(&v, s.data() + p, 2);
  return v;
}

}  // namespace

TEST_CASE("gguf: header, every metadata type and tensor infos parse back with aligned offsets", "[export][gguf]") {
  gguf::Writer w;
  w.add_u32("a.u32", 4000000000u);
  w.add_i32("a.i32", -7);
  w.add_u64("a.u64", 1ull << 40);
  w.add_f32("a.f32", 0.5f);
  w.add_bool("a.bool", true);
  w.add_string("a.str", "héllo");
  w.add_strings("a.strs", {"x", "", "▁Once"});
  w.add_f32s("a.f32s", {1.5f, -2.0f});
  w.add_i32s("a.i32s", {1, 3, 6});
  CHECK_THROWS_AS(w.add_u32("a.u32", 1), dsk::Error);
  at::Tensor t1 = at::arange(6, at::kFloat).reshape({2, 3});  // 24 bytes: the next offset is 32
  at::Tensor t2 = at::arange(5, at::kFloat);
  w.add_tensor("t1", {2, 3}, TensorType::F32, [t1] { return gguf::encode_tensor(t1, TensorType::F32); });
  w.add_tensor("t2", {5}, TensorType::F16, [t2] { return gguf::encode_tensor(t2, TensorType::F16); });
  const std::string bytes = w.serialize();
  File f = parse(bytes);
  CHECK(f.version == 3);
  REQUIRE(f.keys.size() == 9);
  CHECK(f.keys[0] == "a.u32");
  CHECK(f.kv["a.u32"].type == 4);
  CHECK(f.kv["a.u32"].u == 4000000000u);
  CHECK(f.kv["a.i32"].i == -7);
  CHECK(f.kv["a.u64"].u == (1ull << 40));
  CHECK(f.kv["a.f32"].f == 0.5);
  CHECK(f.kv["a.bool"].u == 1);
  CHECK(f.kv["a.str"].s == "héllo");
  REQUIRE(f.kv["a.strs"].arr.size() == 3);
  CHECK(f.kv["a.strs"].elem_type == 8);
  CHECK(f.kv["a.strs"].arr[2].s == "▁Once");
  CHECK(f.kv["a.f32s"].arr[1].f == -2.0);
  CHECK(f.kv["a.i32s"].arr[2].i == 6);
  REQUIRE(f.tensors.size() == 2);
  CHECK(f.tensors[0].name == "t1");
  CHECK(f.tensors[0].ne == std::vector<uint64_t>{3, 2});  // ne[0] innermost
  CHECK(f.tensors[0].type == 0);
  CHECK(f.tensors[0].offset == 0);
  CHECK(f.tensors[1].ne == std::vector<uint64_t>{5});
  CHECK(f.tensors[1].type == 1);
  CHECK(f.tensors[1].offset == 32);
  CHECK(f.data_start % 32 == 0);
  CHECK(bytes.size() == f.data_start + 32 + 32);  // each tensor padded to the alignment
  std::vector<float> back = gguf::decode(TensorType::F32, f.tensor_bytes(f.tensors[0], 24), 6);
  CHECK(back == std::vector<float>{0, 1, 2, 3, 4, 5});
  CHECK(u16_at(bytes, f.data_start + 32 + 2 * 4) == half_bits(4.0f));
  // a block type needs whole blocks per row
  CHECK_THROWS_AS(w.add_tensor("bad", {2, 40}, TensorType::Q8_0, [] { return std::string(); }), dsk::Error);
}

TEST_CASE("gguf: Q8_0 blocks equal hand-computed bytes", "[export][gguf]") {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j - 16);  // -16 .. 15
  std::string b = gguf::encode_q8_0(x.data(), 32);
  REQUIRE(b.size() == 34);
  CHECK(u16_at(b, 0) == half_bits(16.0f / 127.0f));  // d = amax / 127
  // q = round(x * 127 / 16)
  CHECK(static_cast<int8_t>(b[2 + 0]) == -127);   // -16
  CHECK(static_cast<int8_t>(b[2 + 16]) == 0);     // 0
  CHECK(static_cast<int8_t>(b[2 + 17]) == 8);     // 1 -> 7.9375
  CHECK(static_cast<int8_t>(b[2 + 18]) == 16);    // 2 -> 15.875
  CHECK(static_cast<int8_t>(b[2 + 31]) == 119);   // 15 -> 119.06
  CHECK(static_cast<int8_t>(b[2 + 8]) == -64);    // -8 -> -63.5, rounded away from zero
  // an all-zero block: d = 0, codes 0
  std::vector<float> z(32, 0.0f);
  std::string bz = gguf::encode_q8_0(z.data(), 32);
  CHECK(bz == std::string(34, '\0'));
}

TEST_CASE("gguf: Q4_0 blocks equal hand-computed bytes", "[export][gguf]") {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j - 16);
  std::string b = gguf::encode_q4_0(x.data(), 32);
  REQUIRE(b.size() == 18);
  // the value of largest magnitude is -16, so d = -16 / -8 = 2 and x/d + 8.5 is truncated, capped at 15
  CHECK(u16_at(b, 0) == half_bits(2.0f));
  CHECK(static_cast<uint8_t>(b[2 + 0]) == 0x80);   // x0 = -16 -> 0, x16 = 0 -> 8
  CHECK(static_cast<uint8_t>(b[2 + 1]) == 0x91);   // -15 -> 1 (1.0), 1 -> 9 (9.0)
  CHECK(static_cast<uint8_t>(b[2 + 2]) == 0x91);   // -14 -> 1 (1.5), 2 -> 9 (9.5)
  CHECK(static_cast<uint8_t>(b[2 + 15]) == 0xF8);  // -1 -> 8 (8.0), 15 -> 15 (16.0 capped)
  // negative scale: the largest magnitude is positive
  std::vector<float> y(32, 0.0f);
  y[5] = 4.0f;
  y[20] = -1.0f;
  std::string c = gguf::encode_q4_0(y.data(), 32);
  CHECK(u16_at(c, 0) == half_bits(-0.5f));            // 4 / -8
  CHECK((static_cast<uint8_t>(c[2 + 5]) & 0x0f) == 0);  // 4 / -0.5 + 8.5 = 0.5 -> 0
  CHECK((static_cast<uint8_t>(c[2 + 4]) >> 4) == 10);   // y[20] = -1 -> 2 + 8.5 = 10.5 -> 10
  std::vector<float> back = gguf::decode(TensorType::Q4_0, c, 32);
  CHECK(back[5] == 4.0f);
  CHECK(back[20] == -1.0f);
}

TEST_CASE("gguf: Q8_0 and Q4_0 decode to an independent dequantization within half a step", "[export][gguf]") {
  at::manual_seed(3);
  at::Tensor w = at::randn({8, 96}) * 0.05;
  w.index_put_({0}, 0.0);  // a zero row: d = 0
  for (TensorType t : {TensorType::Q8_0, TensorType::Q4_0}) {
    INFO(gguf::type_name(t));
    std::string bytes = gguf::encode_tensor(w, t);
    REQUIRE(bytes.size() == gguf::data_bytes(t, w.numel()));
    at::Tensor got = at::from_blob(gguf::decode(t, bytes, w.numel()).data(), {8, 96}, at::kFloat).clone();
    // reference: per 32-block scale from the same rule, codes by rounding, in torch
    at::Tensor blocks = w.reshape({-1, 32});
    at::Tensor ref;
    if (t == TensorType::Q8_0) {
      at::Tensor d = blocks.abs().amax(1, true) / 127.0;
      at::Tensor q = at::round(blocks / at::where(d == 0, at::ones_like(d), d));
      ref = (q * d.to(at::kHalf).to(at::kFloat)).reshape({8, 96});
    } else {
      at::Tensor idx = blocks.abs().argmax(1, true);
      at::Tensor d = blocks.gather(1, idx) / -8.0;
      at::Tensor q = at::clamp(at::floor(blocks / at::where(d == 0, at::ones_like(d), d) + 8.5), 0, 15);
      ref = ((q - 8) * d.to(at::kHalf).to(at::kFloat)).reshape({8, 96});
    }
    CHECK(at::allclose(got, ref, 0, 1e-6));
    // and close to the weights: |err| <= one step (Q4_0's positive extreme is capped at +7 steps)
    at::Tensor step = (t == TensorType::Q8_0 ? w.reshape({-1, 32}).abs().amax(1, true) / 127.0
                                             : w.reshape({-1, 32}).abs().amax(1, true) / 8.0);
    at::Tensor err = (got - w).abs().reshape({-1, 32});
    CHECK((err <= step * (t == TensorType::Q8_0 ? 0.51 : 1.01) + 1e-7).all().item<bool>());
    CHECK(got[0].abs().sum().item<float>() == 0.0f);
  }
  // F16 / BF16 round to nearest even
  at::Tensor v = at::tensor({1.0f + 1.0f / 1024 + 1e-7f, 3.14159f, -65504.0f});
  std::vector<float> h = gguf::decode(TensorType::F16, gguf::encode_tensor(v, TensorType::F16), 3);
  CHECK(h[1] == static_cast<float>(c10::Half(3.14159f)));
  std::vector<float> bf = gguf::decode(TensorType::BF16, gguf::encode_tensor(v, TensorType::BF16), 3);
  CHECK(bf[1] == v.to(at::kBFloat16).to(at::kFloat)[1].item<float>());
  CHECK(bf[0] == v.to(at::kBFloat16).to(at::kFloat)[0].item<float>());
}

TEST_CASE("gguf: fallback rule keeps 1-D tensors F32 and rows not divisible by 32 in F16", "[export][gguf]") {
  std::string why;
  CHECK(gguf::storage_type(TensorType::Q8_0, {64, 172}, &why) == TensorType::F16);  // stories260K down_proj
  CHECK_THAT(why, Catch::Matchers::Contains("172"));
  CHECK(gguf::storage_type(TensorType::Q4_0, {172, 64}) == TensorType::Q4_0);       // gate/up: rows of 64
  CHECK(gguf::storage_type(TensorType::Q8_0, {64}) == TensorType::F32);
  CHECK(gguf::storage_type(TensorType::BF16, {64}) == TensorType::F32);
  CHECK(gguf::storage_type(TensorType::BF16, {64, 172}) == TensorType::BF16);      // floats need no blocks
  CHECK(gguf::storage_type(TensorType::F16, {3, 5}) == TensorType::F16);
  CHECK_THROWS_AS(gguf::parse_type("q5_k"), dsk::Error);
  CHECK(dsk::test::error_of([] { gguf::parse_type("int8"); }).exit_code() == 2);
}

TEST_CASE("gguf: symmetric g32 int8 / int4 codes map into Q8_0 / Q4_0 blocks exactly", "[export][gguf]") {
  at::manual_seed(5);
  at::Tensor w = at::randn({6, 64}) * 0.1;
  for (int bits : {8, 4}) {
    dsk::quant::QWeight q = dsk::quant::quantize_rtn(w, dsk::quant::Scheme{bits, 32, true});
    at::Tensor deq = dsk::quant::dequantize(q);
    at::Tensor codes = q.q.to(at::kInt) - (1 << (bits - 1));
    std::vector<TensorType> types = {TensorType::Q8_0};
    if (bits == 4) types.push_back(TensorType::Q4_0);
    for (TensorType t : types) {
      INFO("int" << bits << " -> " << gguf::type_name(t));
      std::string bytes = gguf::encode_blocks_from_codes(codes, q.scales, t);
      REQUIRE(bytes.size() == gguf::data_bytes(t, w.numel()));
      at::Tensor got = at::from_blob(gguf::decode(t, bytes, w.numel()).data(), {6, 64}, at::kFloat).clone();
      CHECK(at::equal(got, deq));  // scales are fp16 values already, so nothing is rounded again
    }
  }
  // int8 codes do not fit Q4_0
  dsk::quant::QWeight q8 = dsk::quant::quantize_rtn(w, dsk::quant::Scheme{8, 32, true});
  CHECK_THROWS_AS(gguf::encode_blocks_from_codes(q8.q.to(at::kInt) - 128, q8.scales, TensorType::Q4_0), dsk::Error);
}

TEST_CASE("gguf: Hugging Face parameter names map to llama.cpp tensor names", "[export][gguf]") {
  CHECK(gguf::tensor_name("model.embed_tokens.weight") == "token_embd.weight");
  CHECK(gguf::tensor_name("model.norm.weight") == "output_norm.weight");
  CHECK(gguf::tensor_name("lm_head.weight") == "output.weight");
  CHECK(gguf::tensor_name("model.layers.12.self_attn.q_proj.weight") == "blk.12.attn_q.weight");
  CHECK(gguf::tensor_name("model.layers.0.self_attn.k_proj.bias") == "blk.0.attn_k.bias");
  CHECK(gguf::tensor_name("model.layers.3.self_attn.o_proj.weight") == "blk.3.attn_output.weight");
  CHECK(gguf::tensor_name("model.layers.3.input_layernorm.weight") == "blk.3.attn_norm.weight");
  CHECK(gguf::tensor_name("model.layers.3.post_attention_layernorm.weight") == "blk.3.ffn_norm.weight");
  CHECK(gguf::tensor_name("model.layers.3.mlp.gate_proj.weight") == "blk.3.ffn_gate.weight");
  CHECK(gguf::tensor_name("model.layers.3.mlp.up_proj.weight") == "blk.3.ffn_up.weight");
  CHECK(gguf::tensor_name("model.layers.3.mlp.down_proj.weight") == "blk.3.ffn_down.weight");
  CHECK(gguf::tensor_name("model.layers.x.mlp.down_proj.weight").empty());
  CHECK(gguf::tensor_name("model.rotary_emb.inv_freq").empty());
}

TEST_CASE("gguf: stories260K export has llama.cpp's metadata, vocabulary and tensor layout", "[export][gguf]") {
  auto lm = dsk::models::load_model(dsk::test::data_path("stories260K.bin"));
  auto tok = dsk::tok::load_tokenizer(dsk::test::data_path("tok512.model"));
  gguf::ExportReport rep;
  gguf::Writer w = gguf::build_llama(lm, *tok, {TensorType::Q8_0, "stories260K"}, &rep);
  File f = parse(w.serialize());
  CHECK(f.kv["general.architecture"].s == "llama");
  CHECK(f.kv["general.name"].s == "stories260K");
  CHECK(f.kv["general.file_type"].u == 7);
  CHECK(f.kv["llama.context_length"].u == 512);
  CHECK(f.kv["llama.embedding_length"].u == 64);
  CHECK(f.kv["llama.block_count"].u == 5);
  CHECK(f.kv["llama.feed_forward_length"].u == 172);
  CHECK(f.kv["llama.attention.head_count"].u == 8);
  CHECK(f.kv["llama.attention.head_count_kv"].u == 4);
  CHECK(f.kv["llama.rope.dimension_count"].u == 8);
  CHECK(f.kv["llama.attention.layer_norm_rms_epsilon"].f == Approx(1e-5));
  CHECK(f.kv["llama.rope.freq_base"].f == 10000.0);
  CHECK(f.kv["tokenizer.ggml.model"].s == "llama");
  REQUIRE(f.kv["tokenizer.ggml.tokens"].arr.size() == 512);
  CHECK(f.kv["tokenizer.ggml.tokens"].arr[403].s == tok->id_to_token(403));
  CHECK(f.kv["tokenizer.ggml.scores"].arr.size() == 512);
  CHECK(f.kv["tokenizer.ggml.token_type"].arr[1].i == 3);  // <s>: control
  CHECK(f.kv["tokenizer.ggml.token_type"].arr[0].i == 2);  // <unk>
  CHECK(f.kv["tokenizer.ggml.token_type"].arr[3].i == 6);  // <0x00>: byte
  CHECK(f.kv["tokenizer.ggml.bos_token_id"].u == 1);
  CHECK(f.kv["tokenizer.ggml.eos_token_id"].u == 2);
  CHECK(f.kv["tokenizer.ggml.add_bos_token"].u == 1);
  // 1 embedding + 5 x 9 + output_norm; tied classifier: no output.weight
  CHECK(f.tensors.size() == 47);
  CHECK(f.tensor("token_embd.weight").type == 8);
  CHECK(f.tensor("token_embd.weight").ne == std::vector<uint64_t>{64, 512});
  CHECK(f.tensor("blk.0.attn_norm.weight").type == 0);
  CHECK(f.tensor("blk.4.ffn_gate.weight").type == 8);
  CHECK(f.tensor("blk.4.ffn_down.weight").type == 1);  // rows of 172: the F16 fallback
  CHECK(f.tensor("blk.4.ffn_down.weight").ne == std::vector<uint64_t>{172, 64});
  CHECK(f.tensor("blk.0.attn_k.weight").ne == std::vector<uint64_t>{64, 32});
  for (const auto& t : f.tensors) CHECK(t.offset % 32 == 0);
  int fallbacks = 0;
  for (const auto& t : rep.tensors) fallbacks += t.note.find("172") != std::string::npos;
  CHECK(fallbacks == 5);

  // q/k rows in llama.cpp's (Interleaved) layout: the llama2.c weights as they are, and a model
  // converted to Half is permuted back to the same bytes.
  gguf::Writer wf = gguf::build_llama(lm, *tok, {TensorType::F32, ""});
  File ff = parse(wf.serialize());
  at::Tensor wq = lm.model->model->layers[2]->self_attn->q_proj->weight.detach().clone();
  std::string q_bytes = ff.tensor_bytes(ff.tensor("blk.2.attn_q.weight"), 64 * 64 * 4);
  CHECK(std::memcmp(q_bytes.data(), wq.data_ptr<float>(), q_bytes.size()) == 0);
  dsk::models::convert_to_half_rope(lm);
  CHECK(!at::equal(lm.model->model->layers[2]->self_attn->q_proj->weight, wq));
  File fh = parse(gguf::build_llama(lm, *tok, {TensorType::F32, ""}).serialize());
  for (const char* name : {"blk.2.attn_q.weight", "blk.1.attn_k.weight", "blk.0.ffn_down.weight"}) {
    INFO(name);
    CHECK(fh.tensor_bytes(fh.tensor(name), 2048) == ff.tensor_bytes(ff.tensor(name), 2048));
  }
}

TEST_CASE("gguf: a byte-level BPE tokenizer exports as tokenizer.ggml.model gpt2 with merges and pre", "[export][gguf]") {
  auto tok = dsk::tok::load_gpt2_tokenizer(dsk::test::data_path("gpt2_vocab.json"), dsk::test::data_path("gpt2_merges.txt"));
  auto c = dsk::test::llama_shape(32, 64, 1, 4, 2, 50264, 64);  // vocab padded beyond the tokenizer's 50257
  dsk::models::LoadedModel lm;
  lm.config = c;
  lm.model = dsk::models::Llama(c);
  gguf::ExportReport rep;
  File f = parse(gguf::build_llama(lm, *tok, {TensorType::Q4_0, "tiny"}, &rep).serialize());
  CHECK(f.kv["tokenizer.ggml.model"].s == "gpt2");
  CHECK(f.kv["tokenizer.ggml.pre"].s == "gpt-2");
  REQUIRE(f.kv["tokenizer.ggml.tokens"].arr.size() == 50264);
  CHECK(f.kv["tokenizer.ggml.tokens"].arr[15496].s == "Hello");
  CHECK(f.kv["tokenizer.ggml.tokens"].arr[50260].s == "[PAD50260]");
  CHECK(f.kv["tokenizer.ggml.token_type"].arr[50260].i == 5);
  REQUIRE(f.kv["tokenizer.ggml.merges"].arr.size() == 50000);
  CHECK(f.kv["tokenizer.ggml.merges"].arr[0].s == "Ġ t");  // the first line of merges.txt
  CHECK(f.kv.count("tokenizer.ggml.scores") == 0);
  CHECK(f.tensor("output.weight").type == 2);  // untied classifier, Q4_0
  CHECK(f.tensor("output.weight").ne == std::vector<uint64_t>{32, 50264});
  CHECK(rep.warnings.empty());
  // a tokenizer larger than the model's vocabulary is refused
  c.vocab_size = 1000;
  dsk::models::LoadedModel small;
  small.config = c;
  small.model = dsk::models::Llama(c);
  CHECK(dsk::test::error_of([&] { gguf::build_llama(small, *tok, {TensorType::F16, ""}); }).exit_code() == 2);
}

TEST_CASE("gguf: quantized layers of a Half model export as permuted exact blocks, or are refused with the reason",
          "[export][gguf]") {
  auto tok = dsk::tok::load_tokenizer(dsk::test::data_path("tok512.model"));
  auto c = dsk::test::llama_shape(64, 96, 1, 4, 2, 512, 64);  // Half rope
  at::manual_seed(11);
  auto make = [&](const dsk::quant::Scheme& s) {
    dsk::models::LoadedModel lm;
    lm.config = c;
    lm.model = dsk::models::Llama(c);
    auto& q_proj = lm.model->model->layers[0]->self_attn->q_proj;
    q_proj->set_quantized(dsk::quant::make_qlinear(dsk::quant::quantize_rtn(q_proj->weight.detach(), s)));
    return lm;
  };
  {
    auto lm = make({4, 32, true});
    const auto& qw = lm.model->model->layers[0]->self_attn->q_proj->quantized()->weight;
    at::Tensor expect = dsk::models::permute_rope_rows(dsk::quant::dequantize(qw), 4, dsk::models::RopeStyle::Interleaved);
    gguf::ExportReport rep;
    File f = parse(gguf::build_llama(lm, *tok, {TensorType::Q4_0, ""}, &rep).serialize());
    const auto& t = f.tensor("blk.0.attn_q.weight");
    CHECK(t.type == 2);
    at::Tensor got = at::from_blob(gguf::decode(TensorType::Q4_0, f.tensor_bytes(t, 64 * 64 / 32 * 18), 64 * 64).data(),
                                   {64, 64}, at::kFloat)
                         .clone();
    CHECK(at::equal(got, expect));
    bool noted = false;
    for (const auto& r : rep.tensors) noted |= r.name == "blk.0.attn_q.weight" && r.note.find("exact") != std::string::npos;
    CHECK(noted);
    // dequantized for float types
    File ff = parse(gguf::build_llama(lm, *tok, {TensorType::F32, ""}).serialize());
    std::string b = ff.tensor_bytes(ff.tensor("blk.0.attn_q.weight"), 64 * 64 * 4);
    CHECK(std::memcmp(b.data(), expect.contiguous().data_ptr<float>(), b.size()) == 0);
  }
  for (const auto& [scheme, why] : std::vector<std::pair<dsk::quant::Scheme, std::string>>{
           {{4, 32, false}, "asymmetric"}, {{4, 0, true}, "per-channel"}, {{4, 64, true}, "groups of 64"}}) {
    auto lm = make(scheme);
    auto e = dsk::test::error_of([&] { gguf::build_llama(lm, *tok, {TensorType::Q4_0, ""}); });
    CHECK(e.exit_code() == 2);
    CHECK_THAT(e.line(), Catch::Matchers::Contains(why) && Catch::Matchers::Contains("export.dtype f16"));
  }
  {
    auto lm = make({8, 32, true});
    auto e = dsk::test::error_of([&] { gguf::build_llama(lm, *tok, {TensorType::Q4_0, ""}); });
    CHECK_THAT(e.line(), Catch::Matchers::Contains("8-bit codes do not fit Q4_0"));
    CHECK_NOTHROW(gguf::build_llama(lm, *tok, {TensorType::Q8_0, ""}));
  }
  {  // an unmerged LoRA adapter
    dsk::models::LoadedModel lm;
    lm.config = c;
    lm.model = dsk::models::Llama(c);
    lm.model->model->layers[0]->mlp->up_proj->attach_lora(4, 2.0, 0.0);
    auto e = dsk::test::error_of([&] { gguf::build_llama(lm, *tok, {TensorType::F16, ""}); });
    CHECK(e.exit_code() == 2);
    CHECK_THAT(e.line(), Catch::Matchers::Contains("LoRA"));
  }
}
