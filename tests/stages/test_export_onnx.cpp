// dsk export, format onnx, end to end: stories260K exported with dynamic axes runs in ONNX Runtime
// (onnxruntime-node, CPU, installed by scripts/setup under .cache/onnxruntime-node) at several
// (batch, sequence) shapes with logits equal to dsk's own forward (what dsk eval computes) within
// 1e-4; the external-data export gives the same logits; fp16 stays close; the KV-cache export
// decodes greedily to dsk generate's tokens; Debian's python onnx full_check accepts every file;
// bad input exits 2. A missing onnxruntime-node fails these tests, it never skips them.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "models/generate.h"
#include "models/loader.h"
#include "export_test_util.h"
#include "stage_util.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "unit/models/models_test_util.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using dsk::test::max_abs_diff;
using dsk::test::run_cmd;
using nlohmann::json;

namespace {

constexpr int kNewTokens = 100;

std::string quote(const std::string& s) { return "'" + s + "'"; }

std::string onnxruntime_dir() {
  return dsk::test::node_package_dir("DSK_ONNXRUNTIME_NODE_DIR", "onnxruntime-node",
                                     "node_modules/onnxruntime-node/dist/index.js", "onnxruntime-node@1.30.0");
}

dsk::test::CmdResult export_onnx(const fs::path& out, const std::string& overrides) {
  return run_cmd(dsk::test::in_repo(dsk::test::dsk_bin() + " export configs/stories260k/export-onnx.yaml output=" +
                                    out.string() + " threads=2 " + overrides));
}

// Debian's python onnx: the checker with full_check (strict shape inference) on the written file.
void python_full_check(const fs::path& model) {
  auto r = run_cmd("/usr/bin/python3 -c 'import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True)' " +
                   quote(model.string()));
  INFO("python onnx: " << r.err);
  CHECK(r.exit_code == 0);
}

// Exports to `out` with `overrides` (exit 0 required), checks the file with python's full_check and
// returns dsk's JSON summary.
json export_ok(const fs::path& out, const std::string& overrides = "") {
  auto r = export_onnx(out, overrides);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  python_full_check(out);
  return json::parse(r.out);
}

json onnxruntime(const fs::path& model, const json& job, const fs::path& dir) {
  const fs::path job_file = dir / (model.filename().string() + ".job.json");
  std::ofstream(job_file) << job.dump();
  auto r = run_cmd("node " + dsk::test::src("tests/stages/onnxruntime_check.mjs") + " " + quote(onnxruntime_dir()) + " " +
                   quote(model.string()) + " " + quote(job_file.string()));
  INFO("node stderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  return json::parse(r.out);
}

struct Batch {
  int64_t batch, sequence;
  at::Tensor ids;  // [batch, sequence] int64
};

// Windows of real text (TinyStories) tokenized with the model's tokenizer, BOS first.
std::vector<Batch> batches(const std::vector<std::pair<int64_t, int64_t>>& shapes) {
  auto tok = dsk::tok::load_tokenizer(dsk::test::data_path("tok512.model"));
  std::string text = dsk::test::slurp(dsk::test::data_path("tinystories_valid_sample_30k.txt")).substr(0, 20000);
  std::vector<int32_t> ids = tok->encode(text, /*add_bos=*/true);
  std::vector<Batch> out;
  size_t at = 0;
  for (auto [B, T] : shapes) {
    at::Tensor t = at::empty({B, T}, at::kLong);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < T; ++i) t[b][i] = static_cast<int64_t>(ids.at(at++ % ids.size()));
    out.push_back({B, T, t});
  }
  return out;
}

json logits_job(const std::vector<Batch>& bs, const fs::path& prefix) {
  json runs = json::array();
  for (const auto& b : bs) {
    at::Tensor flat = b.ids.reshape({-1});
    runs.push_back({{"batch", b.batch},
                    {"sequence", b.sequence},
                    {"ids", std::vector<int64_t>(flat.data_ptr<int64_t>(), flat.data_ptr<int64_t>() + flat.numel())}});
  }
  return {{"mode", "logits"}, {"runs", runs}, {"out", prefix.string()}};
}

// ONNX Runtime's logits of run i, [B, T, V].
at::Tensor read_logits(const fs::path& prefix, size_t i, const Batch& b, int64_t V) {
  std::string raw = dsk::test::slurp(prefix.string() + "." + std::to_string(i) + ".f32");
  REQUIRE(raw.size() == static_cast<size_t>(b.batch * b.sequence * V) * sizeof(float));
  return at::from_blob(raw.data(), {b.batch, b.sequence, V}, at::kFloat).clone();
}

// dsk's logits for the same tokens: the model's forward, as dsk eval runs it.
struct Reference {
  explicit Reference(const std::string& path = dsk::test::data_path("stories260K.bin"))
      : lm(dsk::models::load_model(path)) {}
  dsk::models::LoadedModel lm;
  at::Tensor logits(const at::Tensor& ids) {
    at::NoGradGuard no_grad;
    lm.model->eval();
    return lm.model->forward(ids);
  }
};

std::vector<at::Tensor> ort_logits(const fs::path& model, const std::vector<Batch>& bs, const fs::path& dir,
                                   const std::string& tag, int64_t V, json extra = json::object()) {
  const fs::path prefix = dir / ("logits-" + tag);
  json job = logits_job(bs, prefix);
  job.update(extra);
  json got = onnxruntime(model, job, dir);
  REQUIRE(got["runs"].size() == bs.size());
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < bs.size(); ++i) {
    CHECK(got["runs"][i]["logits"] == std::vector<int64_t>{bs[i].batch, bs[i].sequence, V});
    out.push_back(read_logits(prefix, i, bs[i], V));
  }
  return out;
}

