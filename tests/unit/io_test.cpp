#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

#include "moe/io/error.h"
#include "moe/io/file.h"
#include "scratch.h"

namespace {
std::string scratch_dir() { return moe::testing::make_scratch_dir("moekit-io"); }
bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}
}  // namespace

TEST_CASE("Output writes through a temporary and renames on close", "[io]") {
  std::string dir = scratch_dir();
  std::string path = dir + "/out.bin";
  {
    moe::io::Output out(path, 8);
    out.write("hello, ");
    out.write("world");
    CHECK_FALSE(exists(path));  // nothing complete-looking before close
    out.close();
  }
  CHECK(moe::io::read_file(path) == "hello, world");
}

TEST_CASE("Output without close leaves no file behind", "[io]") {
  std::string dir = scratch_dir();
  std::string path = dir + "/out.bin";
  { moe::io::Output out(path); out.write("partial"); }
  CHECK_FALSE(exists(path));
  CHECK(::rmdir(dir.c_str()) == 0);  // and no temporary either
}

TEST_CASE("Output::NewFile writes a new file in place, refuses an existing path, removes it without close", "[io]") {
  std::string dir = scratch_dir();
  std::string path = dir + "/new.bin";
  {
    moe::io::Output out(path, moe::io::Output::NewFile{}, 4);
    out.write("large writes go straight through, ");
    CHECK(exists(path));  // in place: no temporary, no rename
    out.write("small ones buffered");
    out.close();
  }
  CHECK(moe::io::read_file(path) == "large writes go straight through, small ones buffered");
  // Never an existing path (O_EXCL): neither a file of ours nor a device.
  CHECK_THROWS_WITH(moe::io::Output(path, moe::io::Output::NewFile{}), Catch::Contains("cannot create"));
  CHECK_THROWS_WITH(moe::io::Output("/dev/null", moe::io::Output::NewFile{}), Catch::Contains("cannot create"));
  struct stat st;
  REQUIRE(::stat("/dev/null", &st) == 0);
  CHECK(S_ISCHR(st.st_mode));
  CHECK(::unlink(path.c_str()) == 0);
  { moe::io::Output out(path, moe::io::Output::NewFile{}); out.write("partial"); }
  CHECK_FALSE(exists(path));
  moe::io::write_new_file(path, "x");
  CHECK(moe::io::read_file(path) == "x");
  CHECK(::unlink(path.c_str()) == 0);
  CHECK(::rmdir(dir.c_str()) == 0);  // nothing else was left
}

namespace {
// The O_DIRECT bit of an open fd, from /proc/self/fdinfo (its "flags:" line, octal).
bool fd_has_o_direct(int fd) {
  std::string info = moe::io::read_file("/proc/self/fdinfo/" + std::to_string(fd));
  auto at = info.find("flags:");
  REQUIRE(at != std::string::npos);
  return (std::stoul(info.substr(at + 6), nullptr, 8) & O_DIRECT) != 0;
}
}  // namespace

TEST_CASE("Output::NewFile{direct} writes whole blocks with O_DIRECT and the same bytes as a buffered write", "[io]") {
  // In the scratch dir (a disk) and in /dev/shm (tmpfs): wherever the file system takes O_DIRECT, it is used
  // for the whole blocks; either way the file holds exactly the bytes written, whatever the write sizes.
  for (std::string dir : {scratch_dir(), std::string("/dev/shm")}) {
    if (!exists(dir)) continue;
    const std::string probe = dir + "/moekit-direct-probe-" + std::to_string(::getpid());
    int pfd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_DIRECT, 0644);
    const bool fs_direct = pfd >= 0;
    if (pfd >= 0) ::close(pfd);
    ::unlink(probe.c_str());
    const std::string path = dir + "/moekit-direct-" + std::to_string(::getpid()) + ".bin";
    std::string expect;
    uint32_t x = 12345;
    auto chunk = [&](size_t n) {
      std::string c(n, '\0');
      for (auto& ch : c) ch = static_cast<char>((x = x * 1664525u + 1013904223u) >> 24);
      expect += c;
      return c;
    };
    {
      moe::io::Output out(path, moe::io::Output::NewFile{true}, 5000);  // rounded up to 8192: two blocks
      for (size_t n : {1, 4095, 4096, 5000, 20000, 3, 8192, 1})
        out.write(chunk(n));
      CAPTURE(dir);
      CHECK(fd_has_o_direct(out.fd()) == fs_direct);  // 3 buffers went out as whole blocks: still O_DIRECT
      out.close();
    }
    CHECK(expect.size() == 41388);
    CHECK(moe::io::read_file(path) == expect);
    // A file ending on a block boundary, and an empty one.
    for (size_t n : {size_t(8192), size_t(0)}) {
      CHECK(::unlink(path.c_str()) == 0);
      expect.clear();
      {
        moe::io::Output out(path, moe::io::Output::NewFile{true}, 4096);
        if (n) out.write(chunk(n));
        out.close();
      }
      CHECK(moe::io::read_file(path) == expect);
    }
    // Never an existing path, and no file left without close.
    CHECK_THROWS_WITH(moe::io::Output(path, moe::io::Output::NewFile{true}), Catch::Contains("cannot create"));
    CHECK(::unlink(path.c_str()) == 0);
    { moe::io::Output out(path, moe::io::Output::NewFile{true}); out.write(chunk(10000)); }
    CHECK_FALSE(exists(path));
    if (dir != "/dev/shm") CHECK(::rmdir(dir.c_str()) == 0);
  }
}

