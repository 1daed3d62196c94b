#!/usr/bin/env python3
# Writes the hand-made seeds of fuzz/corpus that no moekit tool produces (safetensors headers, tokenizer,
# countdown and math inputs). Run from the repository root: python3 fuzz/make_seeds.py (stdlib only).
# The stream and JSONL seeds come from scripts/fuzz.sh --seed-corpus (tests/data/bad, the test generators).
import json, os, struct

def put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def safetensors(entries, data, meta=None, pad=True):
    h = dict(entries)
    if meta is not None:
        h["__metadata__"] = meta
    hb = json.dumps(h, separators=(",", ":")).encode()
    if pad:
        hb += b" " * ((8 - len(hb) % 8) % 8)
    return struct.pack("<Q", len(hb)) + hb + data

c = "fuzz/corpus"
put(f"{c}/safetensors/two.safetensors", safetensors(
    {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
     "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}, bytes(22), {"format": "pt"}))
put(f"{c}/safetensors/empty_tensor.safetensors", safetensors(
    {"z": {"dtype": "I64", "shape": [0, 5], "data_offsets": [0, 0]}}, b""))
put(f"{c}/safetensors/overlap.safetensors", safetensors(
    {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
     "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, bytes(6)))
put(f"{c}/safetensors/wrap.safetensors", safetensors(
    {"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}}, b""))
put(f"{c}/safetensors/short.safetensors", struct.pack("<Q", 1000) + b"{}")

tok = {"type": "char", "version": 1, "tokens": ["<pad>", "<eos>", "\n", " ", "a", "b", "=", "|"],
       "pad_id": 0, "eos_id": 1, "bos_id": None}
put(f"{c}/tokenizer/char_json", json.dumps(tok).encode() + b"\0" + b"ab ab=|\n")
put(f"{c}/tokenizer/text", b"3 7 12=33|(3 * 7) + 12")
put(f"{c}/tokenizer/bad_char", b"caf\xc3\xa9 \x00\x01")

put(f"{c}/countdown/correct", '{"numbers":[3,7,12],"target":33}\n(3 * 7) + 12<eos>')
put(f"{c}/countdown/wrong", '{"numbers":[3,7,12],"target":33}\n3 - 7 + 12')
put(f"{c}/countdown/wrap", '{"numbers":[1,2],"target":18446744073709551615}\n1 - 2')
put(f"{c}/countdown/huge", '{"numbers":[99999999999999999999,2],"target":4}\n2 * 2')
put(f"{c}/countdown/deep", '{"numbers":[2,2],"target":1}\n((((((2/2))))))')
put(f"{c}/countdown/raw", '9223372036854775807 * 2')

put(f"{c}/math/boxed", "so the answer is \\boxed{\\frac{1}{2}}\0" + "0.5")
put(f"{c}/math/tuple", "Answer: (1, 2)\0" + "(1,2)")
put(f"{c}/math/interval", "$\\boxed{[0, \\infty)}$\0" + "[0,\\infty)")
put(f"{c}/math/text", "The answer is 12 \\text{cm}.\0" + "12")
put(f"{c}/math/nested", "\\boxed{\\boxed{\\sqrt2}}\0" + "\\sqrt{2}")
