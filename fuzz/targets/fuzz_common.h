// Helpers of the fuzz targets: byte buffers as files (memfd, read back through /proc/self/fd/N, which
// io::Input reads and io::Output writes in place), and zstd compression of a decompressed stream body.
#pragma once
#include <sys/mman.h>
#include <unistd.h>
#include <zstd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

namespace fuzz {

// An anonymous in-memory file; path() names it for io::Input / io::Output.
class MemFile {
 public:
  MemFile() : fd_(::memfd_create("moekit-fuzz", MFD_CLOEXEC)) {
    if (fd_ < 0) std::abort();
  }
  MemFile(const uint8_t* data, size_t n) : MemFile() {
    for (size_t off = 0; off < n;) {
      ssize_t w = ::write(fd_, data + off, n - off);
      if (w <= 0) std::abort();
      off += static_cast<size_t>(w);
    }
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_;
};

// The bytes as a stream file: given as they are when they start with a zstd (or skippable) frame magic,
// else taken as the decompressed msgpack sequence and compressed into one frame, so mutations reach the
// msgpack layer instead of dying in zstd's checks.
inline std::string as_stream(const uint8_t* data, size_t n) {
  if (n >= 4) {
    uint32_t m = uint32_t(data[0]) | uint32_t(data[1]) << 8 | uint32_t(data[2]) << 16 | uint32_t(data[3]) << 24;
    if (m == 0xFD2FB528u || (m & 0xFFFFFFF0u) == 0x184D2A50u) return std::string(reinterpret_cast<const char*>(data), n);
  }
  std::string out(ZSTD_compressBound(n), '\0');
  size_t r = ZSTD_compress(out.data(), out.size(), data, n, 1);
  if (ZSTD_isError(r)) std::abort();
  out.resize(r);
  return out;
}

}  // namespace fuzz
