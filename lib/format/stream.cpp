#include "moe/format/stream.h"

#define XXH_INLINE_ALL
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "format/internal.h"
#include "moe/cli/app.h"
#include "moe/format/routing.h"
#include "moe/io/error.h"
#include "moe/io/jsonl.h"

namespace moe::format {
namespace {

std::string hex64(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%016llx", static_cast<unsigned long long>(v));
  return b;
}

int64_t max_version(const std::string& kind) {
  if (kind == "rollout") return kRolloutVersion;
  if (kind == "routing") return kRoutingVersion;
  return 0;
}

bool is_zstd_magic(const unsigned char* p) {
  uint32_t m = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
  return m == 0xFD2FB528u || (m & 0xFFFFFFF0u) == 0x184D2A50u;  // a frame or a skippable frame
}

// Every str and bin of a record is referenced in place: the record's bytes live in its own zone.
bool reference_all(msgpack::type::object_type, std::size_t, void*) { return true; }

// The reader's decompressed window: malloc'd and grown with realloc. Unlike a std::vector<char>, growing it
// neither zero-fills the new capacity (only the bytes zstd writes become resident) nor, for a large block
// (which glibc maps and moves with mremap), holds the old and the new block at once while copying: a
// record just under the 256 MiB limit costs about its size in the window, not 1.5 to 2 times that.
class Window {
 public:
  explicit Window(size_t n) { resize(n); }
  ~Window() { std::free(p_); }
  Window(const Window&) = delete;
  Window& operator=(const Window&) = delete;
  char* data() { return p_; }
  size_t size() const { return size_; }
  // Keeps the first min(size(), n) bytes.
  void resize(size_t n) {
    void* q = std::realloc(p_, n);
    if (!q) throw std::bad_alloc();
    p_ = static_cast<char*>(q);
    size_ = n;
  }

 private:
  char* p_ = nullptr;
  size_t size_ = 0;
};

}  // namespace

nlohmann::json make_producer(const std::string& program, int argc, char** argv) {
  nlohmann::json args = nlohmann::json::array();
  for (int i = 0; i < argc; ++i) args.push_back(argv[i] ? argv[i] : "");
  return {{"program", program}, {"version", moe::cli::version()}, {"argv", args}};
}

const msgpack::object* Record::find(std::string_view key) const {
  const msgpack::object& m = map();
  if (m.type != msgpack::type::MAP) return nullptr;
  for (uint32_t i = 0; i < m.via.map.size; ++i)
    if (detail::as_key(m.via.map.ptr[i].key) == key && m.via.map.ptr[i].key.type == msgpack::type::STR)
      return &m.via.map.ptr[i].val;
  return nullptr;
}

// ---------------------------------------------------------------------------------------------- writer

struct StreamWriter::Impl {
  io::Output& out;
  Header header;
  ZSTD_CCtx* cctx = nullptr;
  std::vector<char> obuf;
  XXH3_state_t xxh;
  uint64_t count = 0;
  bool finished = false;

  Impl(io::Output& o, Header h) : out(o), header(std::move(h)) {}
  ~Impl() { ZSTD_freeCCtx(cctx); }

