#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/pretokenize.h"

#include <pcre2.h>

#include "core/error.h"

namespace dsk::tok {

namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof buf) < 0) return "PCRE2 error " + std::to_string(code);
  return reinterpret_cast<const char*>(buf);
}

// One match-data block per thread: it holds only the ovector, so any pattern can use it.
pcre2_match_data* thread_match_data() {
  struct Holder {
    pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
    ~Holder() { pcre2_match_data_free(md); }
  };
  thread_local Holder holder;
  return holder.md;
}

}  // namespace

Regex::Regex(const std::string& pattern, bool literal) : pattern_(pattern) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  const uint32_t options = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &err,
                        &err_offset, nullptr);
  if (!code_) fail("pre-tokenizer regex '{}' does not compile at offset {}: {}", pattern, err_offset, pcre2_message(err));
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // the interpreter serves when JIT is unavailable
}

Regex::~Regex() { pcre2_code_free(code_); }

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  pcre2_match_data* md = thread_match_data();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t offset = 0;
  uint32_t extra = 0;  // PCRE2_NOTEMPTY_ATSTART right after an empty match
  while (offset <= s.size()) {
    int rc = pcre2_match(code_, subject, s.size(), offset, PCRE2_NO_UTF_CHECK | extra, md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      rc = pcre2_match(code_, subject, s.size(), offset, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT | extra, md, nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) fail("pre-tokenizer regex '{}' failed: {}", pattern_, pcre2_message(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    if (ov[1] > ov[0]) {
      out.emplace_back(ov[0], ov[1]);
      extra = 0;
    } else {
      extra = PCRE2_NOTEMPTY_ATSTART;
    }
    offset = ov[1];
    if (offset == s.size() && ov[1] > ov[0]) break;
  }
}

void PreTokenizer::add_split(std::shared_ptr<const Regex> regex, SplitBehavior behavior, bool invert) {
  steps_.push_back(Step{std::move(regex), behavior, invert});
}

void PreTokenizer::add_prefix_space() { steps_.push_back(Step{}); }

std::vector<std::string> PreTokenizer::patterns() const {
  std::vector<std::string> out;
  for (const Step& s : steps_)
    if (s.regex) out.push_back(s.regex->pattern());
  return out;
}

namespace {

struct Segment {
  size_t begin, end;
  bool match;
};

// Applies one Split step to piece, appending the resulting non-empty pieces to out.
void split_piece(const Regex& re, SplitBehavior behavior, bool invert, std::string_view piece,
                 std::vector<std::pair<size_t, size_t>>& matches, std::vector<std::string>& out) {
  matches.clear();
  re.find_all(piece, matches);
  std::vector<Segment> segs;
  segs.reserve(matches.size() * 2 + 1);
  size_t pos = 0;
  for (auto [b, e] : matches) {
    if (b > pos) segs.push_back({pos, b, invert});
    segs.push_back({b, e, !invert});
    pos = e;
  }
  if (pos < piece.size()) segs.push_back({pos, piece.size(), invert});

  std::vector<Segment> merged;  // the pieces, as ranges of `piece`
  merged.reserve(segs.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::Isolated:
      merged = segs;
      break;
    case SplitBehavior::Removed:
      for (const auto& s : segs)
        if (!s.match) merged.push_back(s);
      break;
    case SplitBehavior::MergedWithPrevious:  // "the-", "final-", "-", "countdown"
      for (const auto& s : segs) {
        if (s.match && !previous_match && !merged.empty()) {
          merged.back().end = s.end;
        } else {
          merged.push_back(s);
        }
        previous_match = s.match;
      }
      break;
    case SplitBehavior::MergedWithNext:  // "the", "-final", "-", "-countdown"
      for (size_t i = 0; i < segs.size(); ++i) {
        if (segs[i].match && i + 1 < segs.size() && !segs[i + 1].match) {
          merged.push_back({segs[i].begin, segs[i + 1].end, false});
          ++i;
        } else {
          merged.push_back(segs[i]);
        }
      }
      break;
    case SplitBehavior::Contiguous:  // "the", "-", "final", "--", "countdown"
      for (const auto& s : segs) {
        if (s.match && previous_match && !merged.empty()) {
          merged.back().end = s.end;
        } else {
          merged.push_back(s);
        }
        previous_match = s.match;
      }
      break;
  }
  for (const auto& s : merged)
    if (s.end > s.begin) out.emplace_back(piece.substr(s.begin, s.end - s.begin));
}

}  // namespace

void PreTokenizer::split(std::string_view text, std::vector<std::string>& words) const {
  if (text.empty()) return;
  std::vector<std::string> pieces{std::string(text)};
  std::vector<std::string> next;
  std::vector<std::pair<size_t, size_t>> matches;
  for (const Step& step : steps_) {
    if (!step.regex) {
      for (auto& p : pieces)
        if (p.empty() || p[0] != ' ') p.insert(p.begin(), ' ');
      continue;
    }
    next.clear();
    for (const auto& p : pieces) split_piece(*step.regex, step.behavior, step.invert, p, matches, next);
    pieces.swap(next);
  }
  for (auto& p : pieces)
    if (!p.empty()) words.push_back(std::move(p));
}

std::vector<std::string> split_isolated(const std::string& pattern, std::string_view text) {
  PreTokenizer pre;
  pre.add_split(std::make_shared<Regex>(pattern), SplitBehavior::Isolated, false);
  std::vector<std::string> words;
  pre.split(text, words);
  return words;
}

}  // namespace dsk::tok
