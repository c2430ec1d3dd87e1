"""SamplingParams: validation naming the field, defaults, and its row of the sampling kernel."""

from __future__ import annotations

import pytest

from wicore.engine.sampling import SamplingParams
from wicore.kernels.sampling import pack_params


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("top_k", -2),
        ("top_k", 1.5),
        ("top_p", 0.0),
        ("top_p", 1.1),
        ("min_p", -0.1),
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("frequency_penalty", 2.5),
        ("presence_penalty", -3.0),
        ("logit_bias", {1: 101.0}),
        ("logit_bias", {-1: 1.0}),
        ("seed", -1),
        ("max_tokens", 0),
        ("stop", ("",)),
        ("stop_token_ids", (-5,)),
        ("logprobs", 21),
        ("prompt_logprobs", -1),
        ("prompt_logprobs", 21),
    ],
)
def test_sampling_params_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        SamplingParams(**{field: value})


def test_sampling_params_defaults_and_shapes() -> None:
    sp = SamplingParams(stop="###", stop_token_ids=[1, 2])
    assert sp.stop == ("###",) and sp.stop_token_ids == (1, 2)
    assert pack_params([sp.kernel_params()])[0].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