  void feed(const char* data, size_t n, ZSTD_EndDirective mode) {
    ZSTD_inBuffer in{data, n, 0};
    for (;;) {
      ZSTD_outBuffer o{obuf.data(), obuf.size(), 0};
      size_t ret = ZSTD_compressStream2(cctx, &o, &in, mode);
      if (ZSTD_isError(ret)) throw Error(out.name() + ": zstd compression failed: " + ZSTD_getErrorName(ret));
      if (o.pos) out.write(obuf.data(), o.pos);
      if (mode == ZSTD_e_continue ? in.pos == in.size : ret == 0) break;
    }
  }
};

StreamWriter::StreamWriter(io::Output& out, Header header, int zstd_level)
    : impl_(std::make_unique<Impl>(out, std::move(header))) {
  Impl& w = *impl_;
  if (w.header.kind.empty()) throw Error(out.name() + ": stream header without a kind");
  // Like zstd and gzip: compressed records on a terminal are garbage to a person and may upset it.
  if (out.is_stdout() && ::isatty(1))
    throw UsageError("refusing to write a binary " + w.header.kind + " stream to a terminal (use -o FILE or a pipe)");
  if (!w.header.meta.is_object()) throw Error(out.name() + ": stream header meta must be an object");
  w.cctx = ZSTD_createCCtx();
  if (!w.cctx) throw std::bad_alloc();
  ZSTD_CCtx_setParameter(w.cctx, ZSTD_c_compressionLevel, zstd_level);
  w.obuf.resize(ZSTD_CStreamOutSize());
  XXH3_64bits_reset(&w.xxh);

  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  pk.pack_map(5);
  detail::pack_key(pk, "magic");
  detail::pack_key(pk, kMagic);
  detail::pack_key(pk, "kind");
  detail::pack_key(pk, w.header.kind);
  detail::pack_key(pk, "version");
  pk.pack_int64(w.header.version);
  detail::pack_key(pk, "producer");
  detail::pack_json(pk, w.header.producer.is_null() ? nlohmann::json::object() : w.header.producer);
  detail::pack_key(pk, "meta");
  detail::pack_json(pk, w.header.meta);
  // From version 2 on the trailer checksum covers the header: a flipped bit in the temperature or the
  // shapes is caught like one in a record.
  if (w.header.version >= kHeaderChecksumVersion) XXH3_64bits_update(&w.xxh, sb.data(), sb.size());
  w.feed(sb.data(), sb.size(), ZSTD_e_continue);
  // A downstream reader can check the header (and fail fast on a wrong kind) before the first batch.
  flush();
}

StreamWriter::~StreamWriter() = default;

void StreamWriter::write_packed(const char* data, size_t n) {
  Impl& w = *impl_;
  if (w.finished) throw Error(w.out.name() + ": record written after finish()");
  const auto* p = reinterpret_cast<const uint8_t*>(data);
  detail::Scan scan;
  size_t need = 0;
  if (n == 0 || !((p[0] >= 0x80 && p[0] <= 0x8f) || p[0] == 0xde || p[0] == 0xdf))
    throw Error(w.out.name() + ": internal error: a record must be one msgpack map");
  // The writer checks the limits every reader enforces, so a stream it writes can always be read back.
  auto st = scan.step(p, n, detail::kMaxRecordBytes, need);
  if (st == detail::Scan::kInvalid)
    throw Error(w.out.name() + ": record " + std::to_string(w.count) + " cannot be written: " +
                (need > detail::kMaxRecordBytes ? "larger than the 256 MiB record limit" : scan.error));
  if (st != detail::Scan::kComplete || scan.pos != n)
    throw Error(w.out.name() + ": internal error: a record must be exactly one msgpack map");
  XXH3_64bits_update(&w.xxh, data, n);
  ++w.count;
  w.feed(data, n, ZSTD_e_continue);
}

void StreamWriter::flush() {
  Impl& w = *impl_;
  if (w.finished) return;
  w.feed(nullptr, 0, ZSTD_e_flush);
  w.out.flush();
}

void StreamWriter::finish() {
  Impl& w = *impl_;
  if (w.finished) return;
  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  pk.pack_map(1);
  detail::pack_key(pk, "trailer");
  pk.pack_map(2);
  detail::pack_key(pk, "count");
  pk.pack_uint64(w.count);
  detail::pack_key(pk, "checksum");
  pk.pack_uint64(XXH3_64bits_digest(&w.xxh));
  w.feed(sb.data(), sb.size(), ZSTD_e_end);
  w.out.flush();
  w.finished = true;
}

uint64_t StreamWriter::count() const { return impl_->count; }
const Header& StreamWriter::header() const { return impl_->header; }

// ---------------------------------------------------------------------------------------------- reader

struct StreamReader::Impl {
  io::Input& in;
  std::string name;
  ZSTD_DCtx* dctx = nullptr;
  // Compressed input.
  std::vector<char> inbuf;
  size_t in_pos = 0, in_len = 0;
  uint64_t in_base = 0;  // compressed offset of inbuf[0]
  bool in_eof = false;
  size_t frame_left = 0;  // last ZSTD_decompressStream hint: 0 = at a frame boundary
  uint64_t frame_start = 0;  // compressed offset of the frame being decoded
  // Decompressed window: bytes [beg, end) not yet consumed; buf()[beg] is at uncompressed offset `off`.
  // Records reference their bytes in place (no copy); while a Record holds the window (use_count > 1) the
  // bytes before `end` are never overwritten: new data goes after them or into a fresh window.
  std::shared_ptr<Window> win = std::make_shared<Window>(std::max<size_t>(ZSTD_DStreamOutSize() * 2, 1 << 18));
  Window& buf() { return *win; }
  size_t beg = 0, end = 0;
  uint64_t off = 0;
  Header header;
  std::string header_bytes;  // packed, hashed once the version says the checksum covers them
  uint64_t count = 0;
  XXH3_state_t xxh;
  bool done = false;
  bool concatenated = false;  // another stream may follow the trailer (next_stream)
  std::vector<std::string_view> keys;  // scratch: a record's keys, sorted

