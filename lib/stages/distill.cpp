// dsk distill: teacher -> student knowledge distillation on the shared training loop
// (stages/trainer.h): everything finetune has (full or LoRA student, schedules, checkpoints,
// resume, data parallel) with a distillation loss (docs/distillation.md):
//
//   loss = alpha * T^2 * D(teacher_T || student_T) + (1 - alpha) * CE(student, data)
//          + hidden.weight * mean over layer_map of H(P_i(student layer s_i), teacher layer t_i)
//
// D: forward KL, reverse KL or Jensen-Shannon at temperature T (optionally over the teacher's
// top-k tokens only); H: MSE or cosine distance between hidden states (layer outputs, before the
// final norm), P_i a learned linear projection when the widths differ (trained with the student,
// kept in checkpoints, not in model/).
//
// The student: the teacher's own layers (student.init.from: teacher, layers: [...]), another
// model directory (from: path), or a fresh model of the teacher's family with other sizes
// (from: scratch). One tokenizer for both: a vocabulary mismatch is a usage error before any
// compute. The training text: data.train (a file), or sequences sampled from the teacher
// (data.train.source: teacher), which are written to output_dir/teacher_samples.i32.
#include <ATen/ATen.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"
#include "data/source.h"
#include "models/generate.h"
#include "models/loader.h"
#include "models/surgery.h"
#include "stages/common.h"
#include "stages/stages.h"
#include "stages/trainer.h"

namespace dsk::stages {
namespace {

namespace stdfs = std::filesystem;

int64_t parse_index(const std::string& text, const std::string& key) {
  try {
    size_t used = 0;
    long long v = std::stoll(text, &used);
    if (used == text.size()) return static_cast<int64_t>(v);
  } catch (const std::exception&) {
  }
  fail_usage_hint(fmt::format("{}: '{}' is not a layer index", key, text), "write layer indices as integers, e.g. [0, 2, 4]");
}

struct Distill {
  const config::Config& cfg;
  train::Divergence kind = train::Divergence::ForwardKL;
  double temperature = 1.0, alpha = 0.5, hidden_weight = 0.0;
  int64_t top_k = 0;
  train::HiddenLoss hidden_kind = train::HiddenLoss::MSE;
  std::vector<std::pair<int64_t, int64_t>> layer_map;  // (student layer, teacher layer)
  std::vector<at::Tensor> proj;                        // per pair: [C_teacher, C_student] or undefined
  std::vector<int64_t> init_layers;                    // student.init.from teacher: the teacher layers kept
  stdfs::path samples_tmp;                             // data.train.source teacher: before output_dir exists

  explicit Distill(const config::Config& c) : cfg(c) {}

  // Loss settings, checked before anything is loaded.
  void read_settings() {
    kind = train::divergence_from(cfg.get_string("distill.loss"));
    temperature = cfg.get_float("distill.temperature");
    alpha = cfg.get_float("distill.alpha");
    top_k = cfg.get_int("distill.top_k");
    hidden_weight = cfg.get_float("distill.hidden.weight");
    hidden_kind = train::hidden_loss_from(cfg.get_string("distill.hidden.loss"));
    if (!(temperature > 0)) fail_usage_hint("distill.temperature must be > 0", "set distill.temperature=2.0");
    if (!(alpha >= 0 && alpha <= 1))
      fail_usage_hint(fmt::format("distill.alpha {} is outside [0, 1]", alpha),
                      "alpha weights the distillation term, 1 - alpha the cross-entropy: use e.g. 0.5");
    if (top_k < 0) fail_usage_hint("distill.top_k must be >= 0", "0 keeps the whole teacher distribution");
    if (hidden_weight < 0) fail_usage_hint("distill.hidden.weight must be >= 0", "0 turns the hidden-state loss off");
    if (alpha == 0 && hidden_weight == 0)
      log::warn("distill.alpha 0 and no hidden-state loss: this is plain cross-entropy training of the student");
  }

