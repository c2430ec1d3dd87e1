"""Write tests/data/tokenizer_reference.json: token ids and chat renders from HuggingFace transformers.

transformers is the reference, so it is needed only here, never at test time:

    pip install transformers sentencepiece protobuf   # no torch
    python scripts/make_tokenizer_reference.py

Two adjustments to transformers (5.x) are made; the second is noted in the output file:
- Its GGUF loader imports torch although building a tokenizer never touches it; a stub module stands in.
- Its GGUF converter gives Qwen2 vocabularies no normaliser, while Qwen2's own tokenizer.json (and
  transformers' Qwen2Tokenizer) normalise to NFC; we add NFC so the reference is the model's real tokenizer.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

from wicore.models.registry import models_dir

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "tokenizer_reference.json"
MODELS = ("qwen2.5-coder-0.5b-instruct", "gemma-3-270m")

PYTHON_CODE = '''import os


class Greeter:
    """Say hello."""

    def __init__(self, name: str = "world") -> None:
        self.name = name

    def greet(self, times: int = 3) -> list[str]:
        if times <= 0:
\t\t\traise ValueError(f"times must be > 0, got {times!r}")
        return [f"Hello, {self.name}!" for _ in range(times)]  # trailing spaces   
'''

JS_CODE = """function fib(n) {
\tif (n < 2) {
\t\treturn n;
\t}
\treturn fib(n - 1) + fib(n - 2);
}

