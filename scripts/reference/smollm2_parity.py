"""Reference values for kaizen's SmolLM2 parity tests, from transformers loading the same GGUF.

Writes tests/fixtures/smollm2_parity.json:
  - token ids (and decoded text) of several prompts, plain and chat-templated;
  - for one short prompt: the top-20 logits and the log-sum-exp at every position;
  - the greedy 32-token continuation of two prompts.

Run: scripts/reference/smollm2_parity.sh (creates the venv, fetches the model).
transformers dequantizes the GGUF to float32, as kaizen does, so both use the same weights.
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)
gguf = sys.argv[1]
out = sys.argv[2]
directory, name = gguf.rsplit("/", 1)

tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
model.eval()

plain = [
    "Hello, world!",
    "naïve café — 東京タワー 🙂🚀 ok",
    "digits 0123456789 and 3.14159, 1,000,000 and -42",
    "whitespace   runs\n\n\tand  tabs   \n end",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
    "<|im_start|>user\nspecial tokens inline<|im_end|>",
]
chats = [
    [{"role": "user", "content": "What is 12 + 30?"}],
    [
        {"role": "system", "content": "You are a careful math tutor."},
        {"role": "user", "content": "Compute 7 * 8."},
        {"role": "assistant", "content": "7 * 8 = 56."},
        {"role": "user", "content": "There may be an error. Give a corrected final answer."},
    ],
]

fixture = {"model": name, "transformers": __import__("transformers").__version__, "plain": [], "chat": []}
for text in plain:
    ids = tok.encode(text, add_special_tokens=False)
    fixture["plain"].append({"text": text, "ids": ids, "decoded": tok.decode(ids)})
def chat_ids(messages):
    """What apply_chat_template(tokenize=True) gives: render, then encode without post-processing."""
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text, tok.encode(text, add_special_tokens=False)


for messages in chats:
    text, ids = chat_ids(messages)
    fixture["chat"].append({"messages": messages, "rendered": text, "ids": ids})

short = "The capital of France is"
ids = tok.encode(short, add_special_tokens=False)
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0]
top = torch.topk(logits, 20, dim=-1)
fixture["logits"] = {
    "text": short,
    "ids": ids,
    "top_ids": top.indices.tolist(),
    "top_values": top.values.tolist(),
    "logsumexp": torch.logsumexp(logits, dim=-1).tolist(),
}

greedy = []
for text, chat in [("What is 12 + 30?", True), ("Once upon a time", False)]:
    if chat:
        _, prompt = chat_ids([{"role": "user", "content": text}])
    else:
        prompt = tok.encode(text, add_special_tokens=False)
    # Greedy by explicit argmax over full forward passes (no KV cache, no EOS stop).
    # `model.generate` is recorded too: in transformers 5.24 it departs from this loop (and from
    # its own step-by-step KV-cache loop) at a near-tie (top-2 logits 0.012 apart) in the first
    # prompt, so the argmax loop is the reference.
    seq = list(prompt)
    margins = []
    with torch.no_grad():
        for _ in range(32):
            logits = model(torch.tensor([seq])).logits[0, -1]
            top = torch.topk(logits, 2)
            margins.append(float(top.values[0] - top.values[1]))
            seq.append(int(top.indices[0]))
        gen = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=tok.eos_token_id)
    new = seq[len(prompt):]
    greedy.append({
        "text": text, "chat": chat, "prompt_ids": prompt, "new_ids": new, "new_text": tok.decode(new),
        "min_top2_margin": min(margins), "hf_generate_ids": gen[0, len(prompt):].tolist(),
    })
fixture["greedy"] = greedy

with open(out, "w") as f:
    json.dump(fixture, f, ensure_ascii=False, indent=1)
print(f"wrote {out}")