  models::LoadedModel load_student(Trainer& t) {
    const std::string from = cfg.get_string("student.init.from");
    models::LoadedModel teacher = load_model_for(cfg, t.rt, "teacher.path");
    if (models::is_quantized(teacher.model))
      log::info("teacher '{}' is quantized: its forward dequantizes per call", cfg.get_string("teacher.path"));
    const models::LlamaConfig& tc = teacher.config;
    models::LoadedModel student;
    if (from == "teacher") {
      if (models::is_quantized(teacher.model))
        fail_usage_hint("student.init.from: teacher needs a full-precision teacher (its layers become the student's)",
                        "distill from the full-precision model, or give the student its own student.path");
      std::set<int64_t> seen;
      for (const auto& s : cfg.get_list("student.init.layers")) {
        int64_t l = parse_index(s, "student.init.layers");
        if (l < 0 || l >= tc.num_hidden_layers)
          fail_usage_hint(fmt::format("student.init.layers: {} is not a layer of the teacher (it has layers 0-{})", l,
                                      tc.num_hidden_layers - 1),
                          "list teacher layer indices, e.g. [0, 2, 4]");
        if (!seen.insert(l).second || (!init_layers.empty() && l < init_layers.back()))
          fail_usage_hint(fmt::format("student.init.layers: {} is repeated or out of order", l),
                          "list each teacher layer once, ascending");
        init_layers.push_back(l);
      }
      models::LoadedModel copy = load_model_for(cfg, t.rt, "teacher.path");
      models::StructuredPlan plan;
      plan.layers_keep = init_layers;  // empty: every layer (a same-size student)
      student.model = models::apply_structured_plan(copy.model, plan);
      student.config = student.model->config();
      student.path = cfg.get_string("teacher.path");
      if (init_layers.empty())
        for (int64_t l = 0; l < tc.num_hidden_layers; ++l) init_layers.push_back(l);
    } else if (from == "path") {
      if (!cfg.has("student.path") || cfg.get_string("student.path").empty())
        fail_usage_hint("student.init.from: path needs student.path", "set student.path to the student model");
      student = models::load_model(cfg.get_string("student.path"), t.rt.dtype, t.rt.device);
      check_same_vocabulary(tc, student.config, *t.tok);
    } else {  // scratch: the teacher's family with other sizes, Hugging Face init from `seed`
      models::LlamaConfig c = tc;
      auto size = [&](const char* key, int64_t teacher_value) {
        int64_t v = cfg.get_int(std::string("student.") + key);
        if (v < 0) fail_usage_hint(fmt::format("student.{} must be >= 0", key), "0 takes the teacher's value");
        return v > 0 ? v : teacher_value;
      };
      c.hidden_size = size("hidden_size", tc.hidden_size);
      c.intermediate_size = size("intermediate_size", tc.intermediate_size);
      c.num_hidden_layers = size("num_hidden_layers", tc.num_hidden_layers);
      c.num_attention_heads = size("num_attention_heads", tc.num_attention_heads);
      c.num_key_value_heads = size("num_key_value_heads", std::min(tc.num_key_value_heads, c.num_attention_heads));
      c.head_dim_override = 0;
      if (c.hidden_size % c.num_attention_heads != 0)
        fail_usage_hint(fmt::format("student.hidden_size {} is not a multiple of student.num_attention_heads {}",
                                    c.hidden_size, c.num_attention_heads),
                        "choose sizes with hidden_size = heads x head_dim");
      c.quantization_config.clear();
      c.sparsity_config.clear();
      student.model = models::Llama(c, at::TensorOptions().dtype(t.rt.dtype).device(t.rt.device), /*init=*/true);
      student.config = c;
      student.path = "scratch";
    }
    for (auto& p : student.model->parameters()) p.set_requires_grad(true);
    student.model->train();
    teacher.model->eval();
    for (auto& p : teacher.model->parameters()) p.set_requires_grad(false);
    t.teacher = teacher.model;
    if (student.config.vocab_size != tc.vocab_size)
      fail_usage_hint(fmt::format("the student has {} tokens, the teacher {}: distillation needs one vocabulary",
                                  student.config.vocab_size, tc.vocab_size),
                      "use a student trained with the teacher's tokenizer (or student.init.from: teacher / scratch)");
    setup_hidden(t, student.model);  // the layer map is checked before any compute
    log::info("teacher: {} ({} layers, dim {}); student: {} ({} layers, dim {}, intermediate {}, {} heads)",
              cfg.get_string("teacher.path"), tc.num_hidden_layers, tc.hidden_size,
              from == "teacher" ? fmt::format("teacher layers [{}]", fmt::join(init_layers, ", ")) : student.path,
              student.config.num_hidden_layers, student.config.hidden_size, student.config.intermediate_size,
              student.config.num_attention_heads);
    return student;
  }

