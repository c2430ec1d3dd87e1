"""Text <-> token ids for a GGUF model, built from the tokenizer the file describes in its metadata.

A GGUF file carries no tokenizer.json, only llama.cpp's description of one: the vocabulary, merges, token
types and special ids. We rebuild the HuggingFace `tokenizers` pipeline that transformers' GGUF loader
builds from the same fields (transformers/integrations/gguf), so the ids match the model's own tokenizer:

- `gpt2` vocabularies are byte-level BPE with the pre-tokenizer regex named by `tokenizer.ggml.pre`;
- `llama` vocabularies of Gemma models are SentencePiece-style BPE with byte fallback, whose merges the
  file omits, so transformers recovers them from the vocabulary (every split of every token, ranked by the
  merged token's position). We encode those with Google's `sentencepiece` instead, given each piece the
  score -position, so that its BPE merges in the same order: the same ids in ~40 MB, where `tokenizers`
  holds ~70 MB for the 262k tokens and 515k merges (and building them peaks ~200 MB higher). The
  `tokenizers` pipeline is still built on demand for llguidance (`tokenizers_json`).

Control tokens (`<|im_start|>`, `<start_of_turn>`) and user-defined ones are matched whole in the text.
"""

from __future__ import annotations

import codecs
import functools
import json
import struct
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import sentencepiece

from wicore.lazy import LazyModule
from wicore.memory import release_freed_memory
from wicore.models import prepared
from wicore.models.config import read_metadata

if TYPE_CHECKING:
    import gguf
    import jinja2
    import tokenizers
else:
    # Loaded on first use: Gemma's vocabularies encode without tokenizers, and only chat templates need jinja2.
    jinja2 = LazyModule("jinja2")
    tokenizers = LazyModule("tokenizers")

# GGUF's token types (gguf.TokenType), here so that loading a cached tokenizer does not import gguf (~6 MB).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6

# Qwen2 splits digits one by one, unlike GPT-2 and Llama 3 (from Qwen2's tokenizer.json).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> (split regex, NFC first); None means GPT-2's own regex inside ByteLevel.
_BYTE_LEVEL_PRE: dict[str, tuple[str | None, bool]] = {
    "qwen2": (_QWEN2_SPLIT, True),
    "deepseek-r1-qwen": (_QWEN2_SPLIT, True),
    "gpt2": (None, False),
}
_GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")
_SPIECE_SPACE = "\u2581"
# Bump the version when what _serialised writes changes.
_CACHED_FILES = (".tokenizer-v1", ".token-types-v1")
# A SentencePiece vocabulary's `tokenizers` pipeline, for llguidance (tokenizers_json).
_TOKENIZERS_JSON = (".tokenizers-json-v1",)
# Tokens that end a turn in chat models; they stop generation besides eos.
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<|eot_id|>", "<|end_of_text|>", "<|end|>")


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable bytes stand for themselves."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in printable]
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False) -> str:
    # transformers' override: no HTML escaping, unlike jinja's own tojson.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile_template(source: str) -> jinja2.Template:
    """A chat template in the environment transformers' apply_chat_template uses (templates are untrusted)."""
    # Here rather than at the top: jinja2's submodules would load it whole with this module (see above).
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _sentencepiece_merges(tokens: list[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every split of every token into two tokens, ranked as transformers' `generate_merges` ranks
    Gemma's: by the merged token's position in the file, then longest left part first."""
    merges = []
    for index, token in enumerate(tokens):
        if vocab[token] != index:  # a duplicate: its last occurrence is the one in the vocabulary
            continue
        for cut in range(len(token) - 1, 0, -1):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((left, right))
    return merges


def _vocabulary(meta: Mapping[str, Any], path: str) -> tuple[str, list[str], list[int], list[str]]:
    """(kind, tokens, token types, spellings) of a supported GGUF vocabulary; ValueError otherwise."""
    kind = meta.get("tokenizer.ggml.model")
    tokens: list[str] = meta.get("tokenizer.ggml.tokens")
    if kind is None or tokens is None:
        raise ValueError(f"{path}: the GGUF metadata describes no tokenizer")
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    arch = meta.get("general.architecture", "")
    if kind == "gpt2":
        return kind, tokens, types, tokens
    if kind == "llama" and arch in _GEMMA_ARCHS:
        # The file spells tokens of two or more spaces with real spaces, but text reaches the model with
        # spaces turned into "▁", so those tokens are respelled to be reachable (as transformers does).
        return kind, tokens, types, [_SPIECE_SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
    raise ValueError(
        f"{path}: unsupported tokenizer {kind!r} for architecture {arch!r} "
        f"(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece vocabularies of {', '.join(_GEMMA_ARCHS)})"
    )


def _tokenizers_pipeline(meta: Mapping[str, Any], path: str) -> tokenizers.Tokenizer:
    """The `tokenizers` pipeline transformers' GGUF loader builds from this metadata."""
    kind, tokens, types, spelled = _vocabulary(meta, path)
    if kind == "gpt2":
        backend = _byte_level_bpe(tokens, meta.get("tokenizer.ggml.merges", []), meta.get("tokenizer.ggml.pre"))
    else:
        unk = meta.get("tokenizer.ggml.unknown_token_id")
        backend = _gemma_bpe(spelled, None if unk is None else tokens[unk])
    # Control and user-defined tokens are matched whole in the raw text, before normalisation; those
    # the vocabulary respells are left to BPE, as in transformers.
    added = [
        (t, ty) for t, s, ty in zip(tokens, spelled, types, strict=True) if ty in (_CONTROL, _USER_DEFINED) and t == s
    ]
    backend.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t, ty in added if ty == _CONTROL]
    )
    backend.add_tokens(
        [tokenizers.AddedToken(t, special=False, normalized=False) for t, ty in added if ty == _USER_DEFINED]
    )
    return backend