std::string trimmed(std::string s) {
  while (!s.empty() && s.front() == ' ') s.erase(0, 1);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

const std::vector<std::pair<int64_t, int64_t>> kShapes = {{1, 7}, {3, 19}, {2, 256}};

// ONNX Runtime's and dsk's logits at every shape of kShapes.
struct Compared {
  std::vector<Batch> bs;
  std::vector<at::Tensor> got, want;  // [B, T, V] each
};
Compared compare(Reference& ref, const fs::path& model, const fs::path& dir, const std::string& tag,
                 json extra = json::object()) {
  Compared c;
  c.bs = batches(kShapes);
  c.got = ort_logits(model, c.bs, dir, tag, ref.lm.config.vocab_size, std::move(extra));
  for (const auto& b : c.bs) c.want.push_back(ref.logits(b.ids));
  return c;
}

}  // namespace

TEST_CASE("export onnx: stories260K f32 with dynamic axes runs in ONNX Runtime at three shapes, logits equal dsk's within 1e-4",
          "[stages][export][onnx]") {
  onnxruntime_dir();  // fail first, clearly, when ONNX Runtime is missing
  fs::path dir = dsk::test::scratch_dir("export-onnx-f32");
  const fs::path out = dir / "stories260k.onnx";
  json summary = export_ok(out, "");
  CHECK(summary["format"] == "onnx");
  CHECK(summary["dtype"] == "f32");
  CHECK(summary["opset"] == 17);
  CHECK(summary["external_data"].is_null());
  CHECK(summary["inputs"] == std::vector<std::string>{"input_ids"});
  CHECK(summary["outputs"] == std::vector<std::string>{"logits"});

  Reference ref;
  Compared f32 = compare(ref, out, dir, "f32");
  for (size_t i = 0; i < f32.bs.size(); ++i) {
    const double diff = max_abs_diff(f32.got[i], f32.want[i]);
    WARN("f32 (batch " << f32.bs[i].batch << ", sequence " << f32.bs[i].sequence
                       << "): max |ONNX Runtime - dsk| logits = " << diff << " (" << summary["bytes"] << " bytes, "
                       << summary["seconds"] << " s export)");
    CHECK(diff <= 1e-4);
  }

  {  // the external-data export loads in ONNX Runtime and gives the inline export's logits
    const fs::path ext = dir / "external" / "stories260k.onnx";
    json s = export_ok(ext, "export.onnx.external_data=true");
    CHECK(s["external_data"] == ext.string() + ".data");
    REQUIRE(fs::exists(ext.string() + ".data"));
    CHECK(s["data_bytes"].get<uint64_t>() > s["bytes"].get<uint64_t>());
    CHECK(s["bytes"].get<uint64_t>() < 64 * 1024);  // the graph and the small constants only
    Compared e = compare(ref, ext, dir, "external");
    for (size_t i = 0; i < e.bs.size(); ++i) CHECK(max_abs_diff(e.got[i], f32.got[i]) == 0.0);
    WARN("external data: " << s["bytes"] << " bytes of graph + " << s["data_bytes"] << " bytes in "
                           << fs::path(s["external_data"].get<std::string>()).filename().string());
  }
}

