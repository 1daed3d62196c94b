#include "moe/model/safetensors_view.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "moe/io/error.h"

namespace moe::model {
namespace {
bool host_is_little_endian() {
  const uint16_t x = 1;
  uint8_t b;
  std::memcpy(&b, &x, 1);
  return b == 1;
}
}  // namespace

SafetensorsView::SafetensorsView(const std::string& path) : path_(path) {
  if (!host_is_little_endian()) throw Error(path + ": safetensors needs a little-endian host");
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw Error(path + ": " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    int e = errno;
    ::close(fd_);
    throw Error(path + ": " + std::strerror(e));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd_);
    throw Error(path + ": not a valid safetensors file: truncated (" + std::to_string(size_) +
                " bytes, shorter than the 8-byte header length)");
  }
  void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
  if (m == MAP_FAILED) {
    int e = errno;
    ::close(fd_);
    throw Error(path + ": mmap: " + std::strerror(e));
  }
  map_ = static_cast<const uint8_t*>(m);
  format::SafetensorsHeader h;
  try {
    h = format::parse_safetensors_header(map_, size_, path);
  } catch (const Error&) {
    ::munmap(const_cast<uint8_t*>(map_), size_);
    ::close(fd_);
    map_ = nullptr;
    fd_ = -1;
    throw;
  }
  data_start_ = h.data_start;
  entries_ = std::move(h.entries);
  metadata_ = std::move(h.metadata);
}

SafetensorsView::~SafetensorsView() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
  if (fd_ >= 0) ::close(fd_);
}

void SafetensorsView::read_bytes(const TensorEntry& e, void* dst) const {
  constexpr size_t kPiece = size_t{64} << 20;
  auto* out = static_cast<uint8_t*>(dst);
  const size_t n = e.end - e.begin;
  const off_t at = static_cast<off_t>(data_start_ + e.begin);
  for (size_t done = 0; done < n;) {
    const ssize_t r = ::pread(fd_, out + done, std::min(kPiece, n - done), at + static_cast<off_t>(done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw Error(path_ + ": read: " + std::strerror(errno));
    if (r == 0) throw Error(path_ + ": truncated since it was opened (" + std::to_string(done) + " of " + std::to_string(n) + " bytes of a tensor read)");
    done += static_cast<size_t>(r);
  }
}

const TensorEntry& SafetensorsView::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw Error(path_ + ": no tensor '" + name + "'");
  return it->second;
}

std::vector<std::string> SafetensorsView::names() const {
  std::vector<std::string> v;
  for (const auto& kv : entries_) v.push_back(kv.first);
  return v;
}

}  // namespace moe::model
