#include "moe/io/file.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "moe/io/error.h"

namespace moe::io {
namespace {
std::string errstr() { return std::strerror(errno); }

std::string dirname_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string random_suffix() {
  static std::mt19937_64 rng(std::random_device{}() ^ (uint64_t(getpid()) << 32));
  static const char* hex = "0123456789abcdef";
  std::string s;
  uint64_t v = rng();
  for (int i = 0; i < 12; ++i) s += hex[(v >> (4 * i)) & 15];
  return s;
}

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), (directory ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open for sync: " + errstr());
  if (::fsync(fd) != 0 && errno != EINVAL) {
    int e = errno;
    ::close(fd);
    throw Error(path + ": fsync failed: " + std::strerror(e));
  }
  ::close(fd);
}
// Removes a directory of plain files (a checkpoint); best effort.
void remove_flat_dir(const std::string& dir) {
  if (DIR* d = ::opendir(dir.c_str())) {
    while (struct dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") ::unlink((dir + "/" + name).c_str());
    }
    ::closedir(d);
  }
  ::rmdir(dir.c_str());
}
}  // namespace

Input::Input(const std::string& path) {
  if (path.empty() || path == "-") {
    fd_ = 0;
    name_ = "<stdin>";
    return;
  }
  name_ = path;
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw Error(path + ": " + errstr());
  struct stat st;
  if (::fstat(fd_, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd_);
    throw Error(path + ": is a directory");
  }
  owned_ = true;
}

Input::~Input() {
  if (owned_) ::close(fd_);
}

size_t Input::read(void* buf, size_t n) {
  // Serve getline's read-ahead first so both calls can be mixed.
  if (pos_ < buf_.size()) {
    size_t k = std::min(n, buf_.size() - pos_);
    std::memcpy(buf, buf_.data() + pos_, k);
    pos_ += k;
    return k;
  }
  for (;;) {
    ssize_t r = ::read(fd_, buf, n);
    if (r >= 0) return static_cast<size_t>(r);
    if (errno == EINTR) continue;
    throw Error(name_ + ": read error: " + errstr());
  }
}

bool Input::getline(std::string& line) {
  line.clear();
  for (;;) {
    if (pos_ < buf_.size()) {
      const char* start = buf_.data() + pos_;
      const void* nl = std::memchr(start, '\n', buf_.size() - pos_);
      if (nl) {
        size_t len = static_cast<const char*>(nl) - start;
        line.append(start, len);
        pos_ += len + 1;
        return true;
      }
      line.append(start, buf_.size() - pos_);
    }
    buf_.resize(1 << 16);
    pos_ = 0;
    ssize_t r;
    do {
      r = ::read(fd_, buf_.data(), buf_.size());
    } while (r < 0 && errno == EINTR);
    if (r < 0) throw Error(name_ + ": read error: " + errstr());
    buf_.resize(static_cast<size_t>(r));
    if (r == 0) return !line.empty();
  }
}

Output::Output(const std::string& path, size_t buffer_bytes) : cap_(buffer_bytes) {
  buf_.reserve(cap_);
  if (path.empty() || path == "-") {
    fd_ = 1;
    name_ = "<stdout>";
    return;
  }
  name_ = path_ = path;
  tmp_path_ = path + ".tmp-" + random_suffix();
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(path + ": cannot create: " + errstr());
}

Output::~Output() {
  if (fd_ > 1) {
    ::close(fd_);
    if (!closed_) ::unlink(tmp_path_.c_str());
  }
}

void Output::write(const void* data, size_t n) {
  if (closed_) throw Error(name_ + ": write after close");
  if (buf_.size() + n > cap_) {
    flush();
    if (n >= cap_) {  // large writes go straight through, without a copy into the buffer
      write_fd(static_cast<const char*>(data), n);
      return;
    }
  }
  buf_.append(static_cast<const char*>(data), n);
}

void Output::flush() {
  write_fd(buf_.data(), buf_.size());
  buf_.clear();
}

void Output::write_fd(const char* p, size_t left) {
  while (left > 0) {
    ssize_t w = ::write(fd_, p, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE) throw BrokenPipe();
      throw Error(name_ + ": write error: " + errstr());
    }
    p += w;
    left -= static_cast<size_t>(w);
  }
}

void Output::close() {
  if (closed_) return;
  flush();
  if (fd_ > 1) {
    if (::fsync(fd_) != 0 && errno != EINVAL) throw Error(name_ + ": fsync failed: " + errstr());
    if (::close(fd_) != 0) {
      fd_ = -1;
      ::unlink(tmp_path_.c_str());
      throw Error(name_ + ": close failed: " + errstr());
    }
    fd_ = -1;
    if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
      int e = errno;
      ::unlink(tmp_path_.c_str());
      throw Error(name_ + ": cannot rename into place: " + std::strerror(e));
    }
    fsync_path(dirname_of(path_), true);
  }
  closed_ = true;
}

void write_file_atomic(const std::string& path, std::string_view contents) {
  Output out(path);
  out.write(contents);
  out.close();
}

std::string read_file(const std::string& path) {
  Input in(path);
  std::string s;
  char buf[1 << 16];
  for (size_t n; (n = in.read(buf, sizeof buf)) > 0;) s.append(buf, n);
  return s;
}

void sync_dir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw Error(dir + ": " + errstr());
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    std::string p = dir + "/" + name;
    if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode)) fsync_path(p, false);
  }
  ::closedir(d);
  fsync_path(dir, true);
}

void replace_dir(const std::string& staged, const std::string& dir) {
  struct stat st;
  bool exists = ::stat(dir.c_str(), &st) == 0;
#ifdef SYS_renameat2
  if (exists) {
    // Atomic swap: `dir` is the old or the new complete directory at every moment.
    const unsigned kRenameExchange = 2;
    if (::syscall(SYS_renameat2, AT_FDCWD, staged.c_str(), AT_FDCWD, dir.c_str(), kRenameExchange) == 0) {
      fsync_path(dirname_of(dir), true);
      remove_flat_dir(staged);  // it now holds the old checkpoint
      return;
    }
    if (errno != EINVAL && errno != ENOSYS)
      throw Error(dir + ": cannot replace with " + staged + ": " + errstr());
  }
#endif
  if (!exists) {
    if (::rename(staged.c_str(), dir.c_str()) != 0) throw Error(dir + ": cannot rename " + staged + ": " + errstr());
    fsync_path(dirname_of(dir), true);
    return;
  }
  // Fallback without an atomic exchange: old -> backup, new -> dir, remove backup. A crash in between leaves
  // the old checkpoint complete at the backup path, which is named in the error.
  std::string backup = dir + ".old-" + random_suffix();
  if (::rename(dir.c_str(), backup.c_str()) != 0) throw Error(dir + ": cannot move aside: " + errstr());
  if (::rename(staged.c_str(), dir.c_str()) != 0) {
    int e = errno;
    ::rename(backup.c_str(), dir.c_str());
    throw Error(dir + ": cannot rename " + staged + ": " + std::strerror(e));
  }
  fsync_path(dirname_of(dir), true);
  remove_flat_dir(backup);
}

}  // namespace moe::io