  explicit Impl(io::Input& i) : in(i), name(i.name()) {}
  ~Impl() { ZSTD_freeDCtx(dctx); }

  [[noreturn]] void fail(uint64_t offset, const std::string& what) const {
    throw Error(name + ": offset " + std::to_string(offset) + ": " + what);
  }
  [[noreturn]] void fail_compressed(const std::string& what) const {
    throw Error(name + ": compressed offset " + std::to_string(in_base + in_pos) + ": " + what);
  }

  bool read_input() {
    if (in_eof) return false;
    in_base += in_len;
    in_pos = in_len = 0;
    in_len = in.read(inbuf.data(), inbuf.size());
    if (in_len == 0) in_eof = true;
    return in_len > 0;
  }

  // Decompresses more bytes into the window; false at the end of the input (nothing more came out).
  // `within_frame`: also false once the current frame has ended (nothing of the next one is read).
  bool decompress_some(size_t min_room, bool within_frame = false) {
    const bool shared = win.use_count() > 1;
    if (!shared && beg == end) beg = end = 0;
    if (buf().size() - end < min_room) {
      if (shared) {
        auto fresh = std::make_shared<Window>(std::max(buf().size(), end - beg + min_room));
        std::memcpy(fresh->data(), buf().data() + beg, end - beg);
        end -= beg;
        beg = 0;
        win = std::move(fresh);
      } else {
        if (beg > 0) {  // slide the unconsumed bytes to the front before growing
          std::memmove(buf().data(), buf().data() + beg, end - beg);
          end -= beg;
          beg = 0;
        }
        if (buf().size() - end < min_room) buf().resize(std::max(buf().size() * 2, end + min_room));
      }
    }
    bool progressed = false;
    for (;;) {
      if (within_frame && progressed && frame_left == 0) return false;
      if (in_pos == in_len) read_input();
      if (frame_left == 0) frame_start = in_base + in_pos;  // at a boundary: the next frame starts here
      ZSTD_inBuffer zin{inbuf.data(), in_len, in_pos};
      ZSTD_outBuffer zout{buf().data() + end, buf().size() - end, 0};
      size_t ret = ZSTD_decompressStream(dctx, &zout, &zin);
      if (ZSTD_isError(ret)) {
        // At a boundary the bytes of the failed call start at in_pos: a frame magic there means the frame
        // began and is damaged; anything else is not a frame.
        if (frame_left == 0 && !(in_len - in_pos >= 4 && is_zstd_magic(reinterpret_cast<const unsigned char*>(inbuf.data() + in_pos))))
          fail_compressed(std::string("not a zstd frame where one should start (") + ZSTD_getErrorName(ret) + ")");
        // Report the frame: zstd detects damage only where a block fails to decode, often far behind it.
        throw Error(name + ": compressed offset " + std::to_string(frame_start) + ": corrupt zstd data in the frame starting there (" +
                    ZSTD_getErrorName(ret) + ", detected by compressed offset " + std::to_string(in_base + zin.pos) + ")");
      }
      // A call without progress at a frame boundary returns the size of the next frame header: that is
      // not "inside a frame", so only calls that moved data update the frame state.
      if (zin.pos != in_pos || zout.pos > 0) {
        frame_left = ret;
        progressed = true;
      }
      in_pos = zin.pos;
      end += zout.pos;
      if (zout.pos > 0) return true;
      if (in_pos == in_len && in_eof) return false;
    }
  }

