#include "moe/engine/npy.h"

#include <array>
#include <cstring>

#include "moe/io/error.h"
#include "moe/io/file.h"

namespace moe::engine {
namespace {

[[noreturn]] void bad(const std::string& name, const std::string& what) { throw Error(name + ": npy: " + what); }

// The header is a Python dict literal as numpy writes it: {'descr': '<i4', 'fortran_order': False,
// 'shape': (3, 4), } padded with spaces and a '\n'. A tiny parser for exactly that grammar.
struct HeaderParser {
  const std::string& s;
  const std::string& name;
  size_t i = 0;
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  bool eat(char c) {
    ws();
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) bad(name, std::string("header: expected '") + c + "' at byte " + std::to_string(i) + " of " + s);
  }
  std::string str() {
    ws();
    if (i >= s.size() || (s[i] != '\'' && s[i] != '"')) bad(name, "header: expected a string at byte " + std::to_string(i));
    char q = s[i++];
    size_t b = i;
    while (i < s.size() && s[i] != q) ++i;
    if (i >= s.size()) bad(name, "header: unterminated string");
    return s.substr(b, i++ - b);
  }
  bool boolean() {
    ws();
    if (s.compare(i, 4, "True") == 0) return i += 4, true;
    if (s.compare(i, 5, "False") == 0) return i += 5, false;
    bad(name, "header: fortran_order must be True or False");
  }
  std::vector<int64_t> tuple() {
    expect('(');
    std::vector<int64_t> v;
    while (!eat(')')) {
      ws();
      size_t b = i;
      while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
      if (i == b || i - b > 15) bad(name, "header: bad shape entry at byte " + std::to_string(b));
      v.push_back(std::stoll(s.substr(b, i - b)));
      if (!eat(',')) {
        expect(')');
        break;
      }
    }
    return v;
  }
};

}  // namespace

std::string NumArray::dtype_name() const {
  return std::string(kind == 'f' ? "float" : kind == 'u' ? "uint" : "int") + std::to_string(itemsize * 8);
}

size_t NumArray::numel() const {
  size_t n = 1;
  for (int64_t d : shape) n *= size_t(d);
  return n;
}

int64_t NumArray::int_at(size_t i) const {
  const uint8_t* p = data + i * size_t(itemsize);
  if (kind == 'f') throw Error("a float array where integers are expected");
  switch (itemsize) {
    case 1: return kind == 'i' ? int64_t(int8_t(p[0])) : int64_t(p[0]);
    case 2: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return kind == 'i' ? int64_t(int16_t(v)) : int64_t(v);
    }
    case 4: {
      uint32_t v;
      std::memcpy(&v, p, 4);
      return kind == 'i' ? int64_t(int32_t(v)) : int64_t(v);
    }
    default: {
      uint64_t v;
      std::memcpy(&v, p, 8);
      // uint64 values above INT64_MAX come back negative: callers range-check every value.
      return int64_t(v);
    }
  }
}

