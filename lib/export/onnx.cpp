// ONNX export of a Llama-family model (export/onnx.h): a small graph builder over Debian's ONNX
// protobuf classes, the Llama graph, and the writer (inline or external data, checker, shape
// inference, temporary directory + rename).
#include "export/onnx.h"

#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "export/output.h"
#include "models/quantized.h"

namespace pb = ::onnx;

namespace dsk::onnx {

namespace stdfs = std::filesystem;

DType parse_dtype(const std::string& s) {
  if (s == "f32") return DType::F32;
  if (s == "f16") return DType::F16;
  fail_usage_hint(fmt::format("export.dtype '{}' is not available for export.format onnx", s), "use f32 or f16");
}

void check_options(const ExportOptions& opt) {
  if (opt.opset != kOpset)
    fail_usage_hint(
        fmt::format("export.onnx.opset {} is not supported: dsk writes opset {} graphs only", opt.opset, kOpset),
        opt.opset < kOpset ? "opset 17 is the minimum (every ONNX Runtime since 1.14 runs it): set export.onnx.opset=17"
                           : "the ONNX library dsk checks its graphs with (Debian's 1.12) knows opsets up to 17 "
                             "(and opset 18 changed ReduceMean's axes into an input): set export.onnx.opset=17");
}

stdfs::path data_path(const stdfs::path& model_path) { return model_path.string() + ".data"; }

// ---------------------------------------------------------------------------
// Graph builder

namespace {

int32_t proto_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return pb::TensorProto::FLOAT;
    case at::kHalf: return pb::TensorProto::FLOAT16;
    case at::kLong: return pb::TensorProto::INT64;
    default: fail("onnx export: no ONNX type for {}", c10::toString(t));
  }
}

// One node attribute.
struct Attr {
  std::string name;
  enum Kind { Int, Ints } kind;
  int64_t i = 0;
  std::vector<int64_t> ints;
};
Attr attr(const std::string& name, int64_t v) { return {name, Attr::Int, v, {}}; }
Attr attr(const std::string& name, std::vector<int64_t> v) { return {name, Attr::Ints, 0, std::move(v)}; }

// An initializer: a tensor converted to its stored dtype only when written.
struct Initializer {
  std::string name;
  at::Tensor source;       // any float/int tensor (shares storage with the model)
  at::ScalarType type;     // stored dtype
  uint64_t bytes() const { return static_cast<uint64_t>(source.numel()) * c10::elementSize(type); }
  at::Tensor encoded() const { return source.detach().to(at::kCPU, type).contiguous(); }
};

class Graph {
 public:
  explicit Graph(pb::GraphProto* g) : g_(g) {}

  // Adds a node of type `type`; returns its output: `output`, or a fresh name under the current
  // scope ("/layers.3/attn/Gemm_57", also the node's name).
  std::string op(const std::string& type, const std::vector<std::string>& inputs, const std::vector<Attr>& attrs = {},
                 const std::string& output = "") {
    pb::NodeProto* n = g_->add_node();
    n->set_op_type(type);
    n->set_name(fmt::format("/{}{}_{}", scope_, type, counter_++));
    for (const auto& in : inputs) n->add_input(in);
    n->add_output(output.empty() ? n->name() : output);
    for (const auto& a : attrs) {
      pb::AttributeProto* p = n->add_attribute();
      p->set_name(a.name);
      if (a.kind == Attr::Int) {
        p->set_type(pb::AttributeProto::INT);
        p->set_i(a.i);
      } else {
        p->set_type(pb::AttributeProto::INTS);
        for (int64_t v : a.ints) p->add_ints(v);
      }
    }
    return n->output(0);
  }

  // A weight (or table) under its own name, stored as `type`.
  std::string weight(const std::string& name, const at::Tensor& t, at::ScalarType type) {
    inits_.push_back({name, t, type});
    return name;
  }
  // Small constants, deduplicated by value: int64 vectors (shape/axes), scalars.
  std::string ints(const std::vector<int64_t>& v) {
    const std::string name = "const.i64." + join(v);
    if (!consts_.count(name)) {
      consts_.insert(name);
      inits_.push_back({name, at::tensor(v, at::kLong), at::kLong});
    }
    return name;
  }
  std::string scalar_int(int64_t v) {
    const std::string name = "const.i64.scalar." + std::to_string(v);
    if (!consts_.count(name)) {
      consts_.insert(name);
      inits_.push_back({name, at::scalar_tensor(v, at::kLong), at::kLong});
    }
    return name;
  }
  std::string scalar_f32(float v, const std::string& tag) {
    const std::string name = "const.f32." + tag;
    if (!consts_.count(name)) {
      consts_.insert(name);
      inits_.push_back({name, at::scalar_tensor(v, at::kFloat), at::kFloat});
    }
    return name;
  }

