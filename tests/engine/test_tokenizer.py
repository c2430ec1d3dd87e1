"""wicore.tokenizer against transformers' tokenizers for the bundled models.

The expected ids, decodes and chat renders are in tests/data/tokenizer_reference.json, written by
scripts/make_tokenizer_reference.py; transformers is not needed here.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import unicodedata
from pathlib import Path

import gguf
import jinja2
import pytest
import tokenizers

from wicore.models import prepared
from wicore.models.registry import ModelError, resolve, wicore_home
from wicore.tokenizer import Tokenizer, tokenizers_json

REFERENCE = json.loads((Path(__file__).parents[1] / "data" / "tokenizer_reference.json").read_text(encoding="utf-8"))

# What the reference file does not state: our own choices, and facts about the GGUF files.
EXPECTED = {
    "qwen2.5-coder-0.5b-instruct": {
        "vocab_size": 151_936,
        "add_bos": False,
        "stop_ids": {151_643, 151_645},  # <|endoftext|>, <|im_end|>
        "whole": {"<|im_start|>": 151_644, "<|im_end|>": 151_645, "<tool_call>": 151_657},
        "nfc": True,
    },
    "gemma-3-270m": {
        "vocab_size": 262_144,
        "add_bos": True,
        "stop_ids": {1, 106},  # <eos>, <end_of_turn>
        "whole": {"<start_of_turn>": 105, "<end_of_turn>": 106, "\n\n": 108},
        "nfc": False,
    },
}


@pytest.fixture(scope="module", params=sorted(REFERENCE["models"]))
def model(request: pytest.FixtureRequest) -> tuple[str, Tokenizer, dict]:
    name = request.param
    try:
        path = resolve(name)
    except ModelError as e:
        pytest.fail(f"{e} (the tokenizer tests need this model)")
    return name, Tokenizer.from_gguf(path), REFERENCE["models"][name]


def _mismatches(pairs: list[tuple[str, object, object]]) -> list[str]:
    return [f"{text[:40]!r}: got {got!r:.200}, want {want!r:.200}" for text, got, want in pairs if got != want]


def test_special_ids(model: tuple[str, Tokenizer, dict]) -> None:
    name, tok, ref = model
    want = EXPECTED[name]
    assert tok.vocab_size == want["vocab_size"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        ref["bos_token_id"],
        ref["eos_token_id"],
        ref["pad_token_id"],
    )
    assert tok.add_bos is want["add_bos"]
    assert tok.stop_token_ids == want["stop_ids"]
    assert tok.eos_token_id in tok.stop_token_ids


def test_the_cached_tokenizer_is_the_one_built_from_metadata(
    model: tuple[str, Tokenizer, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """from_gguf loads the files it wrote on its first call; built afresh in an empty cache, from the
    parsed metadata, and loaded back, the tokenizer is the same."""
    name, cached, ref = model
    path = resolve(name)
    meta = prepared.metadata(path)
    fresh = Tokenizer.from_metadata(meta, str(path))
    types = meta["tokenizer.ggml.token_type"]
    assert fresh.special_token_ids == {i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL}
    # A home without the tokenizer's files (this call builds them), with the parsed metadata they are built
    # from, as the first load leaves it (parsing the GGUF again would take 10-45 s).
    (tmp_path / "prepared").mkdir()
    for suffix in (".header.json", ".vocab.json"):
        for parsed in (wicore_home() / "prepared").glob(f"{path.stem}-*{suffix}"):
            shutil.copy(parsed, tmp_path / "prepared")
    monkeypatch.setenv("WICORE_HOME", str(tmp_path))
    built = Tokenizer.from_gguf(path)
    assert sorted(p.suffix for p in (tmp_path / "prepared").glob("*-v1")) == [".token-types-v1", ".tokenizer-v1"]
    for tok in (cached, built):
        assert (tok.vocab_size, tok.stop_token_ids, tok.special_token_ids) == (
            fresh.vocab_size,
            fresh.stop_token_ids,
            fresh.special_token_ids,
        )
        assert tok.chat_template == fresh.chat_template
        if fresh.chat_template:  # the special tokens' spellings reach the template
            chat = [{"role": "user", "content": "hi"}]
            assert tok.apply_chat_template(chat) == fresh.apply_chat_template(chat)
        texts = [e["text"] for e in ref["encode"]]
        assert [tok.encode(t) for t in texts] == [fresh.encode(t) for t in texts]


def test_ids_match_reference(model: tuple[str, Tokenizer, dict]) -> None:
    _, tok, ref = model
    assert len(ref["encode"]) > 60
    bad = _mismatches([(e["text"], tok.encode(e["text"]), e["ids"]) for e in ref["encode"]])
    assert not bad, "\n".join(bad)


def test_add_special_tokens_only_adds_bos(model: tuple[str, Tokenizer, dict]) -> None:
    _, tok, ref = model
    prefix = [tok.bos_token_id] if tok.add_bos else []
    bad = _mismatches(
        [(e["text"], prefix + tok.encode(e["text"], add_special_tokens=False), e["ids"]) for e in ref["encode"]]
    )
    assert not bad, "\n".join(bad)


def test_special_tokens_in_text_stay_whole(model: tuple[str, Tokenizer, dict]) -> None:
    name, tok, _ = model
    for text, token_id in EXPECTED[name]["whole"].items():
        assert tok.encode(text, add_special_tokens=False) == [token_id]
        assert tok.encode(f"a{text}b", add_special_tokens=False).count(token_id) == 1


def test_decode_matches_reference(model: tuple[str, Tokenizer, dict]) -> None:
    _, tok, ref = model
    pairs = [(e["text"], tok.decode(e["ids"]), e["decoded"]) for e in ref["encode"]]
    pairs += [
        (e["text"], tok.decode(e["ids"], skip_special_tokens=False), e["decoded_with_special"]) for e in ref["encode"]
    ]
    bad = _mismatches(pairs)
    assert not bad, "\n".join(bad)


def test_round_trip(model: tuple[str, Tokenizer, dict]) -> None:
    name, tok, ref = model
    pairs = []
    for e in ref["encode"]:
        text = e["text"]
        want = unicodedata.normalize("NFC", text) if EXPECTED[name]["nfc"] else text
        pairs.append((text, tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=False), want))
    bad = _mismatches(pairs)
    assert not bad, "\n".join(bad)


def _stream(tok: Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> list[str]:
    decoder = tok.stream_decoder(skip_special_tokens)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


def test_stream_decoder_adds_up_to_decode(model: tuple[str, Tokenizer, dict]) -> None:
    _, tok, ref = model
    held_back = 0
    for e in ref["encode"]:
        pieces = _stream(tok, e["ids"])
        assert "".join(pieces) == e["decoded"], e["text"]
        assert "".join(_stream(tok, e["ids"], skip_special_tokens=False)) == e["decoded_with_special"], e["text"]
        assert all("\ufffd" not in p for p in pieces), e["text"]
        held_back += sum(p == "" and i not in tok.special_token_ids for i, p in zip(e["ids"], pieces[:-1], strict=True))
    # Emoji and CJK characters do get split across tokens in the corpus, so holding back was exercised.
    assert held_back > 0


def test_token_bytes_join_to_the_text(model: tuple[str, Tokenizer, dict]) -> None:
    _, tok, ref = model
    split = 0
    for e in ref["encode"]:
        pieces = [tok.token_bytes(i) for i in e["ids"]]
        assert b"".join(pieces).decode() == e["decoded_with_special"], e["text"]
        split += sum(tok.decode([i], skip_special_tokens=False) == "\ufffd" for i in e["ids"])
    assert split > 0  # some tokens are part of a character, where decoding one alone cannot work


def test_stream_decoder_on_broken_utf8(model: tuple[str, Tokenizer, dict]) -> None:
    """Cut and gapped token sequences leave partial characters; the stream must still match decode()."""
    _, tok, _ = model
    # Rare characters (𝔘, 🫨, 𠀋, ǅ) are byte tokens in both vocabularies.
    ids = tok.encode("👩🏾‍🚀 你好 𝔘🫨 𠀋ǅ カタカナ ✓", add_special_tokens=False)
    variants = [ids[:n] for n in range(len(ids) + 1)] + [ids[:n] + ids[n + 1 :] for n in range(len(ids))]
    broken = 0
    for seq in variants:
        want = tok.decode(seq)
        assert "".join(_stream(tok, seq)) == want, seq
        broken += "\ufffd" in want
    assert broken > len(variants) // 4  # many cuts land inside a character


def test_chat_template_matches_reference(model: tuple[str, Tokenizer, dict]) -> None:
    _, tok, ref = model
    if not ref["has_chat_template"]:
        assert tok.chat_template is None
        with pytest.raises(ValueError, match="no chat template"):
            tok.apply_chat_template([{"role": "user", "content": "hi"}])
        return
    assert len(ref["chat"]) >= 5
    for conv in ref["chat"]:
        extra = {"tools": conv["tools"]} if "tools" in conv else {}
        got = tok.apply_chat_template(conv["messages"], add_generation_prompt=conv["add_generation_prompt"], **extra)
        assert got == conv["rendered"]


def test_chat_template_environment(model: tuple[str, Tokenizer, dict]) -> None:
    """The helpers transformers gives templates: raise_exception, tojson without HTML escaping, strftime_now."""
    _, tok, _ = model
    probe = copy.copy(tok)
    probe.chat_template = "{{ bos_token }}{{ messages[0] | tojson }}{{ strftime_now('%Y') | length }}"
    rendered = probe.apply_chat_template([{"role": "user", "content": "<a & 東京>"}])
    assert rendered == tok.decode([tok.bos_token_id], skip_special_tokens=False) + (
        '{"role": "user", "content": "<a & 東京>"}4'
    )
    probe.chat_template = "{% if messages | length > 1 %}{{ raise_exception('one message only') }}{% endif %}ok"
    assert probe.apply_chat_template([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(jinja2.TemplateError, match="one message only"):
        probe.apply_chat_template([{"role": "user", "content": "x"}] * 2)


def test_sentencepiece_encodes_as_the_tokenizers_pipeline() -> None:
    """Gemma encodes with sentencepiece (half the memory); the ids must be those of transformers' pipeline,
    which `tokenizers_json` still builds (for llguidance): on strings made of random vocabulary tokens,
    which exercise the merges far more than prose, and on runs of whitespace, where the two differed
    until the whitespace tokens were left to BPE with position scores."""
    path = resolve("gemma-3-270m")
    meta = prepared.metadata(path)
    tok = Tokenizer.from_metadata(meta, str(path))
    pipeline = tokenizers.Tokenizer.from_str(tokenizers_json(path))
    rng = random.Random(0)
    words = [tok.decode([rng.randrange(300, tok.vocab_size - 6000)]) for _ in range(4000)]
    texts = ["".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(1500)]
    texts += [f"a{ws * n}b" for ws in (" ", "\n", "\t", " \n") for n in range(1, 70)]
    texts += ["<start_of_turn>user\n  hi<end_of_turn>", "日本語 🤖 \u00a0x", "x" * 300]
    pairs = [
        (t, tok.encode(t, add_special_tokens=False), pipeline.encode(t, add_special_tokens=False).ids) for t in texts
    ]
    bad = _mismatches(pairs)
    assert not bad, "\n".join(bad[:20])
