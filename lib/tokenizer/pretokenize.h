// Pre-tokenization for byte-level BPE: the regex splits (PCRE2, UTF + Unicode properties) that cut
// text into the words BPE merges within. Internal to lib/tokenizer; tests use it directly.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct pcre2_real_code_8;

namespace dsk::tok {

// The split patterns of the supported families, as written in their tokenizer.json files.
// GPT-2 is also what a ByteLevel pre-tokenizer with use_regex = true applies.
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// A compiled PCRE2 pattern (PCRE2_UTF | PCRE2_UCP, JIT when available). Immutable; find_all is
// safe from several threads.
class Regex {
 public:
  // Runtime error naming the pattern and PCRE2's message when it does not compile.
  // literal = true matches the string itself (tokenizer.json Split {"String": ...}).
  explicit Regex(const std::string& pattern, bool literal = false);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the [begin, end) byte ranges of the non-empty matches in s, left to right.
  // s must be valid UTF-8.
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  pcre2_real_code_8* code_ = nullptr;
};

// What a Split step does with the matched delimiters (tokenizer.json "behavior").
enum class SplitBehavior { Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous };

// A sequence of steps applied to every piece in turn, as tokenizer.json's Sequence does.
class PreTokenizer {
 public:
  void add_split(std::shared_ptr<const Regex> regex, SplitBehavior behavior, bool invert);
  // ByteLevel's add_prefix_space: a piece not starting with ' ' gets one prepended.
  void add_prefix_space();
  // Splits valid UTF-8 text into words (never empty ones), appended to words.
  void split(std::string_view text, std::vector<std::string>& words) const;
  // The regex (or literal) patterns of the Split steps, in order (for exporters).
  std::vector<std::string> patterns() const;

 private:
  struct Step {
    std::shared_ptr<const Regex> regex;  // null: add a prefix space
    SplitBehavior behavior = SplitBehavior::Isolated;
    bool invert = false;
  };
  std::vector<Step> steps_;
};

// Isolated split of text by pattern: every match and every gap between matches is a piece.
std::vector<std::string> split_isolated(const std::string& pattern, std::string_view text);

}  // namespace dsk::tok
