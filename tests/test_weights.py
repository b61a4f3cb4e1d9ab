import numpy as np
import torch

from rayrl.engines.weights import ALIGNMENT, flatten_state_dict, load_into, unflatten


def test_round_trip_is_bit_exact_for_mixed_dtypes():
    sd = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "d": torch.randn(1, dtype=torch.float16),
    }
    bundle = flatten_state_dict(sd, version=7)
    assert bundle.version == 7 and bundle.buffer.dtype == np.uint8
    assert all(e.offset % ALIGNMENT == 0 for e in bundle.index)
    out = unflatten(bundle)
    for name, tensor in sd.items():
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape
        assert torch.equal(out[name].view(torch.uint8), tensor.view(torch.uint8))


def test_unflatten_gives_views_not_copies():
    bundle = flatten_state_dict({"w": torch.ones(4)}, version=1)
    view = unflatten(bundle)["w"]
    bundle.buffer[:4] = 0  # first float's bytes
    assert view[0].item() == 0.0


def test_load_into_rejects_foreign_tensors():
    model = torch.nn.Linear(2, 2)
    bundle = flatten_state_dict({"weight": torch.zeros(2, 2), "nope": torch.zeros(1)}, version=1)
    try:
        load_into(model, bundle)
    except KeyError as e:
        assert "nope" in str(e)
    else:
        raise AssertionError("expected KeyError")


def test_alias_into_shares_memory_and_falls_back_on_dtype_mismatch():
    from rayrl.engines.weights import alias_into

    model = torch.nn.Linear(3, 2)
    bundle = flatten_state_dict({"weight": torch.randn(2, 3), "bias": torch.randn(2)}, version=2)
    assert alias_into(model, bundle)
    assert model.weight.data_ptr() == unflatten(bundle)["weight"].data_ptr()
    assert torch.equal(model(torch.ones(1, 3)), torch.ones(1, 3) @ unflatten(bundle)["weight"].T + unflatten(bundle)["bias"])
    half = flatten_state_dict({"weight": torch.randn(2, 3).half()}, version=3)
    assert not alias_into(model, half)
