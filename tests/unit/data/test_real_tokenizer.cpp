// lib/data with the real SentencePiece tokenizer of stories260K (data/tok512.model).
#include "core/fs.h"
#include "data/dataset.h"

#include "data_test_util.h"

using namespace dsk::data;
using dsk::test::loss_ids;
using dsk::test::write_scratch;

namespace {

const dsk::tok::Tokenizer& tok512() {
  static auto tok = dsk::tok::load_tokenizer(dsk::test::data_path("tok512.model"));
  return *tok;
}

std::vector<int32_t> strip_bos_eos(std::vector<int32_t> ids) {
  if (!ids.empty() && ids.front() == 1) ids.erase(ids.begin());
  if (!ids.empty() && ids.back() == 2) ids.pop_back();
  return ids;
}

}  // namespace

TEST_CASE("tok512: text documents are BOS + encode(text) + EOS", "[data][tok512]") {
  const auto& tok = tok512();
  REQUIRE(tok.vocab_size() == 512);
  DataSpec spec;
  spec.path = dsk::test::data_path("tinystories_sample_cs336.txt");
  spec.separator = "<|endoftext|>";
  auto docs = load_documents(spec, tok);
  REQUIRE(docs.size() == 5);
  auto texts = split_text(dsk::fs::read_file(spec.path), spec.separator);
  for (size_t i = 0; i < docs.size(); ++i) {
    CHECK(docs[i].ids.front() == tok.bos_id());
    CHECK(docs[i].ids.back() == tok.eos_id());
    CHECK(strip_bos_eos(docs[i].ids) == tok.encode(texts[i]));
    for (int32_t id : docs[i].ids) REQUIRE((id >= 0 && id < 512));
  }
  CHECK_THAT(tok.decode(strip_bos_eos(docs[0].ids)), Catch::StartsWith("Once upon a time there was a little boy"));

  auto one = write_scratch("data_tok512", "lily.txt", "Once upon a time, there was a little girl named Lily.\n");
  spec.path = one;
  spec.separator = "\n\n";
  CHECK(load_documents(spec, tok)[0].ids ==
        std::vector<int32_t>{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 2});
}

TEST_CASE("tok512: prompt/response masks decode to the response", "[data][tok512][mask]") {
  const auto& tok = tok512();
  DataSpec spec;
  spec.path = write_scratch("data_tok512", "pr.jsonl",
                            R"({"prompt": "Who is Lily?", "response": "Lily is a little girl."})"
                            "\n");
  spec.format = "jsonl";
  for (const char* tmpl : {"none", "chatml", "llama2", "alpaca"}) {
    INFO(tmpl);
    spec.chat_template = tmpl;
    auto docs = load_documents(spec, tok);
    REQUIRE(docs.size() == 1);
    auto loss = loss_ids(docs[0]);
    REQUIRE(loss.back() == tok.eos_id());
    loss.pop_back();
    std::string text = tok.decode(loss);
    CHECK_THAT(text, Catch::StartsWith("Lily is a little girl.") || Catch::StartsWith(" Lily is a little girl."));
    CHECK(tok.decode(strip_bos_eos(docs[0].ids)).find("Who is Lily?") != std::string::npos);
  }
}

TEST_CASE("tok512: tokens file round trip and eval windows", "[data][tok512][tokens]") {
  const auto& tok = tok512();
  DataSpec text;
  text.path = dsk::test::data_path("tinystories_valid_sample_30k.txt");
  text.separator = "\n";
  auto docs = load_documents(text, tok);
  REQUIRE(docs.size() == 19);
  const Document stream = concat_documents(docs);

  DataSpec tokens;
  tokens.path = write_scratch("data_tok512", "valid.u16", "");
  tokens.format = "tokens";
  write_tokens_file(tokens.path, stream.ids);
  auto back = load_documents(tokens, tok);
  CHECK(back.size() == 19);  // one document per EOS
  CHECK(concat_documents(back).ids == stream.ids);
  CHECK(concat_documents(back).mask == stream.mask);

  DataOptions opt;
  opt.seq_len = 256;
  opt.stride = 128;
  Windows a = prepare_eval_data(text, opt, tok);
  Windows b = prepare_eval_data(tokens, opt, tok);
  CHECK(a.fingerprint() == b.fingerprint());
  CHECK(a.loss_tokens() == static_cast<int64_t>(stream.size()) - 1 - 18);
}
