// Data sources: text separators, JSONL fields and chat templates with their loss masks,
// token files, and the usage errors for bad input.
#include "data/source.h"

#include "data_test_util.h"

using namespace dsk::data;
using dsk::test::bytes_ids;
using dsk::test::error_of;
using dsk::test::FakeTokenizer;
using dsk::test::loss_ids;
using dsk::test::write_scratch;
using Catch::Matchers::Contains;
using Strings = std::vector<std::string>;

namespace {

std::vector<Document> load(const std::string& path, const std::string& format, DataSpec spec = {}) {
  spec.path = path;
  spec.format = format;
  return load_documents(spec, FakeTokenizer());
}

std::vector<int32_t> concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// One JSONL line with the given template -> its document.
Document jsonl_doc(const std::string& line, const std::string& tmpl, bool specials = true) {
  DataSpec spec;
  spec.path = write_scratch("data_jsonl_doc", "one.jsonl", line + "\n");
  spec.format = "jsonl";
  spec.chat_template = tmpl;
  auto docs = load_documents(spec, FakeTokenizer(specials));
  REQUIRE(docs.size() == 1);
  return docs[0];
}

}  // namespace

// ---------------------------------------------------------------------------
// Text

TEST_CASE("split_text: separators, trimming of line breaks, blank documents dropped", "[data][text]") {
  CHECK(split_text("a\n\nb\n\n\n\nc\n", "\n\n") == Strings{"a", "b", "c"});
  CHECK(split_text("one\ntwo lines\n\nthree", "\n\n") == Strings{"one\ntwo lines", "three"});
  CHECK(split_text("x<|endoftext|>\ny\n<|endoftext|>\n", "<|endoftext|>") == Strings{"x", "y"});
  CHECK(split_text("l1\nl2\n\n  l3 \n", "\n") == Strings{"l1", "l2", "  l3 "});
  CHECK(split_text("\n\nwhole\n\nfile\n", "") == Strings{"whole\n\nfile"});
  CHECK(split_text("a\r\n\r\nb\r\nc\r\n", "\n\n") == Strings{"a", "b\nc"});
  CHECK(split_text("a\r\nb\r\n", "\r\n") == Strings{"a", "b"});
  CHECK(split_text("  \n\t\n\n \n", "\n\n").empty());
  CHECK(split_text("", "").empty());
}

TEST_CASE("text: <|endoftext|> on tinystories_sample_cs336 gives 5 documents", "[data][text]") {
  DataSpec spec;
  spec.separator = "<|endoftext|>";
  auto docs = load(dsk::test::data_path("tinystories_sample_cs336.txt"), "text", spec);
  REQUIRE(docs.size() == 5);
  FakeTokenizer tok;
  for (const auto& d : docs) {
    REQUIRE(d.size() > 2);
    CHECK(d.ids.front() == 1);
    CHECK(d.ids.back() == 2);
    CHECK(d.mask.front() == 0);
    CHECK(d.mask.back() == 1);
    std::string text = tok.decode(d.ids);
    CHECK(text.find("<|endoftext|>") == std::string::npos);
    CHECK(text.front() != '\n');
    CHECK(text.back() != '\n');
  }
  CHECK_THAT(tok.decode(docs[0].ids), Catch::StartsWith("Once upon a time there was a little boy named Ben."));
}

TEST_CASE("text: one per line on tinystories_valid_sample_30k gives 19 documents", "[data][text]") {
  DataSpec spec;
  spec.separator = "\n";
  auto docs = load(dsk::test::data_path("tinystories_valid_sample_30k.txt"), "text", spec);
  CHECK(docs.size() == 19);
  spec.separator = "";
  CHECK(load(dsk::test::data_path("tinystories_valid_sample_30k.txt"), "text", spec).size() == 1);
}

TEST_CASE("text: BOS/EOS flags and the mask of a plain document", "[data][text]") {
  auto path = write_scratch("data_text_flags", "t.txt", "ab\n\ncd\n");
  auto docs = load(path, "text");
  REQUIRE(docs.size() == 2);
  CHECK(docs[0].ids == concat({{1}, bytes_ids("ab"), {2}}));
  CHECK(docs[0].mask == std::vector<uint8_t>{0, 1, 1, 1});
  DataSpec spec;
  spec.add_bos = false;
  spec.add_eos = false;
  docs = load(path, "text", spec);
  CHECK(docs[1].ids == bytes_ids("cd"));
  CHECK(docs[1].mask == std::vector<uint8_t>{1, 1});
  // A tokenizer without BOS/EOS: the flags add nothing.
  spec = DataSpec();
  spec.path = path;
  docs = load_documents(spec, FakeTokenizer(true, false));
  CHECK(docs[0].ids == bytes_ids("ab"));
}