double NumArray::float_at(size_t i) const {
  if (kind != 'f') return double(int_at(i));
  const uint8_t* p = data + i * size_t(itemsize);
  if (itemsize == 4) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  if (itemsize == 8) {
    double d;
    std::memcpy(&d, p, 8);
    return d;
  }
  // float16
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint32_t sign = uint32_t(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      uint32_t m = man;
      do {
        ++e;
        m <<= 1;
      } while (!(m & 0x400));
      bits = sign | uint32_t(127 - 15 - e) << 23 | (m & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | man << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

NumArray parse_npy(const uint8_t* p, size_t n, const std::string& name) {
  static const char kMagic[] = "\x93NUMPY";
  if (n < 10 || std::memcmp(p, kMagic, 6) != 0) bad(name, "not a .npy array (no \\x93NUMPY magic)");
  const int major = p[6], minor = p[7];
  size_t hlen, hstart;
  if (major == 1 && minor == 0) {
    hlen = size_t(p[8]) | size_t(p[9]) << 8;
    hstart = 10;
  } else if ((major == 2 || major == 3) && minor == 0) {
    if (n < 12) bad(name, "truncated header");
    hlen = size_t(p[8]) | size_t(p[9]) << 8 | size_t(p[10]) << 16 | size_t(p[11]) << 24;
    hstart = 12;
  } else {
    bad(name, "format version " + std::to_string(major) + "." + std::to_string(minor) + " is not 1.0, 2.0 or 3.0");
  }
  if (hlen > n - hstart) bad(name, "truncated: header of " + std::to_string(hlen) + " bytes, " + std::to_string(n - hstart) + " left");
  const std::string h(reinterpret_cast<const char*>(p + hstart), hlen);
  HeaderParser ps{h, name};
  std::string descr;
  bool fortran = false, have_descr = false, have_fortran = false, have_shape = false;
  std::vector<int64_t> shape;
  ps.expect('{');
  while (!ps.eat('}')) {
    const std::string key = ps.str();
    ps.expect(':');
    if (key == "descr" && !have_descr) {
      descr = ps.str();
      have_descr = true;
    } else if (key == "fortran_order" && !have_fortran) {
      fortran = ps.boolean();
      have_fortran = true;
    } else if (key == "shape" && !have_shape) {
      shape = ps.tuple();
      have_shape = true;
    } else {
      bad(name, "header: unexpected or repeated key '" + key + "'");
    }
    if (!ps.eat(',')) {
      ps.expect('}');
      break;
    }
  }
  if (!have_descr || !have_fortran || !have_shape) bad(name, "header lacks 'descr', 'fortran_order' or 'shape'");
  if (fortran) bad(name, "fortran_order True is not supported (save a C-order array: np.ascontiguousarray)");
  NumArray a;
  // descr: byte order ('<' little, '|' not applicable, '=' native = little here), kind, size.
  if (descr.size() < 3 || (descr[0] != '<' && descr[0] != '|' && descr[0] != '=') ||
      (descr[1] != 'i' && descr[1] != 'u' && descr[1] != 'f' && descr != "|b1"))
    bad(name, "dtype '" + descr + "' is not a little-endian integer or float (only <i1..<i8, <u1..<u8, <f2, <f4, <f8)");
  a.kind = descr[1];
  const std::string sz = descr.substr(2);
  if (descr == "|b1") a.kind = 'u';  // bool: one byte, 0 or 1 (verl's attention masks may be bool)
  if (sz != "1" && sz != "2" && sz != "4" && sz != "8") bad(name, "dtype '" + descr + "' has an unsupported size");
  a.itemsize = std::stoi(sz);
  if (a.kind == 'f' && a.itemsize == 1) bad(name, "dtype '" + descr + "' is not a float type");
  if (a.itemsize > 1 && descr[0] == '|') bad(name, "dtype '" + descr + "' has no byte order");
  a.shape = shape;
  unsigned __int128 need = a.itemsize;
  for (int64_t d : shape) {
    need *= uint64_t(d);
    if (need > (unsigned __int128)(n)) break;
  }
  const size_t data_start = hstart + hlen;
  if (need != (unsigned __int128)(n - data_start))
    bad(name, "data is " + std::to_string(n - data_start) + " bytes, dtype " + descr + " x shape needs " +
                  (need > (unsigned __int128)(n) ? std::string("more") : std::to_string(uint64_t(need))));
  a.data = p + data_start;
  return a;
}

void read_npy_file(const std::string& path, NpyFile& out) {
  out.bytes = io::read_file(path);
  out.arr = parse_npy(reinterpret_cast<const uint8_t*>(out.bytes.data()), out.bytes.size(), path);
}

std::string base64_decode(const std::string& s, const std::string& name) {
  // A table lookup per character and a pre-sized output: engines send megabytes of routing this way.
  static const auto table = [] {
    std::array<int8_t, 256> t;
    t.fill(-1);
    const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[uint8_t(k[i])] = int8_t(i);
    return t;
  }();
  size_t end = s.size();
  while (end > 0 && s[end - 1] == '=' && s.size() - end < 2) --end;
  if (end % 4 == 1) throw Error(name + ": base64 text of " + std::to_string(s.size()) + " characters has a bad length");
  if (s.size() % 4 != 0 && end != s.size()) throw Error(name + ": base64 padding does not make a multiple of 4 characters");
  std::string out(end / 4 * 3 + (end % 4 ? end % 4 - 1 : 0), '\0');
  const auto* in = reinterpret_cast<const uint8_t*>(s.data());
  char* o = out.data();
  auto bad = [&](size_t i) {
    throw Error(name + ": base64 text holds a character that is not base64 at position " + std::to_string(i));
  };
  size_t i = 0;
  for (; i + 4 <= end; i += 4) {
    const int a = table[in[i]], b = table[in[i + 1]], c = table[in[i + 2]], d = table[in[i + 3]];
    if ((a | b | c | d) < 0) {
      for (size_t j = i; j < i + 4; ++j)
        if (table[in[j]] < 0) bad(j);
    }
    const uint32_t v = uint32_t(a) << 18 | uint32_t(b) << 12 | uint32_t(c) << 6 | uint32_t(d);
    *o++ = char(v >> 16);
    *o++ = char(v >> 8);
    *o++ = char(v);
  }
  uint32_t acc = 0;
  int bits = 0;
  for (; i < end; ++i) {
    const int v = table[in[i]];
    if (v < 0) bad(i);
    acc = acc << 6 | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      *o++ = char((acc >> bits) & 0xff);
    }
  }
  return out;
}

std::string base64_encode(const void* data, size_t n) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const auto* p = static_cast<const uint8_t*>(data);
  std::string out;
  out.reserve((n + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = uint32_t(p[i]) << 16 | uint32_t(p[i + 1]) << 8 | p[i + 2];
    for (int s = 18; s >= 0; s -= 6) out.push_back(k[(v >> s) & 63]);
  }
  if (n - i == 1) {
    uint32_t v = uint32_t(p[i]) << 16;
    out += {k[(v >> 18) & 63], k[(v >> 12) & 63], '=', '='};
  } else if (n - i == 2) {
    uint32_t v = uint32_t(p[i]) << 16 | uint32_t(p[i + 1]) << 8;
    out += {k[(v >> 18) & 63], k[(v >> 12) & 63], k[(v >> 6) & 63], '='};
  }
  return out;
}

std::string write_npy(const std::string& descr, const std::vector<int64_t>& shape, const void* data, size_t nbytes) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) dict += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? ", " : "");
  // numpy writes "(3,)" for one dimension and "(3, 4)" for more.
  if (shape.size() == 1) dict.replace(dict.size() - 2, 2, ",");
  dict += "), }";
  size_t total = 10 + dict.size() + 1;
  dict.append(64 - total % 64, ' ');  // numpy pads with 1..64 spaces, never 0
  dict += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(char(dict.size() & 0xff));
  out.push_back(char(dict.size() >> 8));
  out += dict;
  out.append(static_cast<const char*>(data), nbytes);
  return out;
}

}  // namespace moe::engine
