"""Write tests/data/gemma3_reference.json: what transformers computes for gemma-3-270m in float32.

For each prompt: the token ids, the greedy continuation, and the top log-probabilities of the
token after the prompt. The long prompt (over the 512-token sliding window of Gemma 3's local
layers) checks that those layers see only their window. Needs torch, transformers and accelerate,
which are not project dependencies:

    pip install torch==2.13.0 transformers accelerate gguf
    wicore models pull gemma-3-270m
    python scripts/make_gemma_reference.py

transformers dequantises the GGUF to float32 and runs its own Gemma 3 implementation. llama.cpp is
not the reference here: it quantises activations to 8 bits, and its greedy text for these prompts
departs from the float32 computation after a few tokens.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from wicore.models import registry
from wicore.tokenizer import Tokenizer

MODEL = "gemma-3-270m"
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "gemma3_reference.json"
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "black")
PROMPTS = [
    "Once upon a time",
    "The capital of France is",
    "def fibonacci(n):",
    " ".join(f"Box {i} holds a {COLORS[i * 3 % 7]} ball." for i in range(90)) + " Box 3 holds a",
]
NEW_TOKENS = 32
TOP = 10


def main() -> None:
    path = registry.resolve(MODEL)
    tokenizer = Tokenizer.from_gguf(path)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    cases = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
            greedy = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
        logprobs = torch.log_softmax(logits.double(), dim=-1)
        top = torch.topk(logprobs, TOP)
        cases.append(
            {
                "prompt": prompt,
                "prompt_ids": ids,
                "greedy_ids": greedy[0, len(ids) :].tolist(),
                "top_logprobs": [[int(i), round(float(v), 5)] for v, i in zip(top.values, top.indices, strict=True)],
            }
        )
        print(len(ids), "prompt tokens:", repr(tokenizer.decode(cases[-1]["greedy_ids"])))
    meta = {"model": MODEL, "transformers": version("transformers"), "torch": version("torch")}
    OUT.write_text(json.dumps({"meta": meta, "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
