#include "moe/io/file.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
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

// True when the reader of a pipe (FIFO, socket, terminal) that fd writes to has gone away, waiting up to
// timeout_ms for it (-1: no limit). A regular file or device reports nothing, and an fd that is not open
// (POLLNVAL) counts as present: there is nothing to watch.
bool reader_gone(int fd, int timeout_ms) {
  struct pollfd p = {fd, 0, 0};  // no events asked: POLLERR (a pipe without reader) and POLLHUP always are
  if (::poll(&p, 1, timeout_ms) <= 0) return false;
  return (p.revents & (POLLERR | POLLHUP)) != 0;
}

// Opens FIFO path for writing. A blocking open(2) returns only when a reader opens the FIFO; here an
// O_NONBLOCK open is retried (ENXIO: no reader yet) every 50 ms while the reader of downstream is there.
// The fd is made blocking again before it is returned.
int open_fifo_for_writing(const std::string& path, const std::string& downstream_name, int downstream_fd) {
  for (;;) {
    int fd = ::open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd >= 0) {
      const int fl = ::fcntl(fd, F_GETFL);
      if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        const int e = errno;
        ::close(fd);
        throw Error(path + ": cannot open for writing: " + std::strerror(e));
      }
      return fd;
    }
    if (errno == EINTR) continue;
    if (errno != ENXIO) throw Error(path + ": cannot open for writing: " + errstr());
    if (reader_gone(downstream_fd, 50))
      throw Error(path + ": no reader opened the FIFO, and the reader of " + downstream_name +
                  " has gone away (the pipeline's next stage ended)");
  }
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

void Input::watch(const Output& out) {
  watch_fd_ = out.fd();
  struct stat st;
  may_block_ = !(::fstat(fd_, &st) == 0 && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)));
}

void Input::wait_readable() {
  if (watch_fd_ < 0 || !may_block_) return;
  for (;;) {
    // Nothing asked of watch_fd_: POLLERR (a pipe without reader) and POLLHUP are reported regardless.
    struct pollfd p[2] = {{fd_, POLLIN, 0}, {watch_fd_, 0, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      throw Error(name_ + ": poll failed: " + errstr());
    }
    if (p[1].revents & POLLNVAL) {  // not open (stdout closed): nothing to watch
      watch_fd_ = -1;
      return;
    }
    if (p[1].revents & (POLLERR | POLLHUP)) throw BrokenPipe();
    if (p[0].revents) return;  // data, end of file, or an error that read(2) reports
  }
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
    offset_ += k;
    return k;
  }
  wait_readable();
  for (;;) {
    ssize_t r = ::read(fd_, buf, n);
    if (r >= 0) {
      offset_ += static_cast<uint64_t>(r);
      return static_cast<size_t>(r);
    }
    if (errno == EINTR) continue;
    throw Error(name_ + ": read error: " + errstr());
  }
}

bool Input::getline(std::string& line, size_t max_bytes) {
  line.clear();
  const uint64_t start = offset_;
  ++lines_;
  auto too_long = [&] {
    throw Error(name_ + ": offset " + std::to_string(start) + ": line " + std::to_string(lines_) + " is longer than " +
                std::to_string(max_bytes) + " bytes (the limit of one JSON Lines record)");
  };
  for (;;) {
    if (pos_ < buf_.size()) {
      const char* p = buf_.data() + pos_;
      const void* nl = std::memchr(p, '\n', buf_.size() - pos_);
      size_t len = nl ? static_cast<size_t>(static_cast<const char*>(nl) - p) : buf_.size() - pos_;
      if (line.size() + len > max_bytes) too_long();
      line.append(p, len);
      pos_ += len + (nl ? 1 : 0);
      offset_ += len + (nl ? 1 : 0);
      if (nl) return true;
    }
    wait_readable();
    buf_.resize(1 << 16);
    pos_ = 0;
    ssize_t r;
    do {
      r = ::read(fd_, buf_.data(), buf_.size());
    } while (r < 0 && errno == EINTR);
    if (r < 0) throw Error(name_ + ": read error: " + errstr());
    buf_.resize(static_cast<size_t>(r));
    if (r == 0) {
      if (line.empty()) --lines_;
      return !line.empty();
    }
  }
}