TEST_CASE("text: invalid UTF-8 is a usage error with path:line", "[data][text][errors]") {
  auto path = write_scratch("data_text_utf8", "bad.txt", "fine\nbad \xC3\x28 here\n");
  auto e = error_of([&] { load(path, "text"); });
  CHECK(e.exit_code() == dsk::kExitUsage);
  CHECK_THAT(e.message(), Contains(path + ":2:") && Contains("invalid UTF-8"));
  // A byte order mark is not content.
  auto bom = write_scratch("data_text_utf8", "bom.txt", "\xEF\xBB\xBFhi");
  CHECK(load(bom, "text")[0].ids == concat({{1}, bytes_ids("hi"), {2}}));
}

// ---------------------------------------------------------------------------
// JSONL

TEST_CASE("jsonl: text field (default and configured), blank lines skipped", "[data][jsonl]") {
  auto path = write_scratch("data_jsonl_text", "t.jsonl", "{\"text\": \"hi\"}\n\n  \n{\"text\": \"yo\", \"id\": 3}\n");
  auto docs = load(path, "jsonl");
  REQUIRE(docs.size() == 2);
  CHECK(docs[0].ids == concat({{1}, bytes_ids("hi"), {2}}));
  CHECK(docs[0].mask == std::vector<uint8_t>{0, 1, 1, 1});
  CHECK(docs[1].ids == concat({{1}, bytes_ids("yo"), {2}}));

  auto body = write_scratch("data_jsonl_text", "b.jsonl", "{\"body\": \"xyz\"}\n");
  DataSpec spec;
  spec.text_field = "body";
  CHECK(load(body, "jsonl", spec)[0].ids == concat({{1}, bytes_ids("xyz"), {2}}));
}

TEST_CASE("jsonl prompt/response, template none: loss exactly on the response and EOS", "[data][jsonl][mask]") {
  auto d = jsonl_doc(R"({"prompt": "What?", "response": "This."})", "none");
  CHECK(d.ids == concat({{1}, bytes_ids("What?"), bytes_ids("This."), {2}}));
  CHECK(loss_ids(d) == concat({bytes_ids("This."), {2}}));
  for (size_t i = 0; i < 6; ++i) CHECK(d.mask[i] == 0);  // BOS + prompt

  // Configured field names.
  DataSpec spec;
  spec.path = write_scratch("data_jsonl_fields", "f.jsonl", R"({"instruction": "Q", "output": "A"})");
  spec.format = "jsonl";
  spec.prompt_field = "instruction";
  spec.response_field = "output";
  auto docs = load_documents(spec, FakeTokenizer());
  CHECK(docs[0].ids == concat({{1}, bytes_ids("QA"), {2}}));
  CHECK(loss_ids(docs[0]) == concat({bytes_ids("A"), {2}}));
}

