"""Picking a batch's tokens at once gives each row what it would get alone, on every device."""

import pytest
import torch

from loupe.inference import SamplingParams
from loupe.runtime.sampling import Sampler, pick_tokens
from tests.support.devices import DEVICES

ROWS = [
    SamplingParams(8, 0.0, 1.0, 0, 0.0),  # greedy
    SamplingParams(8, 0.0, 1.0, 0, 1.5, repetition_penalty=1.3),  # greedy, both penalties
    SamplingParams(8, 0.8, 0.8, 20, 1.5, seed=3),  # Qwen's image preset, seeded
    SamplingParams(8, 1.0, 0.9, 0, 0.0, seed=4),  # top-p only
]


@pytest.mark.parametrize("device", DEVICES)
def test_a_batch_picks_what_each_row_picks_alone(device):
    steps = [torch.randn(len(ROWS), 500, generator=torch.Generator().manual_seed(s)).to(device) for s in range(6)]
    together = [Sampler(p) for p in ROWS]
    alone = [Sampler(p) for p in ROWS]
    for logits in steps:
        # the penalties make the rows' histories matter: a token picked is less likely next time
        picked = pick_tokens(together, logits)
        assert picked == [sampler.pick(logits[row : row + 1]) for row, sampler in enumerate(alone)]
    assert all(0 <= token < 500 for token in picked)


@pytest.mark.parametrize("device", DEVICES)
def test_penalties_apply_to_generated_tokens_on_the_device(device):
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5]], device=device)
    greedy = Sampler(SamplingParams(4, 0.0, 1.0, 0, 1.5))
    assert [greedy.pick(logits) for _ in range(3)] == [1, 2, 1]  # 3 - 1.5 = 1.5 > 2 - 1.5 and > 1
    assert greedy.seen.device.type == device and greedy.seen.tolist() == [False, True, True, False]
    assert logits.tolist() == [[1.0, 3.0, 2.0, 0.5]]  # the caller's logits are left alone


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(8, 5e-324, 1.0, 0, 0.0),  # the smallest float: dividing by it overflows to inf
        SamplingParams(8, 1e-40, 0.5, 5, 0.0),  # below float32's range: a division by zero
        SamplingParams(8, 0.7, 0.0, 0, 0.0),  # top_p 0: nothing would cross it
        SamplingParams(8, 0.7, 0.0, 20, 0.0, seed=1),
    ],
    ids=["tiny-temperature", "sub-float32-temperature", "top-p-0", "top-p-0-top-k"],
)
def test_the_edges_of_the_accepted_ranges_pick_the_best_token(params):
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(2))
    assert pick_tokens([Sampler(params)], logits) == [int(logits.argmax())]


def test_the_incremental_text_is_what_the_tokenizer_decodes(backend):
    from loupe.runtime.sampling import IncrementalDecoder

    tokenizer = backend.tokenizer
    ids = torch.randint(0, len(tokenizer), (300,), generator=torch.Generator().manual_seed(9)).tolist()
    decoder = IncrementalDecoder(tokenizer)
    assert decoder._decode != tokenizer.decode  # the Rust tokenizer's own, for this (BPE, no clean-up) tokenizer
    text = "".join(decoder.add(token) for token in ids)
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    assert whole.startswith(text) and len(whole) - len(text) <= 4  # at most a character's bytes held back