Output::Output(const std::string& path, size_t buffer_bytes) : cap_(buffer_bytes) { open_path(path, nullptr); }

Output::Output(const std::string& path, const Output& downstream, size_t buffer_bytes) : cap_(buffer_bytes) {
  open_path(path, &downstream);
}

void Output::open_path(const std::string& path, const Output* downstream) {
  buf_.reserve(cap_);
  if (path.empty() || path == "-") {
    fd_ = 1;
    name_ = "<stdout>";
    return;
  }
  name_ = path_ = path;
  // Atomic replacement (temp + rename) is right only for a regular file or a new path. Anything else is
  // opened and written in place: renaming over /dev/null, a FIFO or /proc/self/fd/1 would replace a device
  // or a pipe by a regular file (for the whole machine when run as root).
  struct stat lst, st;
  const bool exists = ::lstat(path.c_str(), &lst) == 0;
  const bool special_tree = path.rfind("/dev/", 0) == 0 || path.rfind("/proc/", 0) == 0;
  if (exists && S_ISDIR(lst.st_mode)) throw Error(path + ": is a directory");
  if (exists && (special_tree || ::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))) {
    const bool target = ::stat(path.c_str(), &st) == 0;
    if (target && S_ISDIR(st.st_mode)) throw Error(path + ": is a directory");
    in_place_ = true;
    if (target && S_ISFIFO(st.st_mode) && downstream && downstream->fd() >= 0) {
      fd_ = open_fifo_for_writing(path, downstream->name(), downstream->fd());
      return;
    }
    // A dangling symlink creates its target (nothing to truncate: it did not exist).
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
    if (fd_ < 0) throw Error(path + ": cannot open for writing: " + errstr());
    return;
  }
  if (exists && S_ISLNK(lst.st_mode)) {
    // A symlink to a regular file: replace the target atomically, keep the link.
    char* real = ::realpath(path.c_str(), nullptr);
    if (!real) throw Error(path + ": cannot resolve symlink: " + errstr());
    path_ = real;
    std::free(real);
  }
  tmp_path_ = path_ + ".tmp-" + random_suffix();
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(path + ": cannot create: " + errstr());
}

namespace {
constexpr size_t kDirectBlock = 4096;  // O_DIRECT's alignment of memory, offsets and lengths on every common device
}  // namespace

Output::Output(const std::string& path, NewFile nf, size_t buffer_bytes) : cap_(buffer_bytes) {
  name_ = path_ = path;
  const int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY;
  if (nf.direct) {
    dcap_ = std::max(kDirectBlock, (buffer_bytes + kDirectBlock - 1) / kDirectBlock * kDirectBlock);
    if (::posix_memalign(reinterpret_cast<void**>(&dbuf_), kDirectBlock, dcap_) != 0) throw std::bad_alloc();
    fd_ = ::open(path.c_str(), flags | O_DIRECT, 0644);
    direct_io_ = fd_ >= 0;
    // EINVAL: this file system has no O_DIRECT (the path was not created); anything else fails below too.
    if (fd_ < 0 && errno == EINVAL) fd_ = ::open(path.c_str(), flags, 0644);
  } else {
    buf_.reserve(cap_);
    fd_ = ::open(path.c_str(), flags, 0644);
  }
  if (fd_ < 0) {
    std::free(dbuf_);
    throw Error(path + ": cannot create: " + errstr());
  }
  new_file_ = true;
}

void Output::drop_direct() {
  if (!direct_io_) return;
  const int fl = ::fcntl(fd_, F_GETFL);
  if (fl < 0 || ::fcntl(fd_, F_SETFL, fl & ~O_DIRECT) != 0) throw Error(name_ + ": cannot clear O_DIRECT: " + errstr());
  direct_io_ = false;
}