TEST_CASE("chat templates render the documented strings", "[data][jsonl][templates]") {
  std::vector<Message> pair = {{"user", "Q"}, {"assistant", "A"}};
  CHECK(segments_text(render_chat(pair, "none")) == "QA");
  CHECK(segments_text(render_chat(pair, "chatml")) ==
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>");
  CHECK(segments_text(render_chat(pair, "llama2")) == "[INST] Q [/INST] A");
  CHECK(segments_text(render_chat(pair, "alpaca")) == "### Instruction:\nQ\n\n### Response:\nA");

  std::vector<Message> multi = {{"system", "S"}, {"user", "Q1"}, {"assistant", "A1"}, {"user", "Q2"}, {"assistant", "A2"}};
  CHECK(segments_text(render_chat(multi, "chatml")) ==
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>");
  CHECK(segments_text(render_chat(multi, "llama2")) ==
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nQ1 [/INST] A1</s><s>[INST] Q2 [/INST] A2");
  CHECK(segments_text(render_chat(multi, "alpaca")) ==
        "S\n\n### Instruction:\nQ1\n\n### Response:\nA1\n\n### Instruction:\nQ2\n\n### Response:\nA2");
  CHECK(segments_text(render_chat(multi, "none")) == "SQ1A1Q2A2");

  auto e = error_of([] { render_chat({{"user", "Q"}, {"tool", "x"}}, "llama2"); });
  CHECK_THAT(e.message(), Contains("role \"tool\""));
  e = error_of([] { render_chat({{"user", "Q"}, {"system", "late"}}, "alpaca"); });
  CHECK_THAT(e.message(), Contains("role \"system\""));
  CHECK(segments_text(render_chat({{"tool", "x"}}, "chatml")) == "<|im_start|>tool\nx<|im_end|>");
}

TEST_CASE("chat templates: masks cover response tokens, end markers and EOS only", "[data][jsonl][mask]") {
  FakeTokenizer tok;
  const std::string line = R"({"prompt": "Q?", "response": "Ans"})";

  auto chatml = jsonl_doc(line, "chatml");
  CHECK(tok.decode(chatml.ids) == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nAns<|im_end|>");
  CHECK(loss_ids(chatml) == concat({bytes_ids("Ans"), {260, 2}}));  // response, <|im_end|>, EOS
  CHECK(std::count(chatml.ids.begin(), chatml.ids.end(), 259) == 2);  // specials are single ids

  auto llama2 = jsonl_doc(line, "llama2");
  CHECK(tok.decode(llama2.ids) == "[INST] Q? [/INST] Ans");
  CHECK(loss_ids(llama2) == concat({bytes_ids(" Ans"), {2}}));

  auto alpaca = jsonl_doc(line, "alpaca");
  CHECK(tok.decode(alpaca.ids) == "### Instruction:\nQ?\n\n### Response:\nAns");
  CHECK(loss_ids(alpaca) == concat({bytes_ids("Ans"), {2}}));

  // Without special tokens in the vocabulary, markers are encoded as text (still loss on <|im_end|>).
  auto plain = jsonl_doc(line, "chatml", false);
  CHECK(std::count(plain.ids.begin(), plain.ids.end(), 259) == 0);
  CHECK(loss_ids(plain) == concat({bytes_ids("Ans<|im_end|>"), {2}}));
}

TEST_CASE("jsonl messages: loss on every assistant turn - llama2 turns split by EOS BOS", "[data][jsonl][mask]") {
  const std::string line =
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},)"
      R"( {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]})";
  auto d = jsonl_doc(line, "llama2");
  auto expect = concat({{1}, bytes_ids("[INST] a [/INST]"), bytes_ids(" b"), {2, 1}, bytes_ids("[INST] c [/INST]"),
                        bytes_ids(" d"), {2}});
  CHECK(d.ids == expect);
  CHECK(loss_ids(d) == concat({bytes_ids(" b"), {2}, bytes_ids(" d"), {2}}));

  auto c = jsonl_doc(line, "chatml");
  CHECK(loss_ids(c) == concat({bytes_ids("b"), {260}, bytes_ids("d"), {260, 2}}));

  // A conversation that ends with a user turn: its EOS is not a target.
  auto u = jsonl_doc(R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},)"
                     R"( {"role": "user", "content": "c"}]})",
                     "none");
  CHECK(loss_ids(u) == bytes_ids("b"));
  CHECK(u.ids.back() == 2);
  CHECK(u.mask.back() == 0);
}

TEST_CASE("jsonl: malformed lines are usage errors naming path:line and the problem", "[data][jsonl][errors]") {
  struct Case {
    std::string line, expect;
  };
  std::vector<Case> cases = {
      {R"({"text": "a")", "invalid JSON"},
      {R"({"text": 1e999})", "invalid JSON: number overflow"},
      {"[1, 2]", "expected a JSON object, got a array"},
      {R"({"foo": 1, "bar": 2})", R"(no "text", "prompt"/"response" or "messages" field (it has: "bar", "foo"))"},
      {R"({"text": 5})", R"(field "text" is a number, expected a string)"},
      {R"({"prompt": "q"})", R"(has "prompt" but no "response")"},
      {R"({"messages": [{"role": "user"}]})", R"(messages[0] has no "content")"},
      {R"({"messages": "hi"})", R"(field "messages" is a string, expected an array)"},
  };
  for (const auto& c : cases) {
    auto path = write_scratch("data_jsonl_errors", "bad.jsonl", "{\"text\": \"ok\"}\n\n" + c.line + "\n");
    auto e = error_of([&] { load(path, "jsonl"); });
    INFO(c.line << " -> " << e.message());
    CHECK(e.exit_code() == dsk::kExitUsage);
    CHECK_THAT(e.message(), Contains(path + ":3: ") && Contains(c.expect));
    CHECK_FALSE(e.hint().empty());
  }
}

// ---------------------------------------------------------------------------
// Token files

