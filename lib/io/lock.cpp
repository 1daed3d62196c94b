#include "moe/io/lock.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "moe/io/error.h"

namespace moe::io {
namespace {

constexpr const char* kLockTag = "moekit lock pid ";

std::string strip_slashes(std::string d) {
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return d;
}

std::string parent_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// "<name>.tmp-" + 6 mkdtemp characters, or "<name>.old-" + 12 hex digits (replace_dir's fallback).
bool matches(const std::string& entry, const std::string& name, const char* infix, size_t suffix_len) {
  const std::string prefix = name + infix;
  return entry.size() == prefix.size() + suffix_len && entry.compare(0, prefix.size(), prefix) == 0;
}

// Removes a directory holding only plain files; false (nothing removed) if it holds anything else.
bool remove_plain_dir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return false;
  std::vector<std::string> files;
  bool plain = true;
  while (struct dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    struct stat st;
    if (::lstat((dir + "/" + n).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) plain = false;
    files.push_back(n);
  }
  ::closedir(d);
  if (!plain) return false;
  for (const auto& n : files) ::unlink((dir + "/" + n).c_str());
  return ::rmdir(dir.c_str()) == 0;
}

std::string read_holder(int fd) {
  char b[64] = {0};
  ssize_t n = ::pread(fd, b, sizeof b - 1, 0);
  if (n <= 0) return "";
  std::string s(b, static_cast<size_t>(n));
  if (s.rfind(kLockTag, 0) != 0) return "";
  s = s.substr(std::strlen(kLockTag));
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

DirLock::DirLock(const std::string& dir_in, bool wait) {
  const std::string dir = strip_slashes(dir_in);
  path_ = dir + ".lock";
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(path_ + ": cannot open the lock file of " + dir + ": " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    throw Error(path_ + ": exists and is not a regular file; refusing to use it as the lock of " + dir);
  }
  if (st.st_size != 0) {
    char b[32] = {0};
    ssize_t n = ::pread(fd_, b, std::strlen(kLockTag), 0);
    if (n != static_cast<ssize_t>(std::strlen(kLockTag)) || std::memcmp(b, kLockTag, n) != 0) {
      ::close(fd_);
      fd_ = -1;
      throw Error(path_ + ": exists and is not a moekit lock file; refusing to overwrite it (move it away)");
    }
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) {
      int e = errno;
      ::close(fd_);
      fd_ = -1;
      throw Error(path_ + ": flock: " + std::strerror(e));
    }
    std::string holder = read_holder(fd_);
    if (holder.empty()) holder = "unknown";
    if (!wait) {
      ::close(fd_);
      fd_ = -1;
      throw Error(dir + ": locked by another moe-train-step (pid " + holder + ", lock file " + path_ +
                  "); use --wait to wait for it");
    }
    std::fprintf(stderr, "moe-train-step: %s: waiting for the lock held by pid %s\n", dir.c_str(), holder.c_str());
    int r;
    do {
      r = ::flock(fd_, LOCK_EX);
    } while (r != 0 && errno == EINTR);
    if (r != 0) {
      int e = errno;
      ::close(fd_);
      fd_ = -1;
      throw Error(path_ + ": flock: " + std::strerror(e));
    }
  }
  // Fixed width, written in place: the file is never truncated, so a reader sees a whole line.
  char line[48];
  std::snprintf(line, sizeof line, "%s%-20ld\n", kLockTag, static_cast<long>(::getpid()));
  if (::pwrite(fd_, line, std::strlen(line), 0) < 0) {
    // The pid is only for messages: the lock itself is held.
  }
}

DirLock::~DirLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the flock
}

int clean_stale_staging(const std::string& dir_in) {
  const std::string dir = strip_slashes(dir_in);
  const std::string parent = parent_of(dir), name = base_of(dir);
  DIR* d = ::opendir(parent.c_str());
  if (!d) return 0;
  std::vector<std::string> staging, backups;
  while (struct dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (matches(n, name, ".tmp-", 6)) staging.push_back(n);
    else if (matches(n, name, ".old-", 12)) backups.push_back(n);
  }
  ::closedir(d);
  auto is_dir = [&](const std::string& n) {
    struct stat st;
    return ::lstat((parent + "/" + n).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  };
  int removed = 0;
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0 && errno == ENOENT && backups.size() == 1 && is_dir(backups[0])) {
    // Killed between the two renames of the fallback: the backup is the last complete checkpoint.
    if (::rename((parent + "/" + backups[0]).c_str(), dir.c_str()) == 0) backups.clear();
  }
  for (const auto* list : {&staging, &backups})
    for (const auto& n : *list)
      if (is_dir(n) && remove_plain_dir(parent + "/" + n)) ++removed;
  return removed;
}

bool is_staging_name(const std::string& dir_in) {
  const std::string base = base_of(strip_slashes(dir_in));
  auto at = [&](const char* infix, size_t suffix_len) {
    const size_t n = std::strlen(infix);
    return base.size() > n + suffix_len && base.compare(base.size() - suffix_len - n, n, infix) == 0;
  };
  return at(".tmp-", 6) || at(".old-", 12);
}

void check_not_staging(const std::string& dir) {
  if (is_staging_name(dir))
    throw Error(dir + ": a staging directory left by an interrupted moe-train-step, not a checkpoint "
                      "(the next step on its model dir removes it)");
}

}  // namespace moe::io