def tokenizers_json(path: Path) -> str:
    """The model's tokenizer as a `tokenizers` JSON definition, for libraries that build their own view of
    the vocabulary (llguidance's token masks); made once per model file, as Tokenizer.from_gguf's files."""
    if prepared.metadata(path, vocabulary=False).get("tokenizer.ggml.model") == "gpt2":
        definition = _cached_files(path)[0]  # the backend's own file
    else:
        (definition,) = prepared.derived_files(
            path, _TOKENIZERS_JSON, lambda: [_tokenizers_pipeline(prepared.metadata(path), str(path)).to_str().encode()]
        )
    return definition.read_text(encoding="utf-8")


def _cached_files(path: Path) -> list[Path]:
    return prepared.derived_files(path, _CACHED_FILES, lambda: _serialised(prepared.metadata(path), str(path)))


class Tokenizer:
    """A model's tokenizer: encode/decode, chat template, stop tokens and streaming detokenisation."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer | sentencepiece.SentencePieceProcessor,
        token_types: bytes,
        *,
        byte_level: bool,
        bos_token_id: int | None,
        eos_token_id: int,
        pad_token_id: int | None,
        unk_token_id: int | None,
        add_bos: bool,
        extra_stop_ids: Sequence[int] = (),
        chat_template: str | None,
    ) -> None:
        # `tokenizers` (byte-level BPE) or `sentencepiece` (Gemma): the latter decodes through _piece.
        # It holds the spellings; here only one type byte per token, not 262k Python strings.
        self._backend = backend
        self._types = token_types
        self._byte_level = byte_level
        self._pieces: dict[int, bytes | int | str] = {}  # filled lazily by _piece
        self._texts: dict[int, str] = {}  # filled lazily by token_text
        self.vocab_size = len(token_types)
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.add_bos = add_bos
        self.chat_template = chat_template
        self.special_token_ids = frozenset(i for i, t in enumerate(token_types) if t == _CONTROL)
        named_stops = [i for t in _END_OF_TURN if (i := self._id(t)) is not None and token_types[i] == _CONTROL]
        self.stop_token_ids = frozenset({eos_token_id, *named_stops, *extra_stop_ids})
        # The special-token strings transformers gives every chat template (its special_tokens_map).
        ids = dict(bos_token=bos_token_id, eos_token=eos_token_id, unk_token=unk_token_id, pad_token=pad_token_id)
        self._template_vars = {name: self._token(i) for name, i in ids.items() if i is not None}

    @classmethod
    def from_gguf(cls, path: str | Path, reader: gguf.GGUFReader | None = None) -> Tokenizer:
        """The tokenizer a GGUF file describes, built once per model file and then loaded from its cache (or
        from `reader`, one already open on the file)."""
        if reader is not None:
            return cls.from_metadata(read_metadata(reader), str(path))
        path = Path(path)
        header = prepared.metadata(path, vocabulary=False)
        model_file, types_file = _cached_files(path)
        backend: tokenizers.Tokenizer | sentencepiece.SentencePieceProcessor
        if header.get("tokenizer.ggml.model") == "gpt2":
            backend = tokenizers.Tokenizer.from_file(str(model_file))
        else:
            backend = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        release_freed_memory()  # what the load parsed and dropped: ~40 MB for qwen's tokenizers JSON
        return cls._assemble(backend, types_file.read_bytes(), header, str(path))

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], path: str = "model") -> Tokenizer:
        """Build the tokenizer from GGUF key/value metadata (see wicore.models.config.read_metadata)."""
        kind, tokens, types, spelled = _vocabulary(meta, path)
        if kind == "gpt2":
            backend: tokenizers.Tokenizer | sentencepiece.SentencePieceProcessor = _tokenizers_pipeline(meta, path)
        else:
            unk = meta.get("tokenizer.ggml.unknown_token_id")
            backend = _load_sentencepiece(_gemma_sentencepiece(tokens, spelled, types, unk, path))
        return cls._assemble(backend, bytes(types), meta, path)

    @classmethod
    def _assemble(
        cls,
        backend: tokenizers.Tokenizer | sentencepiece.SentencePieceProcessor,
        types: bytes,
        meta: Mapping[str, Any],
        path: str,
    ) -> Tokenizer:
        """The tokenizer of `backend`, with the special ids and the template the metadata names."""
        eos = meta.get("tokenizer.ggml.eos_token_id")
        if eos is None:
            raise ValueError(f"{path}: the GGUF metadata has no tokenizer.ggml.eos_token_id")
        eot_ids = [meta.get(k) for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")]
        kind = meta.get("tokenizer.ggml.model")
        return cls(
            backend,
            types,
            byte_level=kind == "gpt2",
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=int(eos),
            pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
            unk_token_id=meta.get("tokenizer.ggml.unknown_token_id"),
            # llama.cpp adds BOS to SentencePiece vocabularies unless the file says otherwise.
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama")),
            extra_stop_ids=[i for i in eot_ids if i is not None],
            chat_template=meta.get("tokenizer.chat_template"),
        )

    def _id(self, token: str) -> int | None:
        """The id of a token spelled `token` (None if the vocabulary has none)."""
        if not isinstance(self._backend, sentencepiece.SentencePieceProcessor):
            token_id = self._backend.token_to_id(token)
        else:  # sentencepiece answers the unknown token's id for a piece it lacks
            token_id = self._backend.piece_to_id(token)
            token_id = token_id if self._backend.id_to_piece(token_id) == token else None
        return token_id if token_id is not None and token_id < self.vocab_size else None

    def _token(self, token_id: int) -> str | None:
        """A token's spelling in the vocabulary (None outside it)."""
        if not isinstance(self._backend, sentencepiece.SentencePieceProcessor):
            return self._backend.id_to_token(token_id)
        return self._backend.id_to_piece(token_id) if 0 <= token_id < self.vocab_size else None

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """An upper bound on the UTF-8 bytes one token stands for (its spelling's bytes, which for byte-level
        and SentencePiece alphabets over-count): lets a too-long text be refused without tokenising it."""
        return max(len((self._token(i) or "").encode()) for i in range(self.vocab_size))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, BOS first when the model wants it."""
        if not isinstance(self._backend, sentencepiece.SentencePieceProcessor):
            ids = self._backend.encode(text, add_special_tokens=False).ids
        else:
            ids = self._backend.encode(text)
        if add_special_tokens and self.add_bos and self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids`; control tokens (`<|im_end|>`, `<bos>`) are left out unless asked for."""
        if not isinstance(self._backend, sentencepiece.SentencePieceProcessor):
            return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        # As transformers' decoders for these vocabularies (▁ to space, byte fallback, fused): piece by
        # piece, which is what the stream decoder does; ids outside the vocabulary are skipped, as there.
        decoder = self.stream_decoder(skip_special_tokens)
        return "".join(decoder.push(i) for i in ids if 0 <= i < self.vocab_size) + decoder.flush()

    def _piece(self, token_id: int) -> bytes | int | str:
        """What a token adds to decoded text: bytes (byte-level BPE), one fallback byte (an int) or text."""
        piece = self._pieces.get(token_id)
        if piece is None:
            token = self._token(token_id)
            if self._byte_level:
                table = _byte_decoder()
                # As tokenizers' ByteLevel decoder: a token outside the alphabet (an added one) is its text.
                piece = bytes(table[c] for c in token) if set(token) <= table.keys() else token.encode()
            elif self._types[token_id] == _BYTE:
                piece = int(token[3:5], 16)  # "<0xAB>"
            else:
                piece = token.replace(_SPIECE_SPACE, " ")
            self._pieces[token_id] = piece
        return piece

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token adds to decoded text (part of a character for a split multi-byte one)."""
        piece = self._piece(token_id)
        return bytes([piece]) if isinstance(piece, int) else piece if isinstance(piece, bytes) else piece.encode()

    def token_text(self, token_id: int) -> str:
        """One token's text, control tokens included, decoded once per model (logprobs show every
        generated token and its alternatives)."""
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.decode([token_id], skip_special_tokens=False)
        return text

    def stream_decoder(self, skip_special_tokens: bool = True) -> StreamDecoder:
        """A fresh incremental decoder for one sequence of generated tokens."""
        return StreamDecoder(self, skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """Render a conversation as transformers' `apply_chat_template(..., tokenize=False)` does.

        Extra keyword arguments (`tools=[...]`, `documents=[...]`, template flags) reach the template."""
        if self.chat_template is None:
            raise ValueError(
                "this model has no chat template (its GGUF file lacks tokenizer.chat_template); use a plain prompt"
            )
        variables = {**self._template_vars, "tools": None, "documents": None, **kwargs}
        return _compile_template(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **variables
        )


class StreamDecoder:
    """Turns generated token ids into text as they arrive; the pieces add up to `decode(ids)`.

    Byte-level BPE: a character whose UTF-8 bytes span tokens is held back until complete. SentencePiece
    byte fallback: a run of byte tokens is held until it ends, because tokenizers' ByteFallback decodes a
    run that is not valid UTF-8 as one U+FFFD per byte, even its valid part."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = tokenizer.special_token_ids if skip_special_tokens else frozenset()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._byte_run = bytearray()

    def push(self, token_id: int) -> str:
        """Add a token; return the text it completes (possibly empty)."""
        if token_id in self._skip:
            return ""
        piece = self._tokenizer._piece(token_id)
        if isinstance(piece, bytes):
            return self._utf8.decode(piece)
        if isinstance(piece, int):
            self._byte_run.append(piece)
            return ""
        return self._end_byte_run() + piece

    def flush(self) -> str:
        """Whatever is still held back, once no more tokens will come."""
        return self._utf8.decode(b"", final=True) + self._end_byte_run()

    def _end_byte_run(self) -> str:
        run, self._byte_run = self._byte_run, bytearray()
        try:
            return run.decode()
        except UnicodeDecodeError:
            return "\ufffd" * len(run)


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str | None) -> tokenizers.Tokenizer:
    if pre not in _BYTE_LEVEL_PRE:
        raise ValueError(f"unsupported pre-tokenizer {pre!r} (supported: {', '.join(_BYTE_LEVEL_PRE)})")
    split, nfc = _BYTE_LEVEL_PRE[pre]
    model = tokenizers.models.BPE(
        vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ", 1)) for m in merges]
    )
    backend = tokenizers.Tokenizer(model)
    if nfc:
        backend.normalizer = tokenizers.normalizers.NFC()
    if split is None:
        backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
            [
                tokenizers.pre_tokenizers.Split(tokenizers.Regex(split), behavior="isolated"),
                tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = tokenizers.decoders.ByteLevel()
    return backend


def _gemma_bpe(spelled: list[str], unk: str | None) -> tokenizers.Tokenizer:
    vocab = {t: i for i, t in enumerate(spelled)}
    merges = _sentencepiece_merges(spelled, vocab)
    backend = tokenizers.Tokenizer(
        tokenizers.models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    backend.normalizer = tokenizers.normalizers.Replace(" ", _SPIECE_SPACE)
    backend.decoder = tokenizers.decoders.Sequence(
        [
            tokenizers.decoders.Replace(_SPIECE_SPACE, " "),
            tokenizers.decoders.ByteFallback(),
            tokenizers.decoders.Fuse(),
        ]
    )
    return backend


def _protobuf_field(number: int, payload: bytes | int) -> bytes:
    """One protobuf field: length-delimited for bytes, a varint for a non-negative int."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while n > 0x7F:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)

    if isinstance(payload, bytes):
        return varint(number << 3 | 2) + varint(len(payload)) + payload
    return varint(number << 3) + varint(payload)


def _gemma_sentencepiece(
    tokens: list[str], spelled: list[str], types: list[int], unk_id: int | None, path: str
) -> bytes:
    """The serialised SentencePiece BPE model that encodes as transformers' pipeline for this vocabulary does.

    transformers merges the pair whose merged token comes first in the file; SentencePiece merges the pair
    whose merged piece scores highest, so every piece scores -position. Control tokens become user-defined
    pieces, which SentencePiece matches whole in the text, as transformers matches its special tokens;
    the respelled whitespace tokens are left to BPE, as there. The model is written as its protobuf
    (sentencepiece_model.proto, the few fields used) rather than through the `protobuf` package, which
    would be one more dependency and hold 262k message objects on the way."""
    if unk_id is None:
        raise ValueError(f"{path}: a SentencePiece vocabulary needs tokenizer.ggml.unknown_token_id")
    pieces = bytearray()
    for i, (token, piece, kind) in enumerate(zip(tokens, spelled, types, strict=True)):
        if i == unk_id:
            kind = _UNKNOWN
        elif kind in (_CONTROL, _USER_DEFINED) and piece == token:
            kind = _USER_DEFINED
        elif kind != _BYTE:
            kind = _NORMAL  # everything else is BPE's to merge, as in transformers
        fields = _protobuf_field(1, piece.encode()) + b"\x15" + struct.pack("<f", -i) + _protobuf_field(3, int(kind))
        pieces += _protobuf_field(1, fields)
    # TrainerSpec: BPE (3), byte_fallback (35), unk_id (40); no BOS/EOS/PAD of its own (41-43 = -1 is
    # written as 2**64 - 1, protobuf's int32 -1), whitespace not a word boundary (22), so runs of it merge.
    trainer = b"".join(
        _protobuf_field(n, v)
        for n, v in ((3, 2), (35, 1), (22, 0), (40, unk_id), (41, 2**64 - 1), (42, 2**64 - 1), (43, 2**64 - 1))
    )
    # NormalizerSpec: no normalisation rules, no dummy prefix, whitespace kept, spaces written as "▁".
    normalizer = b"".join(_protobuf_field(n, v) for n, v in ((1, b"identity"), (3, 0), (4, 0), (5, 1)))
    return bytes(pieces) + _protobuf_field(2, trainer) + _protobuf_field(3, normalizer)


def _load_sentencepiece(model: bytes) -> sentencepiece.SentencePieceProcessor:
    processor = sentencepiece.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model)
    return processor


def _serialised(meta: Mapping[str, Any], path: str) -> tuple[bytes, bytes]:
    """What from_gguf caches (_CACHED_FILES): the backend's own file (a `tokenizers` JSON, a SentencePiece
    model) and one type byte per token."""
    kind, tokens, types, spelled = _vocabulary(meta, path)
    if kind == "gpt2":
        model = _tokenizers_pipeline(meta, path).to_str().encode()
    else:
        model = _gemma_sentencepiece(tokens, spelled, types, meta.get("tokenizer.ggml.unknown_token_id"), path)
    return model, bytes(types)
