// The stream reader of every record kind: header, records, trailer; each record decoded by its kind's
// typed decoder and shown as JSON (what moe-route-dump prints). A rollout stream that reads cleanly is
// written again and read back: what a reader accepts, the writer can write (same limits on both sides).
#include <cstdint>
#include <string>

#include "fuzz_common.h"
#include "moe/format/rollout.h"
#include "moe/format/routing.h"
#include "moe/format/stream.h"
#include "moe/io/error.h"
#include "moe/io/file.h"

using namespace moe;

namespace {

void round_trip(const format::Header& h, const std::vector<format::RolloutRecord>& recs) {
  fuzz::MemFile f;
  {
    io::Output out(f.path());
    format::RolloutWriter w(out, h);
    for (const auto& r : recs) w.write(r);
    w.finish();
    out.close();
  }
  io::Input in(f.path());
  format::RolloutReader r(in);
  format::RolloutRecord rec;
  size_t n = 0;
  while (r.next(rec)) ++n;
  if (n != recs.size()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes = fuzz::as_stream(data, size);
  fuzz::MemFile f(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  try {
    io::Input in(f.path());
    format::StreamReader r(in);
    const format::Header& h = r.header();
    format::Record rec;
    std::vector<format::RolloutRecord> rollouts;
    format::RoutingMeta meta;
    if (h.kind == "routing") meta = format::RoutingMeta::from_json(h.meta);
    while (r.next(rec)) {
      (void)format::record_to_json(h, rec, r.name()).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      if (h.kind == "rollout") {
        format::RolloutRecord rr;
        format::decode_rollout(r.name(), format::rollout_vocab_size(h), rec, rr);
        (void)format::rollout_to_json(rr).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        if (rollouts.size() < 64) rollouts.push_back(std::move(rr));
      } else if (h.kind == "routing") {
        format::RoutingRecord rr;
        format::decode_routing(r.name(), meta, rec, rr);
        (void)format::routing_to_json(meta, rr).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      }
    }
    if (h.kind == "rollout") round_trip(h, rollouts);
  } catch (const Error&) {
  }
  return 0;
}
