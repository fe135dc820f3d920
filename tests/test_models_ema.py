"""ExponentialMovingAverage: score_sde's update with warm-up, copy/store/restore, state dict."""

import pytest
import torch

from models import ExponentialMovingAverage


def _params():
    frozen = torch.nn.Parameter(torch.tensor([5.0]), requires_grad=False)
    return [torch.nn.Parameter(torch.tensor([1.0, 2.0])), frozen, torch.nn.Parameter(torch.tensor([[3.0]]))]


def test_tracks_only_trainable_parameters():
    ema = ExponentialMovingAverage(_params(), decay=0.999)
    assert [tuple(s.shape) for s in ema.shadow_params] == [(2,), (1, 1)]


def test_update_follows_the_warm_up_closed_form():
    params = _params()
    ema = ExponentialMovingAverage(params, decay=0.999)
    expected = torch.tensor([1.0, 2.0])
    for n, target in enumerate([10.0, -4.0, 7.0], start=1):
        with torch.no_grad():
            params[0].fill_(target)
        ema.update(params)
        decay = min(0.999, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * target
        torch.testing.assert_close(ema.shadow_params[0], expected)
    assert ema.num_updates == 3


def test_without_warm_up_the_decay_is_constant():
    params = _params()
    ema = ExponentialMovingAverage(params, decay=0.5, use_num_updates=False)
    with torch.no_grad():
        params[2].fill_(7.0)
    ema.update(params)
    torch.testing.assert_close(ema.shadow_params[1], torch.tensor([[5.0]]))


def test_copy_store_restore():
    params = _params()
    ema = ExponentialMovingAverage(params, decay=0.9)
    with torch.no_grad():
        params[0].fill_(4.0)
    ema.store(params)
    ema.copy_to(params)
    torch.testing.assert_close(params[0].detach(), torch.tensor([1.0, 2.0]))
    assert params[1].item() == 5.0
    ema.restore(params)
    torch.testing.assert_close(params[0].detach(), torch.tensor([4.0, 4.0]))


def test_state_dict_round_trip():
    params = _params()
    ema = ExponentialMovingAverage(params, decay=0.99)
    ema.update(params)
    state = ema.state_dict()
    assert set(state) == {"decay", "num_updates", "shadow_params"}
    other = ExponentialMovingAverage(_params(), decay=0.5)
    other.load_state_dict(state)
    assert other.decay == 0.99 and other.num_updates == 1
    for a, b in zip(other.shadow_params, ema.shadow_params, strict=True):
        assert torch.equal(a, b)


def test_bad_decay():
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\], got 1.5"):
        ExponentialMovingAverage(_params(), decay=1.5)