  void set_scope(const std::string& s) { scope_ = s.empty() ? "" : s + "/"; }
  std::vector<Initializer>& initializers() { return inits_; }

 private:
  static std::string join(const std::vector<int64_t>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? "_" : "") + std::to_string(v[i]);
    return s;
  }
  pb::GraphProto* g_;
  std::string scope_;
  int64_t counter_ = 0;
  std::set<std::string> consts_;
  std::vector<Initializer> inits_;
};

// A graph input or output with dims that are numbers or names (dim_param).
void add_value_info(pb::ValueInfoProto* v, const std::string& name, int32_t elem,
                    const std::vector<std::string>& dims) {
  v->set_name(name);
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(elem);
  auto* shape = tt->mutable_shape();
  for (const auto& d : dims) {
    auto* dim = shape->add_dim();
    if (!d.empty() && std::all_of(d.begin(), d.end(), ::isdigit))
      dim->set_dim_value(std::stoll(d));
    else
      dim->set_dim_param(d);
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Model

struct Model::Impl {
  pb::ModelProto proto;               // the graph; initializers are added when serialized
  std::vector<Initializer> inits;
  ExportReport report;

  // Fills `m`'s initializers: inline raw data; external entries (data written to `data`, a file
  // named `data_name`) for those of kExternalMinBytes or more; or (Shapes) those without their
  // bytes, for shape inference.
  enum class Data { Inline, External, Shapes };
  void add_initializers(pb::ModelProto& m, Data mode, std::ostream* data, const std::string& data_name) const {
    uint64_t offset = 0;
    for (const auto& init : inits) {
      pb::TensorProto* t = m.mutable_graph()->add_initializer();
      t->set_name(init.name);
      t->set_data_type(proto_type(init.type));
      for (int64_t d : init.source.sizes()) t->add_dims(d);
      const uint64_t n = init.bytes();
      if (mode == Data::Shapes && n >= kExternalMinBytes) continue;
      at::Tensor v = init.encoded();
      if (mode == Data::External && n >= kExternalMinBytes) {
        const uint64_t pad = (kExternalAlign - offset % kExternalAlign) % kExternalAlign;
        static const std::string zeros(kExternalAlign, '\0');
        data->write(zeros.data(), static_cast<std::streamsize>(pad));
        offset += pad;
        data->write(static_cast<const char*>(v.data_ptr()), static_cast<std::streamsize>(n));
        if (!*data) fail("writing the weights of '{}' failed (disk full?)", init.name);
        t->set_data_location(pb::TensorProto::EXTERNAL);
        auto entry = [&](const char* key, const std::string& value) {
          auto* e = t->add_external_data();
          e->set_key(key);
          e->set_value(value);
        };
        entry("location", data_name);
        entry("offset", std::to_string(offset));
        entry("length", std::to_string(n));
        offset += n;
      } else {
        t->set_raw_data(v.data_ptr(), n);
      }
    }
  }

  // Strict shape inference (what onnx.checker.check_model(full_check=True) adds to the checker):
  // every node's types must agree and its shapes must be inferable. Runs on the graph without
  // the weights' bytes (only the small constants' values matter to it).
  void infer_shapes() const {
    pb::ModelProto m = proto;
    add_initializers(m, Data::Shapes, nullptr, "");
    try {
      pb::shape_inference::InferShapes(m, pb::OpSchemaRegistry::Instance(),
                                       pb::ShapeInferenceOptions(/*check_type=*/true, /*strict=*/1));
    } catch (const std::exception& e) {
      fail("onnx export: shape inference rejected the graph: {}", e.what());
    }
  }
};

Model::Model() : impl_(std::make_unique<Impl>()) {}
Model::~Model() = default;
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;

const ExportReport& Model::report() const { return impl_->report; }

bool Model::wants_external(const std::string& mode) const {
  const bool over = impl_->report.weight_bytes + impl_->proto.ByteSizeLong() >= kProtobufLimit;
  if (mode == "false" && over)
    fail_usage_hint(fmt::format("the model's weights ({:.2f} GiB) do not fit in one ONNX file (protobuf's 2 GiB limit)",
                                impl_->report.weight_bytes / 1073741824.0),
                    "set export.onnx.external_data=auto (or true): the weights then go to OUTPUT.data");
  return mode == "true" || (mode != "false" && over);
}

std::string Model::serialize() const {
  if (wants_external("auto")) fail("onnx export: the model is over protobuf's 2 GiB limit; write it with external data");
  pb::ModelProto m = impl_->proto;
  impl_->add_initializers(m, Impl::Data::Inline, nullptr, "");
  try {
    pb::checker::check_model(m);
  } catch (const std::exception& e) {
    fail("onnx export: the ONNX checker rejected the model: {}", e.what());
  }
  impl_->infer_shapes();
  std::string out;
  if (!m.SerializeToString(&out)) fail("onnx export: serializing the model failed");
  return out;
}

void Model::write(const stdfs::path& path, bool overwrite, bool external) const {
  const stdfs::path data = data_path(path);
  export_out::check_output_file(path, overwrite);
  if (external) export_out::check_output_file(data, overwrite);
  const stdfs::path dir = path.has_parent_path() ? path.parent_path() : stdfs::path(".");
  // Both files are made under their final names in OUTPUT.tmp.PID/, so the checker resolves the
  // data file's relative location there; then the data file and the model are renamed out.
  const stdfs::path tmp = path.string() + ".tmp." + std::to_string(::getpid());
  const stdfs::path tmp_model = tmp / path.filename(), tmp_data = tmp / data.filename();
  try {
    stdfs::remove_all(tmp);
    stdfs::create_directories(tmp);
    pb::ModelProto m = impl_->proto;
    if (external) {
      std::ofstream out(tmp_data, std::ios::binary | std::ios::trunc);
      if (!out) fail("cannot create '{}'", tmp_data.string());
      impl_->add_initializers(m, Impl::Data::External, &out, data.filename().string());
      out.flush();
      if (!out) fail("writing '{}' failed (disk full?)", tmp_data.string());
    } else {
      impl_->add_initializers(m, Impl::Data::Inline, nullptr, "");
    }
    {
      std::ofstream out(tmp_model, std::ios::binary | std::ios::trunc);
      if (!out) fail("cannot create '{}'", tmp_model.string());
      if (!m.SerializeToOstream(&out)) fail("writing '{}' failed (disk full?)", tmp_model.string());
      out.flush();
      if (!out) fail("writing '{}' failed (disk full?)", tmp_model.string());
    }
    m.Clear();
    try {
      pb::checker::check_model(tmp_model.string());  // reads the file back; sees the data file
    } catch (const std::exception& e) {
      fail("onnx export: the ONNX checker rejected '{}': {}", path.string(), e.what());
    }
    impl_->infer_shapes();
    if (external) fs::fsync_path(tmp_data);
    fs::fsync_path(tmp_model);
    if (external) stdfs::rename(tmp_data, data);
    stdfs::rename(tmp_model, path);
    fs::fsync_path(dir);
    stdfs::remove_all(tmp);
  } catch (...) {
    std::error_code ec;
    stdfs::remove_all(tmp, ec);
    throw;
  }
}

// ---------------------------------------------------------------------------
// The Llama graph

Model build_llama(models::LoadedModel& lm, const ExportOptions& opt) {
  check_options(opt);
  for (auto& [name, lin] : models::linear_layers(lm.model))
    if (lin->has_lora())
      fail_usage_hint(fmt::format("layer '{}' carries an unmerged LoRA adapter", name),
                      "export the merged model (dsk finetune writes it as model/ with save.merged=true)");
  if (models::is_quantized(lm.model))
    fail_usage_hint("the model is quantized (dsk quantize): the ONNX export writes float weights only",
                    "export quantized models as GGUF (export.format=gguf export.dtype=q8_0 or q4_0), or export the "
                    "full-precision model as ONNX");
  if (lm.config.model_type != "llama" && lm.config.model_type != "mistral" && lm.config.model_type != "qwen2")
    fail_usage(fmt::format("model_type '{}' has no ONNX graph in dsk (llama, mistral, qwen2)", lm.config.model_type));
  const std::string& rs = lm.config.rope_scaling_type;
  if (!rs.empty() && rs != "linear" && rs != "llama3" && rs != "default")
    fail_usage(fmt::format("rope_scaling type '{}' has no ONNX graph in dsk (linear, llama3)", rs));
  const bool was_interleaved = lm.config.rope_style == models::RopeStyle::Interleaved;
  models::convert_to_half_rope(lm);  // the graph implements the Half layout only

  const models::LlamaConfig& c = lm.config;
  models::Llama& model = lm.model;
  const at::ScalarType act = opt.dtype == DType::F16 ? at::kHalf : at::kFloat;
  const int32_t act_pb = proto_type(act);
  const int64_t C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, G = H / KV,
                D = c.head_dim(), V = c.vocab_size, L = c.num_hidden_layers;

  Model result;
  Model::Impl& M = *result.impl_;
  ExportReport& rep = M.report;
  if (c.model_type == "mistral")
    rep.warnings.push_back("Mistral's sliding window is not in the graph (dsk does not implement it either)");

  pb::ModelProto& mp = M.proto;
  mp.set_ir_version(kIrVersion);
  mp.set_producer_name("dsk");
  mp.set_producer_version(DSK_VERSION);
  mp.set_domain("ai.dsk");
  mp.set_model_version(1);
  mp.set_doc_string(opt.doc);
  auto* opset = mp.add_opset_import();
  opset->set_domain("");
  opset->set_version(opt.opset);
  auto meta = [&](const std::string& k, const std::string& v) {
    auto* p = mp.add_metadata_props();
    p->set_key(k);
    p->set_value(v);
  };
  meta("model_type", c.model_type);
  meta("dtype", opt.dtype == DType::F16 ? "f16" : "f32");
  meta("kv_cache", opt.kv_cache ? "true" : "false");
  meta("rope_style", was_interleaved ? "half (q/k rows permuted from the interleaved llama2.c layout)" : "half");
  meta("rope_scaling", rs.empty() ? "none" : rs);
  meta("bos_token_id", std::to_string(c.bos_token_id));
  meta("eos_token_id", std::to_string(c.eos_token_id));
  meta("vocab_size", std::to_string(V));
  meta("num_hidden_layers", std::to_string(L));
  meta("num_attention_heads", std::to_string(H));
  meta("num_key_value_heads", std::to_string(KV));
  meta("head_dim", std::to_string(D));
  meta("max_position_embeddings", std::to_string(c.max_position_embeddings));
  for (const auto& [k, v] : opt.metadata) meta(k, v);

  pb::GraphProto* gp = mp.mutable_graph();
  gp->set_name("dsk_llama");
  Graph g(gp);

  // inputs and outputs
  add_value_info(gp->add_input(), "input_ids", pb::TensorProto::INT64, {"batch", "sequence"});
  rep.inputs.push_back("input_ids");
  add_value_info(gp->add_output(), "logits", pb::TensorProto::FLOAT, {"batch", "sequence", std::to_string(V)});
  rep.outputs.push_back("logits");
  // past_key_values.{i}.key/value [batch, KV, past_sequence, D] in; present.{i}.* [.., total_sequence, ..] out
  for (int64_t i = 0; opt.kv_cache && i < L; ++i)
    for (const char* kind : {"key", "value"})
      for (bool in : {true, false}) {
        const std::string name = fmt::format("{}.{}.{}", in ? "past_key_values" : "present", i, kind);
        add_value_info(in ? gp->add_input() : gp->add_output(), name, act_pb,
                       {"batch", std::to_string(KV), in ? "past_sequence" : "total_sequence", std::to_string(D)});
        (in ? rep.inputs : rep.outputs).push_back(name);
      }

  // ---- positions, rotary tables, causal mask
  g.set_scope("positions");
  const std::string B1 = g.op("Shape", {"input_ids"}, {attr("start", 0), attr("end", 1)});  // [1]
  const std::string T1 = g.op("Shape", {"input_ids"}, {attr("start", 1), attr("end", 2)});  // [1]
  const std::string P1 = opt.kv_cache ? g.op("Shape", {"past_key_values.0.key"}, {attr("start", 2), attr("end", 3)})
                                      : g.ints({0});                                           // [1]
  const std::string S1 = g.op("Add", {P1, T1});                                                // [1]
  const std::string P0 = g.op("Squeeze", {P1, g.ints({0})});                                   // []
  const std::string S0 = g.op("Squeeze", {S1, g.ints({0})});                                   // []
  const std::string pos = g.op("Range", {P0, S0, g.scalar_int(1)});                            // [T]
  const std::string kpos = g.op("Range", {g.scalar_int(0), S0, g.scalar_int(1)});              // [S]
  // query t (position P + t) sees keys 0 .. P + t: masked where key position > query position
  const std::string masked = g.op("Greater", {g.op("Unsqueeze", {kpos, g.ints({0})}),          // [1, S]
                                              g.op("Unsqueeze", {pos, g.ints({1})})});         // [T, 1] -> [T, S]
  {
    const int64_t N = c.max_position_embeddings;
    at::Tensor freqs = at::outer(at::arange(N, at::kFloat), models::rope_inv_freq(c));  // [N, D/2] fp32
    at::Tensor cs = freqs.cos(), sn = freqs.sin();
    g.weight("rope.cos", at::cat({cs, cs}, -1), act);   // [N, D]
    g.weight("rope.sin", at::cat({-sn, sn}, -1), act);  // [N, D]: the sign of rotate_half folded in
  }
  const std::string cos = g.op("Unsqueeze", {g.op("Gather", {"rope.cos", pos}, {attr("axis", 0)}), g.ints({0, 2})});
  const std::string sin = g.op("Unsqueeze", {g.op("Gather", {"rope.sin", pos}, {attr("axis", 0)}), g.ints({0, 2})});
  // cos, sin: [1, T, 1, D]

  auto linear = [&](const std::string& x, models::LoraLinearImpl* lin, const std::string& name) {
    std::vector<std::string> in = {x, g.weight(name + ".weight", lin->weight, act)};
    if (lin->bias.defined()) in.push_back(g.weight(name + ".bias", lin->bias, act));
    return g.op("Gemm", in, {attr("transB", 1)});  // [N, in] -> [N, out]
  };
  const std::string eps = g.scalar_f32(static_cast<float>(c.rms_norm_eps), "rms_eps");
  // x / sqrt(mean(x^2) + eps) in fp32, back to act, times w: [N, C] -> [N, C]
  auto rms_norm = [&](const std::string& x, const at::Tensor& w, const std::string& name) {
    const std::string x32 = act == at::kFloat ? x : g.op("Cast", {x}, {attr("to", pb::TensorProto::FLOAT)});
    const std::string ms = g.op("ReduceMean", {g.op("Mul", {x32, x32})}, {attr("axes", std::vector<int64_t>{-1})});
    std::string y = g.op("Div", {x32, g.op("Sqrt", {g.op("Add", {ms, eps})})});
    if (act != at::kFloat) y = g.op("Cast", {y}, {attr("to", act_pb)});
    return g.op("Mul", {y, g.weight(name, w, act)});
  };
  // x [B, T, n, D] -> rotated: x * cos + rotate_half(x) * sin
  auto rope = [&](const std::string& x) {
    const std::string lo = g.op("Slice", {x, g.ints({0}), g.ints({D / 2}), g.ints({-1})});
    const std::string hi = g.op("Slice", {x, g.ints({D / 2}), g.ints({D}), g.ints({-1})});
    const std::string swapped = g.op("Concat", {hi, lo}, {attr("axis", -1)});
    return g.op("Add", {g.op("Mul", {x, cos}), g.op("Mul", {swapped, sin})});
  };
  const std::string neg_inf = g.scalar_f32(-std::numeric_limits<float>::infinity(), "neg_inf");
  const std::string scale = g.scalar_f32(static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))), "attn_scale");
  auto to_f32 = [&](const std::string& x) {
    return act == at::kFloat ? x : g.op("Cast", {x}, {attr("to", pb::TensorProto::FLOAT)});
  };
  auto to_act = [&](const std::string& x) { return act == at::kFloat ? x : g.op("Cast", {x}, {attr("to", act_pb)}); };

  // ---- embeddings
  g.set_scope("embed");
  const std::string embed = g.weight("model.embed_tokens.weight", model->model->embed_tokens->weight, act);  // [V, C]
  std::string h = g.op("Reshape", {g.op("Gather", {embed, "input_ids"}, {attr("axis", 0)}), g.ints({-1, C})});  // [N, C]
  const std::string shape_btnd_q = g.op("Concat", {B1, g.ints({-1, H, D})}, {attr("axis", 0)});
  const std::string shape_btnd_k = g.op("Concat", {B1, g.ints({-1, KV, D})}, {attr("axis", 0)});

  // ---- decoder layers
  for (int64_t i = 0; i < L; ++i) {
    auto& layer = model->model->layers[static_cast<size_t>(i)];
    auto& at_ = layer->self_attn;
    const std::string p = fmt::format("model.layers.{}.", i);
    g.set_scope(fmt::format("layers.{}/attn", i));
    const std::string xn = rms_norm(h, layer->input_layernorm->weight, p + "input_layernorm.weight");
    std::string q = rope(g.op("Reshape", {linear(xn, at_->q_proj.get(), p + "self_attn.q_proj"), shape_btnd_q}));
    std::string k = rope(g.op("Reshape", {linear(xn, at_->k_proj.get(), p + "self_attn.k_proj"), shape_btnd_k}));
    std::string v = g.op("Reshape", {linear(xn, at_->v_proj.get(), p + "self_attn.v_proj"), shape_btnd_k});
    // q [B, T, H, D] -> [B, KV, G, T, D] (head h = kv * G + g); k, v [B, T, KV, D] -> [B, KV, T, D]
    q = g.op("Transpose", {g.op("Reshape", {q, g.ints({0, 0, KV, G, D})})}, {attr("perm", std::vector<int64_t>{0, 2, 3, 1, 4})});
    k = g.op("Transpose", {k}, {attr("perm", std::vector<int64_t>{0, 2, 1, 3})});
    v = g.op("Transpose", {v}, {attr("perm", std::vector<int64_t>{0, 2, 1, 3})});
    if (opt.kv_cache) {  // [B, KV, P, D] ++ [B, KV, T, D] -> [B, KV, S, D], also an output
      k = g.op("Concat", {fmt::format("past_key_values.{}.key", i), k}, {attr("axis", 2)}, fmt::format("present.{}.key", i));
      v = g.op("Concat", {fmt::format("past_key_values.{}.value", i), v}, {attr("axis", 2)},
               fmt::format("present.{}.value", i));
    }
    const std::string kt = g.op("Transpose", {g.op("Unsqueeze", {k, g.ints({2})})},
                                {attr("perm", std::vector<int64_t>{0, 1, 2, 4, 3})});  // [B, KV, 1, D, S]
    std::string scores = g.op("Mul", {to_f32(g.op("MatMul", {q, kt})), scale});          // [B, KV, G, T, S] fp32
    scores = g.op("Where", {masked, neg_inf, scores});
    const std::string probs = to_act(g.op("Softmax", {scores}, {attr("axis", -1)}));
    std::string o = g.op("MatMul", {probs, g.op("Unsqueeze", {v, g.ints({2})})});           // [B, KV, G, T, D]
    o = g.op("Transpose", {o}, {attr("perm", std::vector<int64_t>{0, 3, 1, 2, 4})});          // [B, T, KV, G, D]
    o = g.op("Reshape", {o, g.ints({-1, H * D})});                                             // [N, H*D]
    h = g.op("Add", {h, linear(o, at_->o_proj.get(), p + "self_attn.o_proj")});

    g.set_scope(fmt::format("layers.{}/mlp", i));
    auto& mlp = layer->mlp;
    const std::string xm = rms_norm(h, layer->post_attention_layernorm->weight, p + "post_attention_layernorm.weight");
    const std::string gate = linear(xm, mlp->gate_proj.get(), p + "mlp.gate_proj");
    const std::string up = linear(xm, mlp->up_proj.get(), p + "mlp.up_proj");
    const std::string act_out = g.op("Mul", {g.op("Mul", {gate, g.op("Sigmoid", {gate})}), up});  // silu(gate) * up
    h = g.op("Add", {h, linear(act_out, mlp->down_proj.get(), p + "mlp.down_proj")});
  }

  // ---- final norm and classifier
  g.set_scope("head");
  const std::string hn = rms_norm(h, model->model->norm->weight, "model.norm.weight");
  const std::string cls = c.tie_word_embeddings ? embed : g.weight("lm_head.weight", model->lm_head->weight, act);
  const std::string lg = to_f32(g.op("Gemm", {hn, cls}, {attr("transB", 1)}));  // [N, V] fp32
  g.op("Reshape", {lg, g.op("Concat", {B1, g.ints({-1, V})}, {attr("axis", 0)})}, {}, "logits");

  M.inits = std::move(g.initializers());
  rep.nodes = gp->node_size();
  rep.initializers = static_cast<int64_t>(M.inits.size());
  for (const auto& init : M.inits) rep.weight_bytes += init.bytes();
  return result;
}

}  // namespace dsk::onnx
