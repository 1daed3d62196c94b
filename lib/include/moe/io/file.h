// Files and "-": unbuffered fd readers, buffered checked writers, atomic replacement.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace moe::io {

class Output;

// A readable byte source: a file, or stdin for "-" or "". Throws moe::Error naming the file.
class Input {
 public:
  explicit Input(const std::string& path);  // "-" or "" = stdin
  ~Input();
  Input(const Input&) = delete;
  Input& operator=(const Input&) = delete;
  // Reads up to n bytes; returns 0 at end of file. Throws moe::Error on a read error.
  size_t read(void* buf, size_t n);
  // Reads one line without its '\n' into line; false at end of file. A line longer than max_bytes throws
  // moe::Error "<name>: offset N: line L is longer than max_bytes bytes" (N: where the line starts).
  bool getline(std::string& line, size_t max_bytes = size_t(256) << 20);
  uint64_t offset() const { return offset_; }  // bytes consumed by read() and getline() so far
  const std::string& name() const { return name_; }  // the path, or "<stdin>"
  // For a stage whose results go down a pipeline (--follow): while read() or getline() waits on a pipe,
  // FIFO, terminal or socket, also watch `out` (where this program writes its results, e.g. stdout), and
  // throw moe::BrokenPipe, as a write there would, once its reader has gone away, instead of waiting for
  // input whose results nobody would read. No busy waiting: one poll(2) on both fds, without a timeout.
  // Regular files and block devices never wait and are read as without it. `out` must outlive the reads.
  void watch(const Output& out);

 private:
  void wait_readable();  // returns when fd_ has data or end of file; BrokenPipe when watch_fd_'s reader is gone
  int fd_ = -1;
  int watch_fd_ = -1;
  bool may_block_ = true;  // not a regular file or block device
  bool owned_ = false;
  std::string name_;
  std::string buf_;  // getline's read-ahead
  size_t pos_ = 0;
  uint64_t offset_ = 0;
  uint64_t lines_ = 0;
};

// A buffered byte sink: a file, or stdout for "-" or "". Every write error is an exception:
// EPIPE throws moe::BrokenPipe (the reader went away), anything else moe::Error naming the file.
// A new path or a regular file is written to a temporary beside it and renamed over it by close(), so a
// failed run never leaves a complete-looking file; the destructor without close() removes the temporary.
// A symlink to a regular file replaces the target that way and keeps the link. Anything else (a character
// device such as /dev/null, a FIFO, /dev/stdout, /proc/self/fd/N, any path under /dev/ or /proc/) is
// opened and written in place, never renamed over, truncated or chmod-ed.
class Output {
 public:
  explicit Output(const std::string& path, size_t buffer_bytes = 1 << 16);  // "-" or "" = stdout
  // A file in a directory this program has just created (a checkpoint's staging dir): created new (O_EXCL,
  // never an existing path), written in place, fsynced by close(); no temporary and no rename, since the
  // whole directory is made durable and swapped in at once by its writer. The destructor without close()
  // removes it.
  // direct: write whole 4 KiB blocks with O_DIRECT, from an aligned buffer of buffer_bytes (rounded up to
  // 4 KiB), and only the last partial block through the page cache. For large files that are written once
  // and fsynced anyway (checkpoints): the bytes go from the buffer to the device without first being copied
  // into freshly allocated page-cache pages, which is what bounds a buffered write plus fsync on a virtual
  // machine whose free memory is handed back to the host. Where the file system refuses O_DIRECT (at open
  // or at the first write: EINVAL), the file is written through the page cache as without it.
  struct NewFile {
    bool direct = false;
  };
  Output(const std::string& path, NewFile, size_t buffer_bytes = 1 << 16);
  // As Output(path), but opening a FIFO, which waits for its reader, gives up once the reader of
  // `downstream` has gone away (another output of this program, e.g. stdout to the next stage of the
  // pipeline, where the FIFO's reader usually is, and which therefore will never come): moe::Error
  // "<path>: no reader opened the FIFO, and the reader of <downstream> has gone away". The open is retried
  // without blocking every 50 ms; once open, the FIFO is written (blocking) as by Output(path).
  Output(const std::string& path, const Output& downstream, size_t buffer_bytes = 1 << 16);
  ~Output();
  Output(const Output&) = delete;
  Output& operator=(const Output&) = delete;
  void write(const void* data, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  void flush();  // pushes buffered bytes to the fd (for pipes: the next stage sees them)
  void close();  // flush, fsync and rename a file; flush stdout. Idempotent.
  const std::string& name() const { return name_; }
  bool is_stdout() const { return fd_ == 1; }
  int fd() const { return fd_; }  // 1 for stdout; -1 once a file is closed
  bool in_place() const { return in_place_; }  // a device or pipe written in place (no temp, no rename)
  // The temporary written until close() renames it into place ("" for stdout and in-place outputs).
  const std::string& temp_path() const { return tmp_path_; }
  // close() for a staged group of outputs: flush, fsync and close the temporary but leave it in place;
  // commit() renames it over the target afterwards. For stdout and in-place outputs prepare() is close().
  void prepare();
  void commit();

 private:
  void open_path(const std::string& path, const Output* downstream);  // the constructors' work
  void write_fd(const char* p, size_t n);  // every byte or an exception
  void write_blocks(bool all);  // direct: the buffer's whole blocks with O_DIRECT (all: then the tail too)
  void drop_direct();           // clear O_DIRECT on fd_: the rest goes through the page cache
  int fd_ = -1;
  std::string name_, path_, tmp_path_;
  std::string buf_;
  size_t cap_;
  bool closed_ = false;
  bool in_place_ = false;
  bool prepared_ = false;
  bool new_file_ = false;
  bool direct_io_ = false;   // fd_ has O_DIRECT set
  char* dbuf_ = nullptr;     // NewFile{true}: every write goes through it; 4 KiB aligned, dcap_ bytes, dlen_ used
  size_t dcap_ = 0, dlen_ = 0;
};

// Writes `contents` to path atomically (temp file in the same dir, fsync, rename, fsync dir).
void write_file_atomic(const std::string& path, std::string_view contents);
// Writes `contents` to a new path in a staging dir (Output::NewFile: created, written, fsynced).
void write_new_file(const std::string& path, std::string_view contents);
// Reads a whole (small) file; throws moe::Error naming it.
std::string read_file(const std::string& path);

// Replaces directory `dir` by `staged` (a fully written sibling directory) so that at every moment
// either the old or the new directory is complete at `dir`. Uses renameat2(RENAME_EXCHANGE) where the
// kernel supports it. Throws moe::Error; on failure `dir` is untouched.
void replace_dir(const std::string& staged, const std::string& dir);
// fsyncs every regular file in dir and dir itself.
void sync_dir(const std::string& dir);

}  // namespace moe::io
