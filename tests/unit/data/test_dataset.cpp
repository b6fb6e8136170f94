// The stage-facing entry points and the key descriptions the config schema is built from.
#include "data/dataset.h"

#include <set>

#include "data_test_util.h"

using namespace dsk::data;
using dsk::test::error_of;
using dsk::test::FakeTokenizer;
using dsk::test::write_scratch;
using Catch::Matchers::Contains;

namespace {

const KeyDoc& find_key(const std::vector<KeyDoc>& keys, const std::string& name) {
  for (const auto& k : keys)
    if (k.key == name) return k;
  FAIL("no key " << name);
  return keys.front();
}

// `n` paragraphs "doc <i> ..." separated by blank lines.
std::string paragraphs(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += "doc " + std::to_string(i) + " with some words in it\n\n";
  return s;
}

}  // namespace

TEST_CASE("key docs: unique names, valid types, defaults that match the structs", "[data][keys]") {
  const std::set<std::string> types = {"bool", "int", "float", "string", "path", "enum"};
  for (const auto& keys : {data_source_keys(), data_keys()}) {
    std::set<std::string> names;
    for (const auto& k : keys) {
      INFO(k.key);
      CHECK(names.insert(k.key).second);
      CHECK(types.count(k.type) == 1);
      CHECK_FALSE(k.help.empty());
      CHECK((k.scope.empty() || k.scope == "train" || k.scope == "eval"));
      if (k.type == "enum") {
        CHECK(std::find(k.choices.begin(), k.choices.end(), k.default_value) != k.choices.end());
      } else {
        CHECK(k.choices.empty());
      }
    }
  }
  const DataSpec spec;
  const auto src = data_source_keys();
  CHECK(find_key(src, "path").default_value == "~");
  CHECK(find_key(src, "format").default_value == spec.format);
  CHECK(find_key(src, "format").choices == std::vector<std::string>{"text", "jsonl", "tokens"});
  CHECK(find_key(src, "separator").default_value == "\"\\n\\n\"");
  CHECK(spec.separator == "\n\n");
  CHECK(find_key(src, "text_field").default_value == spec.text_field);
  CHECK(find_key(src, "prompt_field").default_value == spec.prompt_field);
  CHECK(find_key(src, "response_field").default_value == spec.response_field);
  CHECK(find_key(src, "messages_field").default_value == spec.messages_field);
  CHECK(find_key(src, "chat_template").default_value == spec.chat_template);
  CHECK(find_key(src, "chat_template").choices == std::vector<std::string>{"none", "chatml", "llama2", "alpaca"});

  const DataOptions opt;
  const auto data = data_keys();
  CHECK(find_key(data, "seq_len").default_value == std::to_string(opt.seq_len));
  CHECK(find_key(data, "add_bos").default_value == (spec.add_bos ? "true" : "false"));
  CHECK(find_key(data, "add_eos").default_value == (spec.add_eos ? "true" : "false"));
  CHECK(find_key(data, "pack").default_value == (opt.pack ? "true" : "false"));
  CHECK(std::stod(find_key(data, "eval_fraction").default_value) == opt.eval_fraction);
  CHECK(find_key(data, "stride").default_value == std::to_string(opt.stride));
  CHECK(find_key(data, "stride").scope == "eval");
}

TEST_CASE("prepare_train_data: split off eval documents, pack, deterministic", "[data][dataset]") {
  DataSpec spec;
  spec.path = write_scratch("data_prepare", "p.txt", paragraphs(40));
  DataOptions opt;
  opt.seq_len = 16;
  opt.eval_fraction = 0.1;
  opt.seed = 3;
  FakeTokenizer tok;
  TrainData a = prepare_train_data(spec, nullptr, opt, tok);
  CHECK(a.eval_split);
  CHECK(a.train_documents == 36);
  CHECK(a.eval_documents == 4);
  CHECK(a.train.seq_len == 16);
  CHECK(a.train.count() > 0);
  CHECK(a.eval.count() > 0);
  // Train drops its partial window: every train target is scored; eval keeps (pads) it.
  CHECK(a.train.loss_tokens() > a.train.count() * 16 - a.train_documents - 1);
  TrainData b = prepare_train_data(spec, nullptr, opt, tok);
  CHECK(a.train.fingerprint() == b.train.fingerprint());
  CHECK(a.eval.fingerprint() == b.eval.fingerprint());
  opt.seed = 4;
  CHECK(prepare_train_data(spec, nullptr, opt, tok).eval.fingerprint() != a.eval.fingerprint());

  // A given eval source is used as is.
  DataSpec eval;
  eval.path = write_scratch("data_prepare", "e.txt", paragraphs(3));
  TrainData c = prepare_train_data(spec, &eval, opt, tok);
  CHECK_FALSE(c.eval_split);
  CHECK(c.train_documents == 40);
  CHECK(c.eval_documents == 3);

  opt.eval_fraction = 0;
  TrainData d = prepare_train_data(spec, nullptr, opt, tok);
  CHECK(d.eval.count() == 0);
  CHECK(d.train_documents == 40);
}

TEST_CASE("prepare_train_data: too little data or nothing to learn are usage errors", "[data][dataset][errors]") {
  FakeTokenizer tok;
  DataSpec spec;
  spec.path = write_scratch("data_prepare_err", "short.txt", "tiny\n\ntext\n");
  DataOptions opt;
  opt.seq_len = 64;
  opt.eval_fraction = 0;
  auto e = error_of([&] { prepare_train_data(spec, nullptr, opt, tok); });
  CHECK(e.exit_code() == dsk::kExitUsage);
  CHECK_THAT(e.message(), Contains("12 tokens") && Contains("65 tokens"));
  CHECK_THAT(e.hint(), Contains("data.seq_len"));

  spec.path = write_scratch("data_prepare_err", "noresp.jsonl",
                            "{\"prompt\": \"a long prompt here\", \"response\": \"\"}\n"
                            "{\"prompt\": \"another long prompt\", \"response\": \"\"}\n");
  spec.format = "jsonl";
  opt.seq_len = 8;
  e = error_of([&] { prepare_train_data(spec, nullptr, opt, tok); });
  CHECK_THAT(e.message(), Contains("no token to learn"));

  spec.path = write_scratch("data_prepare_err", "one.txt", "a single document of text\n");
  spec.format = "text";
  opt.eval_fraction = 0.05;
  CHECK_THAT(error_of([&] { prepare_train_data(spec, nullptr, opt, tok); }).hint(), Contains("data.eval.path"));
}

TEST_CASE("prepare_eval_data: sliding windows over all documents back to back", "[data][dataset][eval]") {
  FakeTokenizer tok;
  DataSpec spec;
  spec.path = dsk::test::data_path("tinystories_valid_sample_30k.txt");
  spec.separator = "\n";
  DataOptions opt;
  opt.seq_len = 128;
  opt.stride = 64;
  Windows w = prepare_eval_data(spec, opt, tok);
  auto docs = load_documents(spec, tok);
  const Document stream = concat_documents(docs);
  // Scored: every stream position but the first, less the BOS of documents 2..19.
  CHECK(w.loss_tokens() == static_cast<int64_t>(stream.size()) - 1 - 18);
  const auto n = static_cast<int64_t>(stream.size());
  CHECK(w.count() == (n - 1 - 128 + 63) / 64 + 1);
  opt.stride = 0;
  CHECK(prepare_eval_data(spec, opt, tok).count() == (n - 1 + 127) / 128);
}