  // A student with its own directory: same vocabulary size, and the same tokens when it carries
  // its own tokenizer.
  void check_same_vocabulary(const models::LlamaConfig& tc, const models::LlamaConfig& sc, const tok::Tokenizer& tok) {
    const std::string sp = cfg.get_string("student.path");
    if (sc.vocab_size != tc.vocab_size)
      fail_usage_hint(fmt::format("student '{}' has a vocabulary of {} tokens, the teacher '{}' {}: distillation "
                                  "matches distributions over one vocabulary",
                                  sp, sc.vocab_size, cfg.get_string("teacher.path"), tc.vocab_size),
                      "use a student trained with the teacher's tokenizer");
    if (!stdfs::is_directory(sp)) return;
    std::unique_ptr<tok::Tokenizer> st;
    try {
      st = tok::load_tokenizer(sp);
    } catch (const Error&) {
      return;  // no tokenizer of its own: it uses the teacher's
    }
    bool same = st->vocab_size() == tok.vocab_size();
    for (int32_t i = 0; same && i < tok.vocab_size(); ++i) same = st->id_to_token(i) == tok.id_to_token(i);
    if (!same)
      fail_usage_hint(fmt::format("student '{}' has a different tokenizer than the teacher ({} vs {} tokens, or the same "
                                  "ids name different tokens)",
                                  sp, st->vocab_size(), tok.vocab_size()),
                      "distill into a student that uses the teacher's tokenizer");
  }

  // The hidden-state pairs and their projections, once both models are known (Trainer::setup
  // adds the projections to the trainable tensors).
  void setup_hidden(Trainer& t, models::Llama& student) {
    if (hidden_weight == 0) {
      if (!cfg.get_list("distill.hidden.layer_map").empty())
        log::warn("distill.hidden.layer_map is set but distill.hidden.weight is 0: no hidden-state loss");
      return;
    }
    const int64_t Ls = student->config().num_hidden_layers, Lt = t.teacher->config().num_hidden_layers;
    const auto entries = cfg.get_list("distill.hidden.layer_map");
    if (entries.empty()) {
      // Default: a student made of teacher layers matches each to its origin; otherwise student
      // layer i matches teacher layer round((i + 1) * Lt / Ls) - 1 (the last matches the last).
      for (int64_t i = 0; i < Ls; ++i) {
        int64_t tl = cfg.get_string("student.init.from") == "teacher"
                         ? init_layers[static_cast<size_t>(i)]
                         : static_cast<int64_t>(std::llround(static_cast<double>((i + 1) * Lt) / Ls)) - 1;
        layer_map.emplace_back(i, tl);
      }
    } else {
      for (const auto& e : entries) {
        auto colon = e.find(':');
        if (colon == std::string::npos)
          fail_usage_hint(fmt::format("distill.hidden.layer_map: '{}' is not student:teacher", e),
                          "write pairs like [\"0:1\", \"1:3\"] (student layer : teacher layer)");
        int64_t s = parse_index(e.substr(0, colon), "distill.hidden.layer_map");
        int64_t tl = parse_index(e.substr(colon + 1), "distill.hidden.layer_map");
        if (s < 0 || s >= Ls)
          fail_usage_hint(fmt::format("distill.hidden.layer_map: '{}' names student layer {}, but the student has "
                                      "layers 0-{}",
                                      e, s, Ls - 1),
                          "map existing layers (student layer : teacher layer)");
        if (tl < 0 || tl >= Lt)
          fail_usage_hint(fmt::format("distill.hidden.layer_map: '{}' names teacher layer {}, but the teacher has "
                                      "layers 0-{}",
                                      e, tl, Lt - 1),
                          "map existing layers (student layer : teacher layer)");
        layer_map.emplace_back(s, tl);
      }
    }
    const int64_t Cs = student->config().hidden_size, Ct = t.teacher->config().hidden_size;
    for (size_t i = 0; i < layer_map.size(); ++i) {
      if (Cs == Ct) {
        proj.emplace_back();
        continue;
      }
      // [Ct, Cs], uniform(-1/sqrt(Cs), 1/sqrt(Cs)) as nn.Linear's default, from the seeded generator
      at::Tensor w = at::empty({Ct, Cs}, at::TensorOptions().dtype(at::kFloat).device(t.rt.device));
      {
        at::NoGradGuard no_grad;
        const double bound = 1.0 / std::sqrt(static_cast<double>(Cs));
        w.uniform_(-bound, bound);
      }
      w.set_requires_grad(true);
      proj.push_back(w);
      t.extra_trainable.emplace_back(fmt::format("distill.projection.{}.weight", i), w);
    }
    std::vector<std::string> pairs;
    for (auto& [s, tl] : layer_map) pairs.push_back(fmt::format("{}:{}", s, tl));
    log::info("distill: hidden-state {} loss (weight {}) on student:teacher layers [{}]{}",
              cfg.get_string("distill.hidden.loss"), hidden_weight, fmt::join(pairs, ", "),
              Cs == Ct ? "" : fmt::format(", projected {} -> {}", Cs, Ct));
  }

