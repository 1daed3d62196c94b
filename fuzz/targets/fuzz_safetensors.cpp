// The safetensors header parser (model loading reads every checkpoint through it).
#include <cstdint>

#include "moe/format/safetensors_header.h"
#include "moe/io/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    moe::format::SafetensorsHeader h = moe::format::parse_safetensors_header(data, size, "fuzz.safetensors");
    // What the loader relies on: every range inside the data section, sized by dtype x shape.
    for (const auto& [name, e] : h.entries) {
      if (e.end > size - h.data_start || e.begin > e.end) __builtin_trap();
      uint64_t bytes = moe::format::safetensors_element_size(e.dtype);
      for (int64_t d : e.shape) bytes *= static_cast<uint64_t>(d);
      if (bytes != e.end - e.begin) __builtin_trap();
    }
  } catch (const moe::Error&) {
  }
  return 0;
}