TEST_CASE("Input reads lines and bytes and names missing files", "[io]") {
  std::string dir = scratch_dir();
  moe::io::write_file_atomic(dir + "/a.txt", "one\ntwo\nthree");
  moe::io::Input in(dir + "/a.txt");
  std::string line;
  REQUIRE(in.getline(line));
  CHECK(line == "one");
  char buf[4] = {};
  CHECK(in.read(buf, 4) == 4);
  CHECK(std::string(buf, 4) == "two\n");
  REQUIRE(in.getline(line));
  CHECK(line == "three");
  CHECK_FALSE(in.getline(line));
  CHECK_THROWS_WITH(moe::io::Input(dir + "/missing"), Catch::Contains("missing") && Catch::Contains("No such file"));
}

TEST_CASE("Input::watch: a wait on a pipe ends in BrokenPipe once the watched output's reader is gone", "[io]") {
  ::alarm(60);  // a wait that never ends kills the test rather than hanging it
  int in_pipe[2], out_pipe[2];
  REQUIRE(::pipe(in_pipe) == 0);
  REQUIRE(::pipe(out_pipe) == 0);
  {
    moe::io::Input in("/dev/fd/" + std::to_string(in_pipe[0]));
    moe::io::Output out("/dev/fd/" + std::to_string(out_pipe[1]));
    in.watch(out);
    REQUIRE(::write(in_pipe[1], "a\nbc", 4) == 4);
    std::string line;
    REQUIRE(in.getline(line));
    CHECK(line == "a");
    ::close(out_pipe[0]);
    // The input's writer is still there, with nothing more to say: without the watch both calls would wait.
    CHECK_THROWS_AS(in.getline(line), moe::BrokenPipe);
    char c;
    CHECK_THROWS_AS(in.read(&c, 1), moe::BrokenPipe);
  }
  ::close(in_pipe[0]);
  ::close(in_pipe[1]);
  ::close(out_pipe[1]);
  ::alarm(0);
}

TEST_CASE("Input::watch: a regular file is read as without it", "[io]") {
  std::string dir = scratch_dir();
  moe::io::write_file_atomic(dir + "/a.txt", "one\ntwo");
  int out_pipe[2];
  REQUIRE(::pipe(out_pipe) == 0);
  ::close(out_pipe[0]);
  moe::io::Output out("/dev/fd/" + std::to_string(out_pipe[1]));
  moe::io::Input in(dir + "/a.txt");
  in.watch(out);
  std::string line;
  REQUIRE(in.getline(line));
  CHECK(line == "one");
  REQUIRE(in.getline(line));
  CHECK(line == "two");
  CHECK_FALSE(in.getline(line));
  ::close(out_pipe[1]);
}

TEST_CASE("Output(FIFO, downstream): opened when its reader is there, an error once downstream's reader is gone", "[io]") {
  ::alarm(60);
  std::string dir = scratch_dir();
  const std::string fifo = dir + "/R";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  int down[2];
  REQUIRE(::pipe(down) == 0);
  const std::string down_name = "/dev/fd/" + std::to_string(down[1]);
  {
    moe::io::Output downstream(down_name);
    const int r = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
    REQUIRE(r >= 0);
    {
      moe::io::Output f(fifo, downstream);
      CHECK(f.in_place());
      f.write("x");
      f.close();
    }
    char c = 0;
    CHECK(::read(r, &c, 1) == 1);
    CHECK(c == 'x');
    ::close(r);
    // No reader of the FIFO, and none of downstream: an error, not a wait for ever.
    ::close(down[0]);
    CHECK_THROWS_WITH(moe::io::Output(fifo, downstream),
                      Catch::Contains(fifo + ": no reader opened the FIFO, and the reader of " + down_name +
                                      " has gone away"));
  }
  struct stat st;
  REQUIRE(::stat(fifo.c_str(), &st) == 0);
  CHECK(S_ISFIFO(st.st_mode));  // left as it was
  ::close(down[1]);
  ::alarm(0);
}

TEST_CASE("replace_dir swaps a staged directory in", "[io]") {
  std::string dir = scratch_dir();
  std::string ckpt = dir + "/ckpt", staged = dir + "/ckpt.staged";
  REQUIRE(::mkdir(ckpt.c_str(), 0755) == 0);
  moe::io::write_file_atomic(ckpt + "/w", "old");
  REQUIRE(::mkdir(staged.c_str(), 0755) == 0);
  moe::io::write_file_atomic(staged + "/w", "new");
  moe::io::replace_dir(staged, ckpt);
  CHECK(moe::io::read_file(ckpt + "/w") == "new");
  CHECK_FALSE(exists(staged));
  // Into a path that does not exist yet.
  REQUIRE(::mkdir(staged.c_str(), 0755) == 0);
  moe::io::write_file_atomic(staged + "/w", "fresh");
  moe::io::replace_dir(staged, dir + "/other");
  CHECK(moe::io::read_file(dir + "/other/w") == "fresh");
}

#include "moe/io/jsonl.h"

TEST_CASE("JsonlReader skips blank lines and names file and line in errors", "[io]") {
  std::string dir = scratch_dir();
  moe::io::write_file_atomic(dir + "/a.jsonl", "{\"a\": 1}\n\n  \n{\"a\": 2}\n[1, 2]\n{bad\n");
  moe::io::JsonlReader in(dir + "/a.jsonl");
  nlohmann::json j;
  REQUIRE(in.next(j));
  CHECK(j["a"] == 1);
  CHECK(in.lineno() == 1);
  REQUIRE(in.next(j));
  CHECK(j["a"] == 2);
  CHECK(in.lineno() == 4);
  CHECK_THROWS_WITH(in.next(j), Catch::Contains("a.jsonl:5: expected a JSON object"));
  CHECK_THROWS_WITH(in.next(j), Catch::Contains("a.jsonl:6: malformed JSON"));
  CHECK_FALSE(in.next(j));
}