  train::LossResult loss(Trainer& t, const BatchTensors& b) {
    const bool hidden = hidden_weight > 0;
    std::vector<at::Tensor> s_layers, t_layers;
    at::Tensor s_final = t.lm.model->hidden_states(b.inputs, nullptr, hidden ? &s_layers : nullptr);
    at::Tensor s_logits = t.lm.model->logits(s_final);  // [B, T, V] fp32
    at::Tensor t_logits;
    {
      at::NoGradGuard no_grad;
      at::Tensor t_final = t.teacher->hidden_states(b.inputs, nullptr, hidden ? &t_layers : nullptr);
      t_logits = t.teacher->logits(t_final);
    }
    train::LossResult out;
    out.count = b.loss_tokens;
    at::Tensor total = at::zeros({}, s_logits.options());
    if (alpha > 0) {
      train::LossResult kd;
      if (top_k > 0 && top_k < t_logits.size(-1)) {
        auto [values, indices] = at::topk(t_logits, top_k, -1);
        kd = train::distill_loss_topk(s_logits, values, indices, b.targets, kind, temperature);
      } else {
        kd = train::distill_loss(s_logits, t_logits, b.targets, kind, temperature);
      }
      total = total + alpha * kd.loss;
    }
    if (alpha < 1) total = total + (1.0 - alpha) * train::cross_entropy(s_logits, b.targets).loss;
    if (hidden) {
      at::Tensor h = at::zeros({}, s_logits.options());
      for (size_t i = 0; i < layer_map.size(); ++i) {
        // layer outputs: index 0 is the embeddings, layer l's output is l + 1
        at::Tensor s = s_layers[static_cast<size_t>(layer_map[i].first + 1)];
        at::Tensor tt = t_layers[static_cast<size_t>(layer_map[i].second + 1)];
        if (proj[i].defined()) s = at::linear(s.to(proj[i].scalar_type()), proj[i]);
        h = h + train::hidden_state_loss(s, tt, b.targets, hidden_kind).loss;
      }
      total = total + hidden_weight * h / static_cast<double>(layer_map.size());
    }
    out.loss = total;
    return out;
  }