TEST_CASE("export onnx: fp16 keeps the logits close to dsk's fp32 and the same greedy choices on most positions",
          "[stages][export][onnx]") {
  onnxruntime_dir();
  fs::path dir = dsk::test::scratch_dir("export-onnx-f16");
  const fs::path out = dir / "stories260k-f16.onnx";
  json summary = export_ok(out, "export.dtype=f16");
  CHECK(summary["dtype"] == "f16");
  Reference ref;
  Compared f16 = compare(ref, out, dir, "f16");
  for (size_t i = 0; i < f16.bs.size(); ++i) {
    const at::Tensor &got = f16.got[i], &want = f16.want[i];
    const double range = (want.max() - want.min()).item<double>();
    const double diff = max_abs_diff(got, want);
    const double agree = (got.argmax(-1) == want.argmax(-1)).to(at::kDouble).mean().item<double>();
    WARN("f16 (batch " << f16.bs[i].batch << ", sequence " << f16.bs[i].sequence << "): max |diff| " << diff
                       << " over a logit range of " << range << "; argmax agrees on " << agree * 100 << "% of positions");
    CHECK(diff <= 5e-3 * range);
    CHECK(agree >= 0.95);
  }
}

TEST_CASE("export onnx: the KV-cache export decodes greedily in ONNX Runtime to dsk generate's tokens",
          "[stages][export][onnx]") {
  onnxruntime_dir();
  fs::path dir = dsk::test::scratch_dir("export-onnx-kv");
  const fs::path out = dir / "stories260k-kv.onnx";
  json summary = export_ok(out, "export.onnx.kv_cache=true");
  CHECK(summary["kv_cache"] == true);
  CHECK(summary["inputs"].size() == 1 + 2 * 5);
  CHECK(summary["inputs"][1] == "past_key_values.0.key");
  CHECK(summary["outputs"][2] == "present.0.value");

  Reference ref;
  const auto& c = ref.lm.config;
  // dsk's greedy tokens from BOS, in-process (dsk generate's function) and from the CLI (text)
  dsk::models::SampleOptions opt;
  opt.max_new_tokens = kNewTokens;
  std::vector<int32_t> want = dsk::models::generate(ref.lm.model, {static_cast<int32_t>(c.bos_token_id)}, opt,
                                                    static_cast<int32_t>(c.eos_token_id));
  json job = {{"mode", "generate"},        {"prompt", {c.bos_token_id}},        {"max_new", kNewTokens},
              {"eos", c.eos_token_id},     {"kv_heads", c.num_key_value_heads}, {"head_dim", c.head_dim()},
              {"cache_type", "float32"}};
  json got = onnxruntime(out, job, dir);
  auto tokens = got["runs"][0]["tokens"].get<std::vector<int32_t>>();
  size_t same = 0;
  while (same < tokens.size() && same < want.size() && tokens[same] == want[same]) ++same;
  WARN("KV cache: ONNX Runtime decoded " << tokens.size() << " tokens greedily; the first " << same
                                         << " equal dsk's " << want.size());
  CHECK(tokens == want);
  auto r = run_cmd(dsk::test::in_repo(dsk::test::dsk_bin() + " generate configs/stories260k/generate.yaml threads=2 "
                                      "generate.max_new_tokens=" + std::to_string(kNewTokens)));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  auto tok = dsk::tok::load_tokenizer(dsk::test::data_path("tok512.model"));
  CHECK(trimmed(tok->decode(tokens)) == trimmed(r.out));

  // fp16 with an fp16 cache: the same story for at least its first 20 tokens (measured: all 100)
  const fs::path out16 = dir / "stories260k-kv-f16.onnx";
  export_ok(out16, "export.onnx.kv_cache=true export.dtype=f16");
  job["cache_type"] = "float16";
  auto tokens16 = onnxruntime(out16, job, dir)["runs"][0]["tokens"].get<std::vector<int32_t>>();
  size_t same16 = 0;
  while (same16 < tokens16.size() && same16 < want.size() && tokens16[same16] == want[same16]) ++same16;
  WARN("KV cache f16: the first " << same16 << " of " << tokens16.size() << " greedy tokens equal dsk's fp32 ones");
  CHECK(same16 >= 20);

  // the cache export with an empty past is the plain export: same logits at every shape
  Compared kv = compare(ref, out, dir, "kv",
                        {{"kv_heads", c.num_key_value_heads}, {"head_dim", c.head_dim()}, {"cache_type", "float32"}});
  for (size_t i = 0; i < kv.bs.size(); ++i) CHECK(max_abs_diff(kv.got[i], kv.want[i]) <= 1e-4);
}

