// The data component's entry points for stages, and the description of its YAML keys.
#include "data/dataset.h"

#include "core/error.h"
#include "core/log.h"

namespace dsk::data {

namespace {

KeyDoc key(std::string name, std::string type, std::string default_value, std::string help,
           std::vector<std::string> choices = {}, std::string scope = "") {
  return {std::move(name), std::move(type), std::move(default_value), std::move(help), std::move(choices),
          std::move(scope)};
}

}  // namespace

std::vector<KeyDoc> data_source_keys() {
  return {
      key("path", "path", "~", "data file (data.train.path is required; data.eval.path unset: split off the training data)"),
      key("format", "enum", "text",
       "text: documents cut by `separator`; jsonl: one JSON object per line (text, prompt/response or messages); "
       "tokens: pre-tokenized little-endian ids (*.u16/*.bin16 uint16, *.bin/*.i32 int32)",
       {"text", "jsonl", "tokens"}),
      key("separator", "string", "\"\\n\\n\"",
       "text: document separator (\"\\n\\n\" blank line, \"\\n\" one per line, \"<|endoftext|>\", \"\" whole file)"),
      key("text_field", "string", "text", "jsonl: field holding plain text (loss on every token)"),
      key("prompt_field", "string", "prompt", "jsonl: prompt field (no loss)"),
      key("response_field", "string", "response", "jsonl: response field (loss on these tokens)"),
      key("messages_field", "string", "messages", "jsonl: field holding [{role, content}] (loss on assistant turns)"),
      key("chat_template", "enum", "none", "jsonl prompt/response and messages: how turns are rendered (docs/data.md)",
       {"none", "chatml", "llama2", "alpaca"}),
  };
}

std::vector<KeyDoc> data_keys() {
  return {
      key("seq_len", "int", "256", "tokens per window (inputs; a window holds seq_len + 1 tokens)"),
      key("add_bos", "bool", "true", "prepend BOS to every text/jsonl document"),
      key("add_eos", "bool", "true", "append EOS to every text/jsonl document"),
      key("pack", "bool", "true", "pack documents into full windows (false: one document per window, truncated/padded)",
       {}, "train"),
      key("eval_fraction", "float", "0.05",
       "share of training documents held out for eval when data.eval.path is unset (0: none)", {}, "train"),
      key("stride", "int", "0",
       "eval windowing: tokens advanced per window (0: seq_len, non-overlapping); see docs/data.md", {}, "eval"),
  };
}

namespace {

[[noreturn]] void fail_no_window(const DataSpec& spec, const std::vector<Document>& docs, const DataOptions& opt) {
  size_t tokens = 0;
  for (const auto& d : docs) tokens += d.size();
  fail_usage_hint(fmt::format("training data '{}' has {} tokens in {} documents: not one window of seq_len + 1 = "
                              "{} tokens", spec.path, tokens, docs.size(), opt.seq_len + 1),
                  opt.pack ? "lower data.seq_len or add data" : "add documents of at least 2 tokens");
}

}  // namespace

TrainData prepare_train_data(const DataSpec& train, const DataSpec* eval, const DataOptions& opt,
                             const tok::Tokenizer& tok) {
  TrainData out;
  std::vector<Document> train_docs = load_documents(train, tok), eval_docs;
  if (eval) {
    eval_docs = load_documents(*eval, tok);
  } else {
    Split split = split_documents(std::move(train_docs), opt.eval_fraction, opt.seed);
    train_docs = std::move(split.train);
    eval_docs = std::move(split.eval);
    out.eval_split = true;
  }
  out.train_documents = static_cast<int64_t>(train_docs.size());
  out.eval_documents = static_cast<int64_t>(eval_docs.size());
  out.train = pack_documents(train_docs, opt.seq_len, opt.pack, true);
  if (out.train.count() == 0) fail_no_window(train, train_docs, opt);
  if (out.train.loss_tokens() == 0) {
    fail_usage_hint(fmt::format("training data '{}' has no token to learn: every target is a prompt token", train.path),
                    "give responses (prompt/response or assistant messages) that are not empty");
  }
  out.eval = pack_documents(eval_docs, opt.seq_len, opt.pack, false);
  log::info("data: train '{}': {} documents, {} windows of {} tokens, {} loss tokens", train.path,
            out.train_documents, out.train.count(), opt.seq_len + 1, out.train.loss_tokens());
  log::info("data: eval {}: {} documents, {} windows, {} loss tokens",
            eval ? "'" + eval->path + "'" : fmt::format("split off ({:g})", opt.eval_fraction), out.eval_documents,
            out.eval.count(), out.eval.loss_tokens());
  return out;
}

Windows prepare_eval_data(const DataSpec& spec, const DataOptions& opt, const tok::Tokenizer& tok) {
  const std::vector<Document> docs = load_documents(spec, tok);
  Windows w = make_eval_windows(concat_documents(docs), opt.seq_len, opt.stride);
  if (w.loss_tokens() == 0) {
    fail_usage_hint(fmt::format("eval data '{}' has no token to score", spec.path),
                    "give text with at least 2 tokens, or responses that are not empty");
  }
  log::info("data: eval '{}': {} documents, {} windows (seq_len {}, stride {}), {} scored tokens", spec.path,
            docs.size(), w.count(), opt.seq_len, opt.stride == 0 ? opt.seq_len : opt.stride, w.loss_tokens());
  return w;
}

}  // namespace dsk::data
