"""PyTorch side by side for the device check: transformers `generate` tokens/s and one TRL
GRPOTrainer step, in the shapes kaizen's device check measures, on the GPU machine's own
torch/transformers/TRL. Downloads nothing.

  generation  LlamaForCausalLM.generate, f32 (TF32 off, as kaizen's SGEMM), sampling at
              temperature 1, top-p 1, top-k 0, exactly --new-tokens new tokens (EOS off), at
              batches 1 (1 prompt x 1), 16 (2 x 8) and 64 (8 x 8); prompts of --prompt-tokens
              ids, the same ids kaizen's check uses (`(i * 7919 + 13) % vocab`, prompt p from
              i = p * 1000). One warm-up call (4 tokens) per batch, then one timed call.
  trl         one GRPOTrainer step of 8 prompts x 8 generations, --new-tokens tokens, f32,
              beta 0, loss "dapo", 4 micro-batches of 16, as scripts/bench/compare_trl.py
              configures it; wall = on_step_begin -> on_step_end, generation =
              `_generate_and_score_completions`; the first step is warm-up, the median of the
              rest is reported. Skipped (and recorded) when `trl` is not importable.

The model: SmolLM2-135M's shape with random weights (torch seed 0), or --model PATH (a GGUF
file, read with transformers' GGUF loader, or a Hugging Face model directory). Speed does not
depend on the weights' values: EOS is off and every row samples --new-tokens tokens. Token ids
are written as words `t<id>` of an offline word-level tokenizer built here, so TRL gets a
tokenizer without a download. --tiny uses a 2-layer model (vocabulary 300) for a quick check
of the script itself (`--device cpu --tiny`).

Usage: reference.py OUT.json [--device cuda|cpu] [--tiny] [--model PATH] [--no-trl]
Writes OUT.json; exits 0 whenever it could write it (errors are recorded per section).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

BATCHES = [(1, 1), (2, 8), (8, 8)]  # (prompts, generations per prompt)
PAD, EOS = "<pad>", "<eos>"


def token(i, vocab):
    return (i * 7919 + 13) % vocab


def prompt_ids(p, prompt_tokens, vocab):
    return [token(p * 1000 + i, vocab) for i in range(prompt_tokens)]


def smollm2_config(tiny):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                           rms_norm_eps=1e-5, max_position_embeddings=256, tie_word_embeddings=False,
                           attention_bias=True)
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                       rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=True,
                       attention_bias=False)


def load_model(args, torch):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if args.model and args.model != "random":
        if os.path.isfile(args.model):
            directory, name = os.path.split(os.path.abspath(args.model))
            model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
            # De-quantised to f32 already; GRPOTrainer refuses models still marked as quantised.
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.hf_quantizer = None
            model.quantization_method = None
            model.is_quantized = False
        else:
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                         local_files_only=True)
        label = args.model
    else:
        torch.manual_seed(0)
        model = LlamaForCausalLM(smollm2_config(args.tiny)).to(torch.float32)
        label = ("tiny (2 layers, vocab 300)" if args.tiny else "SmolLM2-135M shape") + \
            ", random weights (torch seed 0)"
    model.to(args.device).eval()
    # Every row samples exactly --new-tokens tokens.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model, label


def tokenizer_for(vocab):
    """A word-level tokenizer whose word `t<i>` is id i (ids 0 and 1 double as pad and EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab)}
    inner = Tokenizer(models.WordLevel(vocab=words, unk_token="t0"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=inner)
    tok.add_special_tokens({"pad_token": "t0", "eos_token": "t1"})
    return tok


def sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def generation(args, torch, model):
    vocab = model.config.vocab_size
    out = []
    for prompts, generations in BATCHES:
        rows = [prompt_ids(p, args.prompt_tokens, vocab) for p in range(prompts) for _ in range(generations)]
        ids = torch.tensor(rows, device=args.device)
        mask = torch.ones_like(ids)

        def run(new_tokens):
            torch.manual_seed(0)
            with torch.no_grad():
                return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                      top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, pad_token_id=0)

        run(4)  # warm-up: kernels, allocator, cuBLAS heuristics
        sync(torch, args.device)
        start = time.perf_counter()
        result = run(args.new_tokens)
        sync(torch, args.device)
        seconds = time.perf_counter() - start
        sampled = (result.shape[1] - args.prompt_tokens) * len(rows)
        out.append({"batch": len(rows), "prompts": prompts, "generations": generations,
                    "prompt_tokens": args.prompt_tokens, "new_tokens": result.shape[1] - args.prompt_tokens,
                    "seconds": seconds, "tokens_per_s": sampled / seconds})
        print(f"reference: generate batch {len(rows)}: {sampled / seconds:.0f} tokens/s", file=sys.stderr,
              flush=True)
    return {"batches": out, "dtype": "float32", "tf32": False,
            "sampling": "temperature 1, top-p 1, top-k 0, EOS off"}


