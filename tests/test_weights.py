import numpy as np
import pytest
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


def test_the_fingerprint_is_exact_order_free_and_sees_one_changed_or_swapped_value():
    from rayrl.engines.weights import fingerprint

    torch.manual_seed(0)
    weights = {"a": torch.randn(300, 7), "b": torch.randn(50).to(torch.bfloat16), "c": torch.arange(10)}
    same = {k: v.clone() for k, v in reversed(list(weights.items()))}
    assert fingerprint(weights) == fingerprint(same)
    changed = {k: v.clone() for k, v in weights.items()}
    changed["a"][17, 3] = torch.nextafter(changed["a"][17, 3], torch.tensor(1e9))  # one bit of one value
    assert fingerprint(changed) != fingerprint(weights)
    swapped = {k: v.clone() for k, v in weights.items()}
    swapped["a"].view(-1)[[3, 4]] = swapped["a"].view(-1)[[4, 3]]
    assert fingerprint(swapped) != fingerprint(weights)
    assert fingerprint({"a": weights["a"].reshape(7, 300)}) != fingerprint({"a": weights["a"]})  # the shape counts


def test_a_replica_checks_what_it_loaded_against_the_published_fingerprint(tiny_model_path):
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    from rayrl.actors.inference import InferenceActor
    from rayrl.engines.base import EngineSpec
    from rayrl.engines.weights import with_fingerprint
    from rayrl.errors import WeightsError

    replica = InferenceActor(tiny_model_path, EngineSpec("transformers", tiny_model_path, threads=1), name="replica-3")
    weights = {k: v + 0.01 for k, v in AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict().items()}
    bundle = with_fingerprint(flatten_state_dict(weights, version=1))
    garbage = np.full(bundle.nbytes, 0xAB, dtype=np.uint8)  # a reused staging buffer: padding bytes do not count
    assert with_fingerprint(flatten_state_dict(weights, version=1, out=garbage)).fingerprint == bundle.fingerprint
    assert replica.load_weights(bundle) == 1
    with pytest.raises(WeightsError, match=r"replica-3: weights version 2 failed its check after loading \(the bundle "
                                           r"changed on its way"):
        replica.load_weights(replace(bundle, version=2, fingerprint="0123456789abcdef"))
    assert replica.get_version() == 1