TEST_CASE("export onnx: a Qwen2-style model (q/k/v biases, untied, head_dim 16 with 6 heads over hidden 32, 3 query heads per kv head, llama3 rope scaling) matches dsk in ONNX Runtime",
          "[stages][export][onnx]") {
  onnxruntime_dir();
  fs::path dir = dsk::test::scratch_dir("export-onnx-qwen2");
  {  // tests/unit/models' tiny GQA config (hidden 32, 2 kv heads), widened to 6 heads of 16
    dsk::models::LlamaConfig c = dsk::test::tiny_config(dsk::models::RopeStyle::Half, /*tied=*/false, /*bias=*/true);
    c.model_type = "qwen2";
    c.num_attention_heads = 6;
    c.head_dim_override = 16;
    c.vocab_size = 512;
    c.max_position_embeddings = 256;
    c.rope_theta = 1e6;
    c.rope_scaling_type = "llama3";
    c.rope_scaling_factor = 8;
    c.rope_original_max_position_embeddings = 64;
    dsk::models::Llama m = dsk::test::random_model(c, 5);
    dsk::models::save_model_hf((dir / "model").string(), m, {});
  }
  const fs::path out = dir / "qwen2-kv.onnx";
  json summary = export_ok(out, "model.path=" + (dir / "model").string() + " export.onnx.kv_cache=true");
  Reference ref((dir / "model").string());
  const auto& c = ref.lm.config;
  REQUIRE(c.rope_scaling_type == "llama3");
  Compared cmp = compare(ref, out, dir, "qwen2",
                         {{"kv_heads", c.num_key_value_heads}, {"head_dim", c.head_dim()}, {"cache_type", "float32"}});
  for (size_t i = 0; i < cmp.bs.size(); ++i) {
    const double diff = max_abs_diff(cmp.got[i], cmp.want[i]);
    const double range = (cmp.want[i].max() - cmp.want[i].min()).item<double>();
    WARN("qwen2-style (batch " << cmp.bs[i].batch << ", sequence " << cmp.bs[i].sequence << "): max |diff| " << diff
                               << " over a logit range of " << range);
    CHECK(diff <= 1e-4);
    CHECK(range > 1.0);  // not a degenerate model
  }
  dsk::models::SampleOptions opt;
  opt.max_new_tokens = 60;
  std::vector<int32_t> want = dsk::models::generate(ref.lm.model, {1}, opt, 2);
  json job = {{"mode", "generate"},    {"prompt", {1}},           {"max_new", 60},
              {"eos", 2},              {"kv_heads", c.num_key_value_heads}, {"head_dim", c.head_dim()},
              {"cache_type", "float32"}};
  auto tokens = onnxruntime(out, job, dir)["runs"][0]["tokens"].get<std::vector<int32_t>>();
  WARN("qwen2-style greedy: " << tokens.size() << " tokens, " << std::set<int32_t>(tokens.begin(), tokens.end()).size()
                              << " distinct");
  CHECK(tokens == want);
}

TEST_CASE("export onnx: bad input (dtype, opset, existing output, quantized source) exits 2 with a clear message",
          "[stages][export][onnx]") {
  fs::path dir = dsk::test::scratch_dir("export-onnx-bad-input");
  for (const std::string dtype : {"bf16", "q8_0"}) {
    auto r = export_onnx(dir / "a.onnx", "export.dtype=" + dtype);
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.err, Contains("export.dtype '" + dtype + "'") && Contains("onnx") && Contains("f16"));
  }
  for (const std::string opset : {"16", "18"}) {
    auto r = export_onnx(dir / "a.onnx", "export.onnx.opset=" + opset);
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.err, Contains("export.onnx.opset " + opset) && Contains("opset 17"));
  }
  CHECK(!fs::exists(dir / "a.onnx"));

  dsk::test::check_existing_output(dir / "exists.onnx", export_onnx);

  // a dsk quantize checkpoint: refused, pointing at GGUF
  auto rq = export_onnx(dir / "q8.onnx", "model.path=" + dsk::test::quantize_stories(dir / "q8").string());
  CHECK(rq.exit_code == 2);
  CHECK_THAT(rq.err, Contains("quantized") && Contains("GGUF") && Contains("q8_0"));
  CHECK(!fs::exists(dir / "q8.onnx"));
  for (const auto& e : fs::directory_iterator(dir))  // no temporary left behind
    CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
}
