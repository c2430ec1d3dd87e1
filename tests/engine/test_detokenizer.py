"""The output processor: token ids to text, stop strings cut (with the tokens after them)."""

from __future__ import annotations

from wicore.engine.detokenizer import Detokenizer
from wicore.engine.request import EngineOutput, FinishReason
from wicore.models.transformer import Transformer
from wicore.tokenizer import Tokenizer

TEXT = "Hello world, this is a test of the output processor."


def test_a_stop_string_ends_the_output_at_its_token(qwen: tuple[Transformer, Tokenizer]) -> None:
    tok = qwen[1]
    ids = tok.encode(TEXT, add_special_tokens=False)
    out = Detokenizer(tok, ("is a",)).process(
        EngineOutput("r", ids, logprobs=[-1.0] * len(ids), completion_tokens=len(ids))
    )
    kept = len(out.token_ids)
    assert out.finish_reason == FinishReason.STOP and out.text == "Hello world, this "
    assert "is a" in tok.decode(ids[:kept]) and "is a" not in tok.decode(ids[: kept - 1])
    assert out.token_ids == ids[:kept] and out.logprobs == [-1.0] * kept and out.completion_tokens == kept


def test_held_back_text_comes_out_at_the_end(qwen: tuple[Transformer, Tokenizer]) -> None:
    tok = qwen[1]
    ids = tok.encode(TEXT, add_special_tokens=False)
    eos = min(tok.stop_token_ids)
    detok = Detokenizer(tok, ("zzz",))  # text that could start a stop string waits
    pieces = [detok.process(EngineOutput("r", [t])) for t in ids]
    assert all(p.finish_reason is None for p in pieces)
    last = detok.process(EngineOutput("r", [eos], finish_reason=FinishReason.STOP))
    assert "".join(p.text for p in pieces) + last.text == TEXT  # the stop token itself has no text
    assert last.token_ids == [eos]
    whole = Detokenizer(tok, ("zzz",)).process(EngineOutput("r", ids, finish_reason=FinishReason.LENGTH))
    assert whole.text == TEXT and whole.finish_reason == FinishReason.LENGTH