TEST_CASE("tokens: round trip in both widths, little-endian, documents end at EOS", "[data][tokens]") {
  const std::vector<int32_t> ids = {1, 5, 6, 2, 1, 7, 2, 8, 250};
  for (const char* name : {"ids.u16", "ids.bin16", "ids.bin", "ids.i32"}) {
    auto path = write_scratch("data_tokens", name, "");
    write_tokens_file(path, ids);
    CHECK(std::filesystem::file_size(path) == ids.size() * token_width(path));
    CHECK(read_tokens_file(path, 261) == ids);
  }
  CHECK(token_width("x.U16") == 2);
  CHECK(token_width("a/b.bin") == 4);

  auto raw16 = write_scratch("data_tokens", "raw.u16", std::string("\x34\x12\x01\x00", 4));
  CHECK(read_tokens_file(raw16, 70000) == std::vector<int32_t>{0x1234, 1});
  auto raw32 = write_scratch("data_tokens", "raw.i32", std::string("\x78\x56\x34\x12", 4));
  CHECK(read_tokens_file(raw32, 0x7fffffff) == std::vector<int32_t>{0x12345678});

  auto path = write_scratch("data_tokens", "docs.bin", "");
  write_tokens_file(path, ids);
  auto docs = load(path, "tokens");
  REQUIRE(docs.size() == 3);
  CHECK(docs[0].ids == std::vector<int32_t>{1, 5, 6, 2});
  CHECK(docs[0].mask == std::vector<uint8_t>{0, 1, 1, 1});  // BOS is never a target
  CHECK(docs[1].ids == std::vector<int32_t>{1, 7, 2});
  CHECK(docs[2].ids == std::vector<int32_t>{8, 250});
}

TEST_CASE("tokens: id >= vocab, bad width and bad extension are errors", "[data][tokens][errors]") {
  auto path = write_scratch("data_tokens_err", "big.bin", "");
  write_tokens_file(path, {1, 2, 3, 261, 4});
  auto e = error_of([&] { load(path, "tokens"); });
  CHECK(e.exit_code() == dsk::kExitUsage);
  CHECK_THAT(e.message(), Contains(path) && Contains("id 261 at position 3") && Contains("[0, 261)"));

  auto neg = write_scratch("data_tokens_err", "neg.i32", std::string("\x01\x00\x00\x00\xff\xff\xff\xff", 8));
  CHECK_THAT(error_of([&] { read_tokens_file(neg, 10); }).message(), Contains("id -1 at position 1"));

  auto odd = write_scratch("data_tokens_err", "odd.u16", std::string("\x01\x00\x02", 3));
  e = error_of([&] { read_tokens_file(odd, 10); });
  CHECK(e.exit_code() == dsk::kExitRuntime);
  CHECK_THAT(e.message(), Contains("3 bytes is not a multiple of 2"));

  e = error_of([] { token_width("ids.npy"); });
  CHECK(e.exit_code() == dsk::kExitUsage);
  CHECK_THAT(e.message(), Contains(".npy"));
  CHECK_THAT(e.hint(), Contains(".u16"));

  CHECK_THAT(error_of([&] { write_tokens_file(odd, {70000}); }).message(), Contains("does not fit 16-bit"));
}

// ---------------------------------------------------------------------------
// Errors shared by every format

TEST_CASE("missing file: usage error naming the path", "[data][errors]") {
  for (const char* format : {"text", "jsonl", "tokens"}) {
    std::string path = std::string(DSK_TEST_TMP) + "/no/such/file.bin";
    auto e = error_of([&] { load(path, format); });
    CHECK(e.exit_code() == dsk::kExitUsage);
    CHECK_THAT(e.message(), Contains(path) && Contains("does not exist"));
  }
}

TEST_CASE("empty dataset: usage error that says so and suggests a fix", "[data][errors]") {
  auto text = write_scratch("data_empty", "blank.txt", "\n\n   \n\n\t\n");
  auto e = error_of([&] { load(text, "text"); });
  CHECK(e.exit_code() == dsk::kExitUsage);
  CHECK_THAT(e.message(), Contains(text) && Contains("empty dataset") && Contains("separator \"\\n\\n\""));
  CHECK_THAT(e.hint(), Contains("separator"));

  auto jsonl = write_scratch("data_empty", "blank.jsonl", "\n{\"text\": \"\"}\n\n");
  e = error_of([&] { load(jsonl, "jsonl"); });
  CHECK_THAT(e.message(), Contains("empty dataset"));
  CHECK_FALSE(e.hint().empty());

  auto tokens = write_scratch("data_empty", "none.bin", "");
  CHECK_THAT(error_of([&] { load(tokens, "tokens"); }).message(), Contains("empty dataset"));
}

TEST_CASE("unknown format or chat template: usage error listing the choices", "[data][errors]") {
  auto path = write_scratch("data_unknown", "t.txt", "x");
  auto e = error_of([&] { load(path, "csv"); });
  CHECK(e.exit_code() == dsk::kExitUsage);
  CHECK_THAT(e.message(), Contains("\"csv\""));
  CHECK_THAT(e.hint(), Contains("text, jsonl, tokens"));
  DataSpec spec;
  spec.chat_template = "vicuna";
  CHECK_THAT(error_of([&] { load(path, "jsonl", spec); }).hint(), Contains("chatml"));
}
