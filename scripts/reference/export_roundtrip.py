"""Checks that transformers loads a directory written by `kaizen export` and generates what
kaizen generates (the greedy continuations in tests/fixtures/smollm2_parity.json), with tied
embeddings still tied. Run: scripts/reference/export_roundtrip.sh"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)
directory, fixture_path = sys.argv[1], sys.argv[2]
fixture = json.load(open(fixture_path))
tok = AutoTokenizer.from_pretrained(directory)
model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
ok = tied
print(f"tied embeddings: {tied}")
for case in fixture["greedy"]:
    if case["chat"]:
        text = tok.apply_chat_template([{"role": "user", "content": case["text"]}], add_generation_prompt=True, tokenize=False)
        prompt = tok.encode(text, add_special_tokens=False)
        same_prompt = prompt == case["prompt_ids"]
        print(f"chat template ids identical: {same_prompt}")
        ok &= same_prompt
    seq = list(case["prompt_ids"])
    with torch.no_grad():
        for _ in range(32):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    same = seq[len(case["prompt_ids"]):] == case["new_ids"]
    print(f"greedy continuation of {case['text']!r} identical: {same}")
    ok &= same
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
