// NumPy .npy arrays (format versions 1.0, 2.0, 3.0: magic "\x93NUMPY", header dict with 'descr',
// 'fortran_order', 'shape'), read strictly: little-endian or byte-sized integer and float dtypes only,
// C order only, the data exactly as long as dtype x shape. Errors name the source. No libtorch.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace moe::engine {

// An array of numbers as stored: `kind` 'i' (signed), 'u' (unsigned) or 'f' (float), `itemsize` bytes per
// element, little-endian, row-major.
struct NumArray {
  char kind = 'i';
  int itemsize = 4;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // numel() * itemsize bytes, owned by whoever produced the array
  std::string dtype_name() const;  // "int32", "uint16", "float32", ...
  size_t numel() const;
  int64_t int_at(size_t i) const;   // integer kinds; throws moe::Error on a float array
  double float_at(size_t i) const;  // any kind
};

// Parses one .npy image of n bytes. `name` prefixes errors ("<name>: npy: ..."); the array points into `p`.
// Rejects: bad magic, unknown version, a header that is not the dict numpy writes, big-endian or object /
// string / complex / bool dtypes, fortran_order True, and a data length other than dtype x shape.
NumArray parse_npy(const uint8_t* p, size_t n, const std::string& name);

// A .npy file read whole; `arr.data` points into `bytes`.
struct NpyFile {
  std::string bytes;
  NumArray arr;
};
void read_npy_file(const std::string& path, NpyFile& out);

// Standard base64 (RFC 4648, '+' '/', '=' padding; padding optional). Throws moe::Error "<name>: ..." on
// any other character or a bad length.
std::string base64_decode(const std::string& s, const std::string& name);
std::string base64_encode(const void* data, size_t n);

// One .npy image of a C-order array (format 1.0, header padded to 64 bytes as numpy does).
std::string write_npy(const std::string& descr, const std::vector<int64_t>& shape, const void* data, size_t nbytes);

}  // namespace moe::engine
