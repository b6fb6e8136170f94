// ONNX export (export/onnx.h) without a runtime: the ModelProto parsed back with the ONNX library
// passes the checker; inputs and outputs have dynamic (dim_param) batch/sequence axes; initializers
// carry the Hugging Face names once (tied embeddings shared); fp16 stores FLOAT16 weights with an
// fp32 logits output; external data entries point into OUTPUT.data at aligned offsets with the
// right bytes; unsupported options and models are refused with exit 2. ONNX Runtime runs the files
// in tests/stages/test_export_onnx.cpp.
#include <ATen/ATen.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "export/onnx.h"
#include "models/loader.h"
#include "models/lora.h"
#include "quant/qlinear.h"
#include "quant/quantize.h"
#include "test_util.h"
#include "unit/models/models_test_util.h"

namespace fs = std::filesystem;
namespace ox = dsk::onnx;
using Catch::Matchers::Contains;

namespace {

// tests/unit/models' tiny GQA model (C 32, H 4, KV 2, D 8, V 61, 40 positions), random weights.
dsk::models::LoadedModel tiny(bool tied, bool bias, int64_t head_dim = 0,
                              dsk::models::RopeStyle style = dsk::models::RopeStyle::Half) {
  dsk::models::LlamaConfig c = dsk::test::tiny_config(style, tied, bias);
  c.head_dim_override = head_dim;
  dsk::models::LoadedModel lm;
  lm.config = c;
  lm.model = dsk::test::random_model(c, 3);
  return lm;
}

onnx::ModelProto parse(const std::string& bytes) {
  onnx::ModelProto m;
  REQUIRE(m.ParseFromString(bytes));
  return m;
}

onnx::ModelProto read_model(const fs::path& p) {
  onnx::ModelProto m;
  std::ifstream in(p, std::ios::binary);
  REQUIRE(m.ParseFromIstream(&in));
  return m;
}

// dims as text: numbers, or the dim_param names
std::vector<std::string> dims(const onnx::ValueInfoProto& v) {
  std::vector<std::string> out;
  for (const auto& d : v.type().tensor_type().shape().dim())
    out.push_back(d.has_dim_param() ? d.dim_param() : std::to_string(d.dim_value()));
  return out;
}

std::map<std::string, const onnx::TensorProto*> initializers(const onnx::ModelProto& m) {
  std::map<std::string, const onnx::TensorProto*> out;
  for (const auto& t : m.graph().initializer()) out[t.name()] = &t;
  return out;
}

std::string meta(const onnx::ModelProto& m, const std::string& key) {
  for (const auto& p : m.metadata_props())
    if (p.key() == key) return p.value();
  return "";
}

}  // namespace

TEST_CASE("onnx: a GQA model with biases and an untied classifier passes the checker with dynamic axes and HF names",
          "[export][onnx]") {
  auto lm = tiny(/*tied=*/false, /*bias=*/true, /*head_dim=*/16);  // H*D = 64 != hidden 32
  ox::Model model = ox::build_llama(lm, {});
  onnx::ModelProto m = parse(model.serialize());
  REQUIRE_NOTHROW(onnx::checker::check_model(m));
  CHECK(m.ir_version() == 8);
  REQUIRE(m.opset_import_size() == 1);
  CHECK(m.opset_import(0).domain() == "");
  CHECK(m.opset_import(0).version() == 17);
  CHECK(m.producer_name() == "dsk");
  CHECK(meta(m, "num_key_value_heads") == "2");
  CHECK(meta(m, "head_dim") == "16");
  CHECK(meta(m, "kv_cache") == "false");

  const auto& g = m.graph();
  REQUIRE(g.input_size() == 1);
  CHECK(g.input(0).name() == "input_ids");
  CHECK(g.input(0).type().tensor_type().elem_type() == onnx::TensorProto::INT64);
  CHECK(dims(g.input(0)) == std::vector<std::string>{"batch", "sequence"});
  REQUIRE(g.output_size() == 1);
  CHECK(g.output(0).name() == "logits");
  CHECK(g.output(0).type().tensor_type().elem_type() == onnx::TensorProto::FLOAT);
  CHECK(dims(g.output(0)) == std::vector<std::string>{"batch", "sequence", "61"});

  // every weight once under its HF name, in its [out, in] layout, plus the rotary tables
  auto inits = initializers(m);
  int64_t weights = 0;
  for (auto& [name, t] : dsk::models::state_tensors(lm.model)) {
    INFO(name);
    REQUIRE(inits.count(name));
    CHECK(std::vector<int64_t>(inits[name]->dims().begin(), inits[name]->dims().end()) == t.sizes().vec());
    CHECK(inits[name]->data_type() == onnx::TensorProto::FLOAT);
    CHECK(inits[name]->raw_data().size() == static_cast<size_t>(t.numel()) * 4);
    ++weights;
  }
  CHECK(weights == 1 + 2 * (2 + 7 + 3) + 1 + 1);  // embed, per layer 2 norms + 7 weights + 3 biases, norm, lm_head
  REQUIRE(inits.count("rope.cos"));
  CHECK(std::vector<int64_t>(inits["rope.cos"]->dims().begin(), inits["rope.cos"]->dims().end()) ==
        std::vector<int64_t>{40, 16});
  int64_t others = 0;
  for (auto& [name, t] : inits) others += name.rfind("const.", 0) != 0 && name.rfind("rope.", 0) != 0;
  CHECK(others == weights);
  CHECK(model.report().initializers == static_cast<int64_t>(inits.size()));
  CHECK(model.report().nodes == g.node_size());
  // the embedding's bytes are the weight's
  const auto& e = *inits["model.embed_tokens.weight"];
  at::Tensor w = lm.model->model->embed_tokens->weight;
  CHECK(std::memcmp(e.raw_data().data(), w.data_ptr<float>(), e.raw_data().size()) == 0);
}