  // Finds the next msgpack object in the window, decompressing as needed; returns its size.
  // `what` names the object for truncation messages ("header" or "record").
  size_t locate(const char* what) {
    detail::Scan scan;
    for (;;) {
      size_t avail = end - beg, need = 0;
      if (avail > 0) {
        auto st = scan.step(reinterpret_cast<const uint8_t*>(buf().data() + beg), avail, detail::kMaxRecordBytes, need);
        if (st == detail::Scan::kComplete) return scan.pos;
        if (st == detail::Scan::kInvalid) {
          if (need > detail::kMaxRecordBytes)
            fail(off, std::string(what) + " declares a length beyond the 256 MiB record limit (corrupt or hostile)");
          fail(off + scan.pos, scan.error + " in " + what + " starting at offset " + std::to_string(off));
        }
      } else {
        need = 1;
      }
      // Grow the window by at most about what it already holds: a declared length is trusted only as fast
      // as bytes arrive, so a short stream claiming a huge record never gets a huge buffer.
      const size_t want = need > avail ? need - avail : 1;
      const size_t room = std::max<size_t>(std::min<size_t>(want, std::max<size_t>(avail, size_t(1) << 20)),
                                           ZSTD_DStreamOutSize());
      if (!decompress_some(room)) {
        if (avail > 0)
          fail(off, std::string("truncated ") + what + ": the stream ends after " + std::to_string(avail) +
                        " of at least " + std::to_string(need) + " bytes");
        if (frame_left != 0 && std::string(what) == "header")
          fail(off, "truncated stream: the input ends inside a zstd frame (compressed offset " +
                        std::to_string(in_base + in_pos) + ") before the header is complete");
        if (frame_left != 0)
          fail(off, "truncated stream, missing trailer: the input ends inside an unfinished zstd frame (compressed offset " +
                        std::to_string(in_base + in_pos) + ") after " + std::to_string(count) +
                        " records (writer interrupted, or the file was cut)");
        if (std::string(what) == "header") fail(off, "empty zstd stream: no header");
        fail(off, "missing trailer: the stream ends after " + std::to_string(count) +
                      " records (writer interrupted, or the file was cut at a frame boundary)");
      }
    }
  }

  // Unpacks the located object into rec; its str and bin values point into the window, which rec keeps alive.
  // `zone` may be a previous record's zone: it is cleared and reused (one allocation less per record).
  void take(Record& rec, size_t size, std::unique_ptr<msgpack::zone> zone = nullptr) {
    if (zone) zone->clear();
    else zone = std::make_unique<msgpack::zone>();
    const char* copy = buf().data() + beg;
    size_t pos = 0;
    msgpack::unpack_limit limit(size, size, size, size, size, detail::kMaxDepth);
    msgpack::object obj;
    try {
      obj = msgpack::unpack(*zone, copy, size, pos, reference_all, nullptr, limit);
    } catch (const std::exception& e) {
      fail(off, std::string("bad msgpack: ") + e.what());
    }
    rec.handle = msgpack::object_handle(obj, std::move(zone));
    rec.keepalive = win;
    rec.offset = off;
  }

  void consume(size_t size) {
    beg += size;
    off += size;
  }

  void read_header() {
    // Detect the container by its magic bytes, before zstd has a chance to say something cryptic.
    peek_input(4);
    if (in_len == in_pos) throw Error(name + ": empty input: not a moekit stream");
    if (in_len - in_pos < 4 || !is_zstd_magic(reinterpret_cast<const unsigned char*>(inbuf.data() + in_pos)))
      throw Error(name + ": not a moekit stream (not zstd)");

    Record h;
    size_t size = locate("header");
    take(h, size);
    header_bytes.assign(buf().data() + beg, size);
    consume(size);
    const msgpack::object& m = h.map();
    const msgpack::object* magic = m.type == msgpack::type::MAP ? h.find("magic") : nullptr;
    if (!magic || detail::as_key(*magic) != kMagic)
      fail(0, "bad magic: not a moekit stream (the first map has no \"magic\": \"moekit\")");
    const msgpack::object* kind = h.find("kind");
    if (!kind || kind->type != msgpack::type::STR) fail(0, "bad header: \"kind\" missing or not a string");
    header.kind = std::string(detail::as_key(*kind));
    const msgpack::object* version = h.find("version");
    if (!version || version->type != msgpack::type::POSITIVE_INTEGER || version->via.u64 == 0 ||
        version->via.u64 > uint64_t(INT64_MAX))
      fail(0, "bad header: \"version\" missing or not a positive integer");
    header.version = static_cast<int64_t>(version->via.u64);
    if (header.version >= kHeaderChecksumVersion) XXH3_64bits_update(&xxh, header_bytes.data(), header_bytes.size());
    header_bytes.clear();
    if (const msgpack::object* p = h.find("producer")) header.producer = detail::to_json(*p);
    if (const msgpack::object* mt = h.find("meta")) {
      if (mt->type != msgpack::type::MAP) fail(0, "bad header: \"meta\" is not a map");
      header.meta = detail::to_json(*mt);
    }
  }

