// Record streams: zstd frames holding msgpack maps: a header, records, a trailer (formats/stream.md).
// No libtorch here. Readers use bounded memory; every defect is a moe::Error naming the stream and the
// uncompressed byte offset where it was found.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <msgpack.hpp>
#include <nlohmann/json.hpp>

#include "moe/io/file.h"

namespace moe::format {

inline constexpr const char* kMagic = "moekit";

// Highest version of each kind this build reads and the version it writes. Version 2 (both kinds): the
// trailer checksum covers the header's bytes too; version 1 streams are still read, with their rule
// (records only).
inline constexpr int64_t kRolloutVersion = 2;
inline constexpr int64_t kRoutingVersion = 2;
// The first version whose checksum covers the header (the same for every kind).
inline constexpr int64_t kHeaderChecksumVersion = 2;

struct Header {
  std::string kind;          // "rollout" | "routing"
  int64_t version = 1;       // raised only for breaking changes
  nlohmann::json producer;   // {"program": ..., "version": ..., "argv": [...]}
  nlohmann::json meta = nlohmann::json::object();  // kind-specific keys, see formats/<kind>.md
};

// Builds a producer object for the header from the running tool's argv.
nlohmann::json make_producer(const std::string& program, int argc, char** argv);

// One record as read: its msgpack map (valid while the Record lives) and where it started.
// str and bin values point into the reader's decompression window, which `keepalive` pins (no copy).
struct Record {
  msgpack::object_handle handle;
  std::shared_ptr<const void> keepalive;
  uint64_t offset = 0;  // uncompressed byte offset of the record in the stream
  const msgpack::object& map() const { return handle.get(); }
  // The value under `key`, or nullptr.
  const msgpack::object* find(std::string_view key) const;
};

// Writes one stream. Records are buffered and compressed; flush() ends a batch so that a downstream
// reader sees every record written so far. finish() writes the trailer; a stream without finish() has
// no trailer and every reader rejects it.
class StreamWriter {
 public:
  StreamWriter(io::Output& out, Header header, int zstd_level = 3);
  ~StreamWriter();
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  // Appends one record: `data` must be exactly one packed msgpack map without the reserved key "trailer".
  void write_packed(const char* data, size_t n);
  // Ends a batch: everything written so far reaches the output (zstd ZSTD_e_flush, then Output::flush).
  void flush();
  // Writes the trailer, ends the zstd frame and flushes. The caller still closes the io::Output.
  void finish();
  uint64_t count() const;
  const Header& header() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Reads one stream; the constructor reads and checks the header (magic, kind when `expected_kind` is
// non-empty, version <= the highest this build reads for that kind).
// `concatenated`: the input may hold several streams one after another (each with its trailer, e.g.
// `cat a.zst b.zst`); next() returns false at each trailer, and next_stream() goes on to the next one.
class StreamReader {
 public:
  StreamReader(io::Input& in, const std::string& expected_kind = "", bool concatenated = false);
  ~StreamReader();
  StreamReader(const StreamReader&) = delete;
  StreamReader& operator=(const StreamReader&) = delete;

  const Header& header() const;
  // Next record; false once the trailer has been read and verified (count, checksum, nothing after it).
  bool next(Record& rec);
  // Concatenated inputs only, once next() has returned false: true when another stream follows (its header
  // read and checked as by the constructor; offsets count from its start), false at the end of the input.
  // Nothing after a trailer is read before this call, so a pipe's next stream may be written afterwards.
  bool next_stream(const std::string& expected_kind = "");
  const std::string& name() const;  // the input's name, for messages
  // Throws moe::Error "<name>: offset N: <what>". For typed decoders reporting bad fields.
  [[noreturn]] void fail(uint64_t offset, const std::string& what) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A record (any kind) as JSON for display: bin payloads of known keys are decoded by the kind's schema
// (shapes from the header), unknown bin payloads shown as {"bin": N bytes}.
// Checks the record like the kind's typed reader does (moe::Error "<name>: offset N: ..." otherwise).
nlohmann::json record_to_json(const Header& header, const Record& rec);
nlohmann::json record_to_json(const Header& header, const Record& rec, const std::string& name);

}  // namespace moe::format