TEST_CASE("onnx: tied embeddings are stored once, used by the lookup and the classifier", "[export][onnx]") {
  auto lm = tiny(/*tied=*/true, /*bias=*/false);
  onnx::ModelProto m = parse(ox::build_llama(lm, {}).serialize());
  auto inits = initializers(m);
  CHECK(inits.count("lm_head.weight") == 0);
  int uses = 0;
  for (const auto& n : m.graph().node())
    for (const auto& in : n.input()) uses += in == "model.embed_tokens.weight";
  CHECK(uses == 2);  // Gather and the classifier's Gemm
}

TEST_CASE("onnx: an interleaved (llama2.c) model is converted to the Half layout and says so", "[export][onnx]") {
  auto lm = tiny(true, false, 0, dsk::models::RopeStyle::Interleaved);
  at::Tensor q_before = lm.model->model->layers[0]->self_attn->q_proj->weight.clone();
  onnx::ModelProto m = parse(ox::build_llama(lm, {}).serialize());
  CHECK(lm.config.rope_style == dsk::models::RopeStyle::Half);
  CHECK_THAT(meta(m, "rope_style"), Contains("permuted"));
  auto inits = initializers(m);
  const auto& q = *inits["model.layers.0.self_attn.q_proj.weight"];
  at::Tensor stored = at::from_blob(const_cast<char*>(q.raw_data().data()), {32, 32}, at::kFloat);
  CHECK(!at::equal(stored, q_before));                                  // rows permuted
  CHECK(at::equal(std::get<0>(stored.sum(1).sort()), std::get<0>(q_before.sum(1).sort())));  // the same rows
}

TEST_CASE("onnx: the KV-cache graph has past/present pairs with dynamic past and total lengths", "[export][onnx]") {
  auto lm = tiny(true, false);
  ox::ExportOptions opt;
  opt.kv_cache = true;
  ox::Model model = ox::build_llama(lm, opt);
  onnx::ModelProto m = parse(model.serialize());
  const auto& g = m.graph();
  REQUIRE(g.input_size() == 1 + 2 * 2);
  REQUIRE(g.output_size() == 1 + 2 * 2);
  CHECK(g.input(1).name() == "past_key_values.0.key");
  CHECK(g.input(4).name() == "past_key_values.1.value");
  CHECK(dims(g.input(1)) == std::vector<std::string>{"batch", "2", "past_sequence", "8"});
  CHECK(g.output(1).name() == "present.0.key");
  CHECK(g.output(4).name() == "present.1.value");
  CHECK(dims(g.output(2)) == std::vector<std::string>{"batch", "2", "total_sequence", "8"});
  CHECK(model.report().inputs.size() == 5);
  CHECK(meta(m, "kv_cache") == "true");
}

TEST_CASE("onnx: fp16 stores FLOAT16 weights and cache, fp32 norms statistics, softmax and logits", "[export][onnx]") {
  auto lm = tiny(false, true);
  ox::ExportOptions opt;
  opt.dtype = ox::DType::F16;
  opt.kv_cache = true;
  onnx::ModelProto m = parse(ox::build_llama(lm, opt).serialize());
  for (const auto& t : m.graph().initializer()) {
    if (t.name().rfind("const.", 0) == 0) continue;
    INFO(t.name());
    CHECK(t.data_type() == onnx::TensorProto::FLOAT16);
  }
  CHECK(m.graph().output(0).type().tensor_type().elem_type() == onnx::TensorProto::FLOAT);
  CHECK(m.graph().input(1).type().tensor_type().elem_type() == onnx::TensorProto::FLOAT16);
  CHECK(m.graph().output(1).type().tensor_type().elem_type() == onnx::TensorProto::FLOAT16);
  int casts = 0, softmax = 0;
  for (const auto& n : m.graph().node()) {
    casts += n.op_type() == "Cast";
    softmax += n.op_type() == "Softmax";
  }
  // per layer: 2 norms x 2 casts + 2 around the softmax; the final norm 2; the logits 1
  CHECK(softmax == 2);
  CHECK(casts == 2 * (4 + 2) + 2 + 1);
  CHECK(meta(m, "dtype") == "f16");
}

