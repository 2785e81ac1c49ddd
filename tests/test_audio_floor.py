"""``audio_floor.quantile``: ``torch.quantile``'s result bit for bit, from a partial sort.

The speech gate and the noise floor of every av-stream window go through it, so
any difference would change what the model hears; the reference is
``torch.quantile`` itself, on the shapes those callers use and on edge cases.
"""

from __future__ import annotations

import pytest
import torch

from obs_dist.model.audio_floor import above_floor, quantile, speech_gate


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("q", [0.0, 0.1, 0.2, 0.37, 0.5, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("n", [1, 2, 7, 100, 301])
def test_quantile_equals_torch_bit_for_bit(dtype: torch.dtype, q: float, n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(6, 5, n, generator=g, dtype=dtype)
    for values in (x, x.round(decimals=1)):  # distinct values, then many ties
        for dim in (-1, 1, 0):
            for keepdim in (False, True):
                want = values.quantile(q, dim=dim, keepdim=keepdim)
                got = quantile(values, q, dim=dim, keepdim=keepdim)
                assert got.dtype == want.dtype and got.shape == want.shape
                assert torch.equal(got, want), (q, n, dim, keepdim)


def test_quantile_of_a_row_with_nan_is_nan_as_in_torch() -> None:
    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    x[1, 7] = float("nan")
    for q in (0.1, 0.9):
        want, got = x.quantile(q, dim=1), quantile(x, q, dim=1)
        assert torch.isnan(got[1]) and torch.equal(got[[0, 2, 3]], want[[0, 2, 3]])


def test_quantile_flat_and_refusals() -> None:
    x = torch.randn(6400, generator=torch.Generator().manual_seed(1))
    assert torch.equal(quantile(x, 0.2), x.quantile(0.2))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        quantile(x, 1.5)
    with pytest.raises(ValueError, match="floating-point"):
        quantile(torch.arange(5), 0.5)


def test_gate_and_floor_equal_their_torch_quantile_forms() -> None:
    """The two callers, written with ``torch.quantile`` as they were, on log-mel-like data."""
    g = torch.Generator().manual_seed(2)
    audio = torch.randn(3, 6, 8, 100, generator=g) - 8.0
    audio[:, 2, 2:5, 30:60] += 5.0  # a word in every stream's third clip
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2] = False  # a stream without audio

    energy = audio.float().mean(2)
    floor = torch.stack([energy[i][mask[i]].flatten().quantile(0.2) if bool(mask[i].any())
                         else energy.new_zeros(()) for i in range(3)])
    peak = energy.quantile(0.9, dim=2)
    want = ((peak - floor[:, None]) > 1.5).float() * mask.float()
    gate = speech_gate(audio, mask, 1.5)
    assert torch.equal(gate, want) and gate[0, 2] == 1 and gate[2].sum() == 0
    assert torch.equal(above_floor(audio),
                       (audio - audio.quantile(0.1, dim=-1, keepdim=True)).clamp_min(0.0))