void Output::write_blocks(bool all) {
  size_t n = all ? dlen_ : dlen_ / kDirectBlock * kDirectBlock;
  const char* p = dbuf_;
  while (n > 0) {
    if (direct_io_ && n < kDirectBlock) drop_direct();  // the last partial block goes through the page cache
    ssize_t w = ::write(fd_, p, direct_io_ ? n / kDirectBlock * kDirectBlock : n);
    if (w < 0) {
      if (errno == EINTR) continue;
      // A file system that opens with O_DIRECT but wants another alignment: through the page cache.
      if (errno == EINVAL && direct_io_) {
        drop_direct();
        continue;
      }
      throw Error(name_ + ": write error: " + errstr());
    }
    // A short write leaves the file offset off the block grid: O_DIRECT would refuse what follows.
    if (static_cast<size_t>(w) % kDirectBlock != 0) drop_direct();
    p += w;
    n -= static_cast<size_t>(w);
  }
  const size_t done = static_cast<size_t>(p - dbuf_);
  std::memmove(dbuf_, p, dlen_ - done);
  dlen_ -= done;
}

Output::~Output() {
  std::free(dbuf_);
  if (fd_ > 1) ::close(fd_);
  if (!closed_ && !in_place_ && !tmp_path_.empty()) ::unlink(tmp_path_.c_str());  // never committed
  if (!closed_ && new_file_) ::unlink(path_.c_str());
}

void Output::write(const void* data, size_t n) {
  if (closed_) throw Error(name_ + ": write after close");
  if (dbuf_) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const size_t k = std::min(n, dcap_ - dlen_);
      std::memcpy(dbuf_ + dlen_, p, k);
      dlen_ += k;
      p += k;
      n -= k;
      if (dlen_ == dcap_) write_blocks(false);
    }
    return;
  }
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
  if (dbuf_) {
    write_blocks(true);
    return;
  }
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

void Output::prepare() {
  if (closed_ || prepared_) return;
  if (in_place_ || fd_ <= 1 || new_file_) {
    close();
    return;
  }
  flush();
  if (::fsync(fd_) != 0 && errno != EINVAL) throw Error(name_ + ": fsync failed: " + errstr());
  int r = ::close(fd_);
  fd_ = -1;
  if (r != 0) throw Error(name_ + ": close failed: " + errstr());
  prepared_ = true;
}

void Output::commit() {
  if (closed_) return;
  if (!prepared_) throw Error(name_ + ": internal error: commit() before prepare()");
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) throw Error(name_ + ": cannot rename into place: " + errstr());
  closed_ = true;
  fsync_path(dirname_of(path_), true);
}

void Output::close() {
  if (closed_) return;
  flush();
  if (new_file_) {
    if (::fsync(fd_) != 0) throw Error(name_ + ": fsync failed: " + errstr());
    int r = ::close(fd_);
    fd_ = -1;
    if (r != 0) throw Error(name_ + ": close failed: " + errstr());
    closed_ = true;
    return;
  }
  if (fd_ > 1 && in_place_) {
    // Devices and pipes: nothing to rename. fsync means nothing to most of them (EINVAL) but reports a full
    // disk behind /proc/self/fd/N of a regular file.
    if (::fsync(fd_) != 0 && errno != EINVAL && errno != EROFS) throw Error(name_ + ": fsync failed: " + errstr());
    int r = ::close(fd_);
    fd_ = -1;
    if (r != 0) throw Error(name_ + ": close failed: " + errstr());
  } else if (fd_ > 1) {
    prepare();
    commit();
    return;
  }
  closed_ = true;
}

void write_file_atomic(const std::string& path, std::string_view contents) {
  Output out(path);
  out.write(contents);
  out.close();
}

void write_new_file(const std::string& path, std::string_view contents) {
  Output out(path, Output::NewFile{});
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