  void check_kind(const std::string& expected) {
    if (!expected.empty() && header.kind != expected)
      fail(0, "wrong stream kind: expected a " + expected + " stream, found " + io::excerpt(header.kind, 0, 40));
    int64_t maxv = max_version(header.kind);
    if (maxv == 0) fail(0, "unknown stream kind \"" + io::excerpt(header.kind, 0, 40) + "\" (this build reads rollout, routing)");
    if (header.version > maxv)
      fail(0, header.kind + " stream version " + std::to_string(header.version) + " is newer than this build reads (" +
                  std::to_string(maxv) + "). HINT: written by a newer moekit; upgrade moekit to read it");
    if (header.kind == "routing") {  // records cannot be checked without a sound shape
      try {
        RoutingMeta::from_json(header.meta);
      } catch (const Error& e) {
        fail(0, e.what());
      }
    }
  }

  void check_trailer(const msgpack::object& t, uint64_t at) {
    if (t.type != msgpack::type::MAP) fail(at, "bad trailer: \"trailer\" is not a map");
    const msgpack::object *cnt = nullptr, *sum = nullptr;
    for (uint32_t i = 0; i < t.via.map.size; ++i) {
      auto k = detail::as_key(t.via.map.ptr[i].key);
      if (k == "count") cnt = &t.via.map.ptr[i].val;
      if (k == "checksum") sum = &t.via.map.ptr[i].val;
    }
    if (!cnt || cnt->type != msgpack::type::POSITIVE_INTEGER) fail(at, "bad trailer: \"count\" missing or not a uint");
    if (!sum || sum->type != msgpack::type::POSITIVE_INTEGER) fail(at, "bad trailer: \"checksum\" missing or not a uint");
    if (cnt->via.u64 != count)
      fail(at, "record count mismatch: the trailer says " + std::to_string(cnt->via.u64) + " records, the stream holds " +
                   std::to_string(count));
    uint64_t got = XXH3_64bits_digest(&xxh);
    if (sum->via.u64 != got)
      fail(at, "checksum mismatch: the trailer says " + hex64(sum->via.u64) + ", the " +
                   (header.version >= kHeaderChecksumVersion ? "header and records" : "records") + " hash to " + hex64(got) +
                   (header.version >= kHeaderChecksumVersion ? " (header or records corrupted)" : " (records corrupted)"));
  }

  // Makes at least n compressed bytes available at inbuf[in_pos] unless the input ends first.
  void peek_input(size_t n) {
    while (in_len - in_pos < n && !in_eof) {
      std::memmove(inbuf.data(), inbuf.data() + in_pos, in_len - in_pos);
      in_base += in_pos;
      in_len -= in_pos;
      in_pos = 0;
      size_t got = in.read(inbuf.data() + in_len, inbuf.size() - in_len);
      if (got == 0) in_eof = true;
      in_len += got;
    }
  }

  // After the trailer: nothing may follow, neither decompressed bytes nor further compressed input except
  // zstd skippable frames (e.g. a seek table appended by the zstd seekable format).
  void check_end() {
    for (;;) {
      if (end > beg) fail(off, "trailing data after the trailer");
      if (frame_left == 0) {
        peek_input(4);
        if (in_pos == in_len) return;
        const auto* p = reinterpret_cast<const unsigned char*>(inbuf.data() + in_pos);
        bool skippable = in_len - in_pos >= 4 && (uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 |
                                                  uint32_t(p[3]) << 24) >> 4 == 0x184D2A5u;
        if (!skippable) fail_compressed("trailing data after the trailer (after the last zstd frame)");
        if (decompress_some(ZSTD_DStreamOutSize())) continue;  // output: a data frame followed the skippable one
        if (frame_left != 0) fail_compressed("truncated stream: the input ends inside a skippable frame");
        return;
      }
      if (!decompress_some(ZSTD_DStreamOutSize())) {
        if (frame_left != 0) fail_compressed("truncated stream: the input ends inside the last zstd frame");
        return;
      }
    }
  }

  // Concatenated streams, after a trailer: ends the trailer's zstd frame (whose bytes the writer has already
  // sent) without reading anything of what follows, so a pipe's next stream may still be unwritten.
  void finish_frame() {
    for (;;) {
      if (end > beg) fail(off, "trailing data after the trailer");
      if (frame_left == 0) return;
      if (!decompress_some(ZSTD_DStreamOutSize(), true)) {
        if (frame_left != 0) fail_compressed("truncated stream: the input ends inside the last zstd frame");
        if (end > beg) fail(off, "trailing data after the trailer");
        return;
      }
    }
  }

