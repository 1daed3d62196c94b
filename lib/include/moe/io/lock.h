// One writer per model dir: an flock held for a whole moe-train-step, and the clean-up of what a killed
// step left beside the dir. No libtorch here.
#pragma once
#include <string>

namespace moe::io {

// Locks `dir` (existing or not) with flock(2) on "<dir>.lock" beside it: the dir itself is swapped by
// replace_dir, so a lock inside it would be left behind on the old copy. The lock file holds
// "moekit lock pid N". A second holder waits when `wait` (saying whom it waits for on stderr once), else
// throws moe::Error "<dir>: locked by another moe-train-step (pid N) ...; --wait to wait for it".
// The kernel drops the lock when the process ends, also on kill -9; the file stays (removing it would race).
// A "<dir>.lock" that is not a regular file holding a moekit lock line is refused, never overwritten.
class DirLock {
 public:
  DirLock(const std::string& dir, bool wait);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// With the lock held: removes what interrupted steps left beside `dir`: staging dirs "<dir>.tmp-XXXXXX"
// (a new checkpoint not yet swapped in, or an old one half deleted after the swap) and backups
// "<dir>.old-XXXXXXXXXXXX" of the non-atomic fallback; if `dir` itself is missing and one backup exists,
// the backup is the last complete checkpoint and is renamed back. Only directories holding plain files are
// removed. Returns how many entries it removed.
int clean_stale_staging(const std::string& dir);

// True when the last component of `dir` is a staging or backup name of the above: such a dir is never a
// checkpoint to load (throws moe::Error saying so from check_not_staging).
bool is_staging_name(const std::string& dir);
void check_not_staging(const std::string& dir);

}  // namespace moe::io