const xs = [1, 2, 3].map((x) => x ** 2);
console.log(`fib(10) = ${fib(10)}`, xs);   // => 55 [ 1, 4, 9 ]
"""

CORPUS: list[str] = [
    "",
    "Hello world",
    " Hello world",
    "The quick brown fox jumps over the lazy dog. It wasn't the fox's fault; they'd said so.",
    "I don't know, you're right, we'll see, I'm sure it's fine, they've gone, he'd go. DON'T SHOUT, It'S ok.",
    "Tokenizers split text into pieces: words, sub-words, punctuation (and spaces!) -- 'quotes' & \"double\".",
    PYTHON_CODE,
    JS_CODE,
    "def f(x):\n\treturn x\n\n\n\nclass A:\n    pass\n",
    "今天天气很好，我们去公园散步吧。机器学习是人工智能的一个分支。",
    "日本語のテキストです。カタカナとひらがな、そして漢字。東京タワーへ行きましょう！",
    "한국어 문장도 있습니다. Привет, мир! Γειά σου κόσμε. مرحبا بالعالم",
    "Emoji: 😀😃😄 🎉🚀 ❤️ 👍🏽 👍🏿 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵🇫🇷",
    "👩🏾‍🚀 and 🧑🏻‍🤝‍🧑🏿 in a row: 👩🏾‍🚀👩🏾‍🚀👩🏾‍🚀",
    "Numbers: 0 7 42 1234 12345678901234567890 3.14159265358979 -2.5e-10 1,000,000 0xDEADBEEF",
    "Year 2024, pi=3.1415926535, phone +1-555-0100, 99.99% of 100000000000000000000000",
    "Special tokens in text: <|im_start|>user\nhi<|im_end|>\n<|endoftext|> <start_of_turn>model\n<end_of_turn>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<bos><eos><pad> <tool_call>{}</tool_call> <|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
    "Accented NFC: café naïve résumé Ångström façade coöperate São Paulo",
    "Accented NFD: cafe\u0301 nai\u0308ve re\u0301sume\u0301 A\u030angstro\u0308m fac\u0327ade",
    "Mixed:\u00e9 vs e\u0301, \u212b vs \u00c5, ﬁ ligature, ① circled, ＡＢＣ fullwidth",
    "Line one\r\nLine two\r\n\r\nTabs\there\t\tand\t\t\tthere",
    "trailing spaces   \nand more \n \n  \n   \n",
    "   leading spaces",
    "a  b   c    d     e      f       g        h",
    "x" + " " * 100 + "y",
    'Mojo🔥 and C++/Rust: fn main() { println!("hi"); } // ok?',
    "URLs https://example.com/path?q=1&r=two#frag and emails a.b@c.io",
    "\u200b zero width \u00a0 nbsp \u3000 ideographic space \u2028 line sep",
    "Control \x01\x02\x1f chars and a bell \x07",
    "Fancy quotes “like this” and ‘this’, dashes – — and ellipsis…",
]
CORPUS += [" " * n for n in (1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 64)]
CORPUS += ["\n" * n for n in (1, 2, 3, 4, 7, 16, 31, 32, 40)]
CORPUS += ["\t" * n for n in (1, 2, 3, 8, 31, 33)]
CORPUS += [f"a{' ' * n}b" for n in (1, 2, 3, 6, 9, 20)]
CORPUS += [f"x{chr(10) * n}y" for n in (1, 2, 5)]

CONVERSATIONS: list[dict] = [
    {
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Write a haiku about tokenizers."},
        ],
        "add_generation_prompt": True,
    },
    {"messages": [{"role": "user", "content": "Hello! 你好 👋"}], "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "Hello! 你好 👋"}], "add_generation_prompt": False},
    {
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Japan?\n\n  Indented line."},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "user", "content": "def add(a, b):\n\treturn a + b\n# explain"},
            {"role": "assistant", "content": "It adds `a` and `b`."},
        ],
        "add_generation_prompt": False,
    },
    {
        "messages": [{"role": "user", "content": "What's the weather in Zürich?"}],
        "add_generation_prompt": True,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Météo actuelle <for> a city & region",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string", "description": "City name, e.g. 東京"}},
                        "required": ["city"],
                    },
                },
            }
        ],
    },
]


def _load_transformers() -> type:
    from transformers import AutoTokenizer, modeling_gguf_pytorch_utils

    # Only the config/metadata path runs; the torch names it touches are never called.
    stub = types.ModuleType("torch")
    stub.__getattr__ = lambda name: type(name, (), {})
    sys.modules.setdefault("torch", stub)
    modeling_gguf_pytorch_utils.is_torch_available = lambda: True
    return AutoTokenizer


def reference_for(auto_tokenizer: type, name: str) -> dict:
    from tokenizers import normalizers

    tok = auto_tokenizer.from_pretrained(str(models_dir()), gguf_file=f"{name}.gguf")
    notes = []
    if name.startswith("qwen2") and tok.backend_tokenizer.normalizer is None:
        tok.backend_tokenizer.normalizer = normalizers.NFC()
        notes.append("NFC normaliser added, as in Qwen2's tokenizer.json")
    encode = []
    for text in CORPUS:
        ids = tok.encode(text)
        encode.append(
            {
                "text": text,
                "ids": ids,
                "decoded": tok.decode(ids, skip_special_tokens=True),
                "decoded_with_special": tok.decode(ids, skip_special_tokens=False),
            }
        )
    chat = []
    if tok.chat_template is not None:
        for conv in CONVERSATIONS:
            rendered = tok.apply_chat_template(
                conv["messages"],
                tools=conv.get("tools"),
                add_generation_prompt=conv["add_generation_prompt"],
                tokenize=False,
            )
            chat.append({**conv, "rendered": rendered})
    return {
        "notes": notes,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "has_chat_template": tok.chat_template is not None,
        "encode": encode,
        "chat": chat,
    }


def main() -> None:
    import transformers

    auto_tokenizer = _load_transformers()
    data = {
        "generator": f"scripts/make_tokenizer_reference.py with transformers {transformers.__version__}",
        "models": {name: reference_for(auto_tokenizer, name) for name in MODELS},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, ensure_ascii=False, indent=1)
    # One line per id list keeps the file short. Strings escape their newlines, so only lists match.
    text = re.sub(r"\[\n[\d,\s]*\]", lambda m: "".join(m.group(0).split()), text)
    OUT.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
