// UTF-8 helpers and the GPT-2 byte <-> unicode map that byte-level BPE vocabularies are written in.
// Internal to lib/tokenizer.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsk::tok::unicode {

// Appends the UTF-8 encoding of code point cp (< 0x110000) to out.
void append_utf8(uint32_t cp, std::string& out);

// Decodes the code point starting at s[i] and advances i past it; returns -1 and advances one
// byte when s[i] does not start a well-formed UTF-8 sequence.
int32_t next_code_point(std::string_view s, size_t& i);

// True when s is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool is_valid_utf8(std::string_view s);
// s with every ill-formed byte replaced by U+FFFD.
std::string sanitize_utf8(std::string_view s);

// GPT-2's bytes_to_unicode(): printable bytes map to themselves, the other 68 to U+0100.. in
// byte order, so that every byte is one visible character (0x20 ' ' -> 'Ġ', 0x0A -> 'Ċ').
const std::array<std::string, 256>& byte_to_unicode();
// The inverse: the byte a code point stands for, -1 when it is not one of the 256.
int byte_of_code_point(int32_t cp);

// The raw bytes a byte-level token string stands for ("ĠHello" -> " Hello"). A token holding a
// character outside the map (e.g. an added token "<special token>") is returned verbatim, as
// Hugging Face's ByteLevel decoder does.
std::string byte_level_decode(std::string_view token);
// Raw bytes -> byte-level string (" Hello" -> "ĠHello").
std::string byte_level_encode(std::string_view bytes);

}  // namespace dsk::tok::unicode
