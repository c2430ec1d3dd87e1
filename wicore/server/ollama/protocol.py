"""Ollama's request and response models (a subset of its API), and the conversion of its `options` into
the shared sampling parameters.

Unknown fields are ignored as Ollama's own decoder does; wrongly typed known ones are 400s.  Names carry
`Ollama` where another surface has a model of the same role.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from wicore.config import duration_seconds
from wicore.engine.grammar import ANY_JSON_OBJECT, closed_objects, json_schema_grammar
from wicore.engine.request import PriorityName
from wicore.server.errors import validation_error
from wicore.server.protocol import PositiveInt, SamplingRequest

# Ollama's defaults for a model whose Modelfile sets none.
DEFAULT_OPTIONS = {"temperature": 0.8, "top_p": 0.9, "top_k": 40}


# -- requests -----------------------------------------------------------------------------------------


class OllamaRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class Options(OllamaRequest):
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    num_predict: int | None = None  # -1 (Ollama's "until done") and -2 ("fill the context") use the default
    seed: int | None = None
    stop: list[str] | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def sampling(self, priority: str) -> SamplingRequest:
        """The OpenAI routes' parameters (and their range checks); a bad value is a 400 naming `options.X`."""
        names = {"repeat_penalty": "repetition_penalty", "num_predict": "max_tokens"}
        given = {names.get(k, k): v for k, v in self.model_dump(exclude_none=True).items()}
        if given.get("max_tokens", 1) < 0:
            del given["max_tokens"]
        try:
            return SamplingRequest.model_validate({**DEFAULT_OPTIONS, **given, "priority": priority})
        except ValidationError as e:
            back = {v: k for k, v in names.items()}
            errors = [{**err, "loc": ("options", *(back.get(str(p), p) for p in err["loc"]))} for err in e.errors()]
            raise validation_error(errors) from None


class OllamaModelUse(OllamaRequest):
    """A request that runs a model: its name, and how long the model stays loaded once the request ends."""

    model: str
    # Seconds; Ollama's clients send a duration ("5m", "1h") or a number. 0 unloads the model after this
    # request, a negative value keeps it loaded; None leaves the model's own setting.
    keep_alive: float | None = None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else duration_seconds(value)


class OllamaGenerationRequest(OllamaModelUse):
    options: Options = Options()
    stream: bool = True
    format: Literal["", "json"] | dict[str, Any] | None = None  # constrained output: any JSON object, or a schema
    priority: PriorityName = "normal"  # WiCore's extension

    def grammar(self) -> str | None:
        """The checked grammar `format` asks for (None: free text); ValueError naming `format`."""
        if self.format == "json":
            return json_schema_grammar(ANY_JSON_OBJECT, "format")
        if isinstance(self.format, dict):
            return json_schema_grammar(closed_objects(self.format), "format")
        return None


class OllamaGenerateRequest(OllamaGenerationRequest):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    images: list[str] | None = None

    @field_validator("images")
    @classmethod
    def _no_images(cls, value: list[str] | None) -> list[str] | None:
        if value:
            raise ValueError("images are not supported by this model")
        return value


class OllamaMessage(OllamaRequest):
    role: Literal["system", "user", "assistant"]
    content: str


class OllamaChatRequest(OllamaGenerationRequest):
    messages: list[OllamaMessage] = []


class OllamaModelRequest(OllamaRequest):
    """/api/show and /api/pull: a model by name."""

    model: str
    stream: bool = True  # /api/pull


class OllamaEmbeddingsRequest(OllamaModelUse):
    """The legacy /api/embeddings: one prompt, one vector."""

    prompt: str


class OllamaEmbedRequest(OllamaModelUse):
    input: str | list[str]
    dimensions: PositiveInt | None = None
    truncate: bool = True


# -- responses ----------------------------------------------------------------------------------------


class OllamaChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class OllamaReply(BaseModel):
    model: str
    created_at: str
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None

    def line(self) -> str:
        return self.model_dump_json(exclude_none=True) + "\n"


class OllamaGenerateReply(OllamaReply):
    response: str


class OllamaChatReply(OllamaReply):
    message: OllamaChatMessage