def trl_step(args, torch, model):
    try:
        import trl
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except Exception as e:  # noqa: BLE001 - any import failure is the record
        return {"skipped": f"trl not importable: {type(e).__name__}: {e}"}

    vocab = model.config.vocab_size
    prompts, generations, micro_batches = 8, 8, 4
    tok = tokenizer_for(vocab)
    dataset = Dataset.from_list([
        {"prompt": " ".join(f"t{i}" for i in prompt_ids(p, args.prompt_tokens, vocab))}
        for p in range(prompts * args.trl_steps)
    ])

    def reward(completions, **kwargs):
        # Any reward that varies within a group (the model is random): word lengths mod 3.
        return [float(sum(len(c) for c in completion.split()) % 3) for completion in completions]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.starts, self.seconds = {}, []

        def on_step_begin(self, args_, state, control, **kwargs):
            sync(torch, args.device)
            self.starts[state.global_step] = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            sync(torch, args.device)
            self.seconds.append(time.perf_counter() - self.starts[state.global_step - 1])

    with tempfile.TemporaryDirectory(prefix="kaizen-reference-") as tmp:
        config = GRPOConfig(
            output_dir=tmp, use_cpu=args.device == "cpu", bf16=False, fp16=False, tf32=False,
            gradient_checkpointing=False, use_vllm=False,
            report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True,
            seed=7, shuffle_dataset=False, dataloader_num_workers=0, max_steps=args.trl_steps,
            per_device_train_batch_size=prompts * generations // micro_batches,
            gradient_accumulation_steps=micro_batches,
            num_generations=generations, num_iterations=1,
            max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0, top_k=0,
            generation_kwargs={"min_new_tokens": args.new_tokens},
            beta=0.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, scale_rewards="group",
            learning_rate=1e-6, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            max_grad_norm=1.0,
        )
        timer = StepTimer()
        model.train()
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                              processing_class=tok, callbacks=[timer])
        generation_s = []
        generate_and_score = trainer._generate_and_score_completions

        def timed(inputs):
            start = time.perf_counter()
            result = generate_and_score(inputs)
            sync(torch, args.device)
            generation_s.append(time.perf_counter() - start)
            return result

        trainer._generate_and_score_completions = timed
        trainer.train()
    if not (len(timer.seconds) == len(generation_s) == args.trl_steps):
        return {"error": f"{len(timer.seconds)} steps timed, {len(generation_s)} generation batches; "
                         f"expected {args.trl_steps} of each"}
    walls, gens = timer.seconds[1:], generation_s[1:]
    return {
        "rows": prompts * generations, "prompts": prompts, "generations": generations,
        "prompt_tokens": args.prompt_tokens, "completion_tokens": args.new_tokens,
        "micro_batches": micro_batches, "median_of": len(walls),
        "s_per_step": statistics.median(walls),
        "generation_s": statistics.median(gens),
        "learning_s": statistics.median([w - g for w, g in zip(walls, gens)]),
        "steps": [{"s": w, "generation_s": g} for w, g in zip(timer.seconds, generation_s)],
        "trl": trl.__version__,
    }


def section(f, *a):
    try:
        return f(*a)
    except Exception as e:  # noqa: BLE001 - one failing section must not hide the others
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, to check the script quickly")
    parser.add_argument("--model", default="random", help="random, a GGUF file or a HF model directory")
    parser.add_argument("--prompt-tokens", type=int, default=49)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--trl-steps", type=int, default=3, help="GRPO steps; the first is warm-up")
    parser.add_argument("--no-trl", action="store_true")
    args = parser.parse_args()
    if args.trl_steps < 2:
        parser.error("--trl-steps must be >= 2 (the first is warm-up)")

    summary = {"device": args.device}

    def write():
        # After every section, so that a timeout keeps what was measured.
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)

    try:
        import torch
        import transformers

        summary["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                               "torch_cuda": torch.version.cuda}
        if args.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        start = time.perf_counter()
        try:
            model, label = load_model(args, torch)
        except Exception as e:  # noqa: BLE001 - speed does not depend on the weights
            traceback.print_exc()
            summary["model_error"] = f"--model {args.model}: {type(e).__name__}: {e}; used random weights"
            args.model = "random"
            model, label = load_model(args, torch)
        summary["model"] = label
        summary["load_s"] = time.perf_counter() - start
        if args.device == "cuda":
            summary["gpu"] = torch.cuda.get_device_name()
        summary["generation"] = section(generation, args, torch, model)
        summary["trl"] = {"error": "did not finish (timeout?)"}
        write()
        summary["trl"] = {"skipped": "--no-trl"} if args.no_trl else section(trl_step, args, torch, model)
    except Exception as e:  # noqa: BLE001 - recorded, the JSON is still written
        traceback.print_exc()
        summary["error"] = f"{type(e).__name__}: {e}"
    write()
    print(f"reference: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