  // data.train.source: teacher — sequences the teacher writes, as a tokens file.
  data::DataSpec train_spec(Trainer& t) {
    data::DataSpec spec = data_spec_from(cfg, "data.train");
    if (cfg.get_string("data.train.source") == "file") {
      if (spec.path.empty())
        fail_usage_hint("data.train.path is required (data.train.source: file)",
                        "set data.train.path, or data.train.source=teacher to train on text the teacher writes");
      return spec;
    }
    const stdfs::path kept = t.out / "teacher_samples.i32";
    spec.format = "tokens";
    if (cfg.get_string("resume") != "false" && stdfs::exists(kept)) {
      log::info("data: the teacher's samples from {}", kept.string());
      spec.path = kept.string();
      return spec;
    }
    std::vector<std::vector<int32_t>> prompts;
    if (cfg.has("data.train.prompts") && !cfg.get_string("data.train.prompts").empty()) {
      const std::string pp = cfg.get_string("data.train.prompts");
      std::ifstream in(pp);
      if (!in) fail_usage_hint(fmt::format("data.train.prompts '{}' cannot be read", pp), "give a text file, one prompt per line");
      std::string line;
      while (std::getline(in, line))
        if (!line.empty()) prompts.push_back(t.tok->encode(line));
      if (prompts.empty()) fail_usage_hint(fmt::format("data.train.prompts '{}' has no prompt", pp), "write one prompt per line");
    } else {
      prompts.emplace_back();  // unconditional: BOS only
    }
    models::SampleOptions opt;
    opt.max_new_tokens = static_cast<int>(cfg.get_int("data.train.max_new_tokens"));
    opt.temperature = cfg.get_float("data.train.temperature");
    opt.top_k = static_cast<int>(cfg.get_int("data.train.top_k"));
    opt.top_p = cfg.get_float("data.train.top_p");
    const int64_t n = cfg.get_int("data.train.num_samples");
    if (n < 1) fail_usage_hint("data.train.num_samples must be >= 1", "set data.train.num_samples=256");
    if (opt.max_new_tokens < 1) fail_usage_hint("data.train.max_new_tokens must be >= 1", "set it to about data.seq_len");
    std::vector<int32_t> stream;
    const double t0 = now_s();
    int64_t generated = 0;
    at::NoGradGuard no_grad;
    for (int64_t i = 0; i < n; ++i) {
      std::vector<int32_t> ids;
      if (t.tok->bos_id() >= 0) ids.push_back(t.tok->bos_id());
      const auto& p = prompts[static_cast<size_t>(i) % prompts.size()];
      ids.insert(ids.end(), p.begin(), p.end());
      if (ids.empty())
        fail_usage_hint("the tokenizer has no BOS token, so unconditional sampling has no first token",
                        "give data.train.prompts");
      opt.seed = static_cast<uint64_t>(cfg.get_int("seed") + i);
      auto out = models::generate(t.teacher, ids, opt, t.tok->eos_id());
      generated += static_cast<int64_t>(out.size());
      stream.insert(stream.end(), ids.begin(), ids.end());
      stream.insert(stream.end(), out.begin(), out.end());
      if (t.tok->eos_id() >= 0) stream.push_back(t.tok->eos_id());
    }
    samples_tmp = stdfs::temp_directory_path() / fmt::format("dsk-teacher-samples-{}.i32", ::getpid());
    data::write_tokens_file(samples_tmp.string(), stream);
    log::info("data: {} samples from the teacher ({} generated tokens, {} prompts) in {:.1f}s", n, generated,
              prompts.size(), now_s() - t0);
    spec.path = samples_tmp.string();
    return spec;
  }

  // Keeps the teacher's samples with the run (resume reads them back).
  void after_claim(Trainer& t) {
    if (samples_tmp.empty()) return;
    const stdfs::path dst = t.out / "teacher_samples.i32";
    std::error_code ec;
    stdfs::copy_file(samples_tmp, dst, stdfs::copy_options::overwrite_existing, ec);
    if (ec) fail("copying the teacher's samples to '{}': {}", dst.string(), ec.message());
    stdfs::remove(samples_tmp, ec);
    samples_tmp.clear();
  }

  ~Distill() {
    std::error_code ec;
    if (!samples_tmp.empty()) stdfs::remove(samples_tmp, ec);
  }
};

}  // namespace

int run_distill(const config::Config& cfg) {
  Distill d(cfg);
  d.read_settings();
  TrainHooks h;
  h.stage = "distill";
  h.model_key = "teacher.path";
  h.load_model = [&](Trainer& t) { return d.load_student(t); };
  h.train_spec = [&](Trainer& t) { return d.train_spec(t); };
  h.after_claim = [&](Trainer& t) { d.after_claim(t); };
  h.after_model = [&](Trainer& t) {  // the teacher's score: what the student is aiming at
    if (t.data.eval.count() == 0) return;
    EvalResult e = evaluate(t.teacher, t.data.eval, static_cast<int>(cfg.get_int("batch_size")),
                            cfg.get_int("eval.max_batches"), t.comm.get());
    log::info("teacher eval: nll {:.4f}, ppl {:.2f} ({} tokens)", e.nll, e.ppl, e.tokens);
    t.summary_extra["teacher_eval_nll"] = e.nll;
  };
  h.loss = [&](Trainer& t, const BatchTensors& b) { return d.loss(t, b); };
  Trainer t(cfg, std::move(h));
  return t.run();
}

}  // namespace dsk::stages