TEST_CASE("onnx: external data goes to OUTPUT.data at aligned offsets with the weights' bytes, small tensors inline",
          "[export][onnx]") {
  auto lm = tiny(false, true);
  ox::Model model = ox::build_llama(lm, {});
  fs::path dir = dsk::test::scratch_dir("onnx-external");
  const fs::path out = dir / "m.onnx";
  model.write(out, /*overwrite=*/false, /*external=*/true);
  REQUIRE(fs::exists(ox::data_path(out)));
  const std::string data = [&] {
    std::ifstream in(ox::data_path(out), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  onnx::ModelProto m = read_model(out);
  REQUIRE_NOTHROW(onnx::checker::check_model(out.string()));
  auto weights = dsk::models::state_tensors(lm.model);
  std::map<std::string, at::Tensor> by_name(weights.begin(), weights.end());
  int external = 0, inline_ = 0;
  for (const auto& t : m.graph().initializer()) {
    INFO(t.name());
    if (t.data_location() != onnx::TensorProto::EXTERNAL) {
      CHECK(t.raw_data().size() < ox::kExternalMinBytes);
      ++inline_;
      continue;
    }
    ++external;
    std::map<std::string, std::string> kv;
    for (const auto& e : t.external_data()) kv[e.key()] = e.value();
    CHECK(kv["location"] == "m.onnx.data");
    const uint64_t offset = std::stoull(kv["offset"]), length = std::stoull(kv["length"]);
    CHECK(offset % ox::kExternalAlign == 0);
    REQUIRE(offset + length <= data.size());
    CHECK(!t.has_raw_data());
    if (by_name.count(t.name())) {
      at::Tensor w = by_name[t.name()].contiguous();
      REQUIRE(length == static_cast<uint64_t>(w.numel()) * 4);
      CHECK(std::memcmp(data.data() + offset, w.data_ptr<float>(), length) == 0);
    }
  }
  CHECK(external > 10);
  CHECK(inline_ > 10);  // norms (128 bytes), biases, shape constants
  for (const auto& e : fs::directory_iterator(dir)) CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
  // an existing output (or its data file) is refused without overwrite, replaced with it
  CHECK(dsk::test::error_of([&] { model.write(out, false, true); }).exit_code() == 2);
  model.write(out, true, false);
  CHECK(read_model(out).graph().initializer(0).data_location() != onnx::TensorProto::EXTERNAL);
  CHECK(model.wants_external("true"));
  CHECK(!model.wants_external("auto"));  // far below 2 GiB
  CHECK(!model.wants_external("false"));
}

TEST_CASE("onnx: opset, dtype, quantized and LoRA models, other architectures and rope scalings are refused with exit 2",
          "[export][onnx]") {
  for (int64_t opset : {16, 18}) {
    ox::ExportOptions opt;
    opt.opset = opset;
    auto e = dsk::test::error_of([&] { ox::check_options(opt); });
    CHECK(e.exit_code() == 2);
    CHECK_THAT(e.line(), Contains("export.onnx.opset " + std::to_string(opset)));
    auto lm = tiny(true, false);
    CHECK(dsk::test::error_of([&] { ox::build_llama(lm, opt); }).exit_code() == 2);
  }
  for (const char* dtype : {"bf16", "q8_0", "q4_0"}) CHECK(dsk::test::error_of([&] { ox::parse_dtype(dtype); }).exit_code() == 2);
  CHECK(ox::parse_dtype("f16") == ox::DType::F16);

  auto q = tiny(true, false);
  auto& q_proj = q.model->model->layers[0]->self_attn->q_proj;
  q_proj->set_quantized(dsk::quant::make_qlinear(dsk::quant::quantize_rtn(q_proj->weight.detach(), {8, 32, true})));
  auto eq = dsk::test::error_of([&] { ox::build_llama(q, {}); });
  CHECK(eq.exit_code() == 2);
  CHECK_THAT(eq.line(), Contains("quantized") && Contains("GGUF"));

  // architectures and rope scalings the graph does not implement (the loader refuses them too)
  auto other = tiny(true, false);
  other.config.model_type = "gemma";
  auto eo = dsk::test::error_of([&] { ox::build_llama(other, {}); });
  CHECK(eo.exit_code() == 2);
  CHECK_THAT(eo.line(), Contains("model_type 'gemma'"));
  auto yarn = tiny(true, false);
  yarn.config.rope_scaling_type = "yarn";
  auto ey = dsk::test::error_of([&] { ox::build_llama(yarn, {}); });
  CHECK(ey.exit_code() == 2);
  CHECK_THAT(ey.line(), Contains("rope_scaling type 'yarn'"));

  auto l = tiny(true, false);
  dsk::models::LoraSpec spec;
  spec.target_modules = {"q_proj"};
  dsk::models::apply_lora(l.model, spec);
  auto el = dsk::test::error_of([&] { ox::build_llama(l, {}); });
  CHECK(el.exit_code() == 2);
  CHECK_THAT(el.line(), Contains("LoRA"));
}