  // At a frame boundary after a trailer: true when another stream starts here (skippable frames before it
  // are skipped), false at the end of the input. Blocks until the input says which.
  bool another_stream() {
    for (;;) {
      peek_input(4);
      if (in_pos == in_len) return false;
      const auto* p = reinterpret_cast<const unsigned char*>(inbuf.data() + in_pos);
      bool skippable = in_len - in_pos >= 4 && (uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 |
                                                uint32_t(p[3]) << 24) >> 4 == 0x184D2A5u;
      if (!skippable && in_len - in_pos >= 4 && is_zstd_magic(p)) return true;
      if (!skippable) fail_compressed("after the trailer: neither the end of the input nor a zstd frame starting the next stream");
      if (decompress_some(ZSTD_DStreamOutSize(), true)) fail(off, "a skippable zstd frame produced data");
      if (frame_left != 0) fail_compressed("truncated stream: the input ends inside a skippable frame");
    }
  }
};

StreamReader::StreamReader(io::Input& in, const std::string& expected_kind, bool concatenated)
    : impl_(std::make_unique<Impl>(in)) {
  Impl& r = *impl_;
  r.concatenated = concatenated;
  r.dctx = ZSTD_createDCtx();
  if (!r.dctx) throw std::bad_alloc();
  r.inbuf.resize(ZSTD_DStreamInSize());
  XXH3_64bits_reset(&r.xxh);
  r.read_header();
  r.check_kind(expected_kind);
}

StreamReader::~StreamReader() = default;

bool StreamReader::next_stream(const std::string& expected_kind) {
  Impl& r = *impl_;
  if (!r.concatenated || !r.done) throw Error(r.name + ": internal error: next_stream() before the end of a concatenated stream");
  if (!r.another_stream()) return false;
  r.count = 0;
  XXH3_64bits_reset(&r.xxh);
  r.header = Header{};
  r.off = 0;  // offsets count from the start of each stream
  r.done = false;
  r.read_header();
  r.check_kind(expected_kind);
  return true;
}

const Header& StreamReader::header() const { return impl_->header; }
const std::string& StreamReader::name() const { return impl_->name; }
void StreamReader::fail(uint64_t offset, const std::string& what) const { impl_->fail(offset, what); }

bool StreamReader::next(Record& rec) {
  Impl& r = *impl_;
  // Let go of the previous record's window first, so the reader can reuse it in place; keep its zone.
  std::unique_ptr<msgpack::zone> zone = std::move(rec.handle.zone());
  rec.handle = msgpack::object_handle();
  rec.keepalive.reset();
  if (r.done) return false;
  size_t size = r.locate("record");
  r.take(rec, size, std::move(zone));
  const msgpack::object& m = rec.map();
  if (m.type != msgpack::type::MAP) r.fail(r.off, std::string("record is not a map (found ") + detail::type_name(m) + ")");
  // Keys are strings and unique: a reader must not depend on which duplicate a decoder happens to pick.
  const uint32_t n = m.via.map.size;
  bool trailer = false;
  for (uint32_t i = 0; i < n; ++i) {
    const auto& k = m.via.map.ptr[i].key;
    if (k.type != msgpack::type::STR)
      r.fail(r.off, std::string("record key is not a string (found ") + detail::type_name(k) + ")");
    if (detail::as_key(k) == "trailer") trailer = true;
  }
  // Sorted, so a record of many keys costs n log n, not n^2.
  r.keys.resize(n);
  for (uint32_t i = 0; i < n; ++i) r.keys[i] = detail::as_key(m.via.map.ptr[i].key);
  std::sort(r.keys.begin(), r.keys.end());
  for (uint32_t i = 1; i < n; ++i)
    if (r.keys[i] == r.keys[i - 1]) r.fail(r.off, "duplicate key \"" + io::excerpt(r.keys[i], 0, 64) + "\" in record");
  if (trailer) {
    r.check_trailer(*rec.find("trailer"), r.off);
    r.consume(size);
    if (r.concatenated) r.finish_frame();
    else r.check_end();
    r.done = true;
    rec.handle = msgpack::object_handle();
    return false;
  }
  XXH3_64bits_update(&r.xxh, r.buf().data() + r.beg, size);
  ++r.count;
  r.consume(size);
  return true;
}

}  // namespace moe::format
