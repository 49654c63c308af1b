"""Reference dequantized values for kaizen's GGUF dequantizers, from the `gguf` Python package.

For each type: random raw blocks (seeded; the f16 scale fields set to moderate values so they
are finite), dequantized with `gguf.quants.dequantize`. Writes tests/fixtures/gguf_quants.json
with the raw bytes (hex) and the expected f32 values. Run: scripts/reference/gguf_quants.sh
"""

import json
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

rng = np.random.default_rng(1234)
# (type, offsets of f16 fields within a block)
types = {
    "F32": (T.F32, []),
    "F16": (T.F16, []),
    "BF16": (T.BF16, []),
    "Q4_0": (T.Q4_0, [0]),
    "Q4_1": (T.Q4_1, [0, 2]),
    "Q8_0": (T.Q8_0, [0]),
    "Q4_K": (T.Q4_K, [0, 2]),
    "Q5_K": (T.Q5_K, [0, 2]),
    "Q6_K": (T.Q6_K, [208]),
}
from importlib.metadata import version

out = {"gguf": version("gguf"), "cases": []}
for name, (qtype, f16_fields) in types.items():
    block_elems, block_bytes = quants.GGML_QUANT_SIZES[qtype]
    n_elems = 512
    n_blocks = n_elems // block_elems
    if qtype == T.F32:
        raw = rng.normal(0, 1, n_elems).astype("<f4").tobytes()
    elif qtype == T.F16:
        raw = rng.normal(0, 1, n_elems).astype("<f2").tobytes()
    elif qtype == T.BF16:
        raw = (rng.normal(0, 1, n_elems).astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    else:
        blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
        for off in f16_fields:
            scales = rng.uniform(-0.05, 0.05, n_blocks).astype("<f2")
            blocks[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
        raw = blocks.tobytes()
    data = np.frombuffer(raw, dtype=np.uint8).reshape(1, -1)
    values = quants.dequantize(data, qtype).reshape(-1).astype(np.float32)
    assert values.size == n_elems, (name, values.size)
    out["cases"].append({"type": name, "type_id": int(qtype), "hex": raw.hex(), "values": [float(v) for v in values]})

with open(sys.argv[1], "w") as f:
    json.dump(out, f)
print(f"wrote {sys.argv[1]}")
