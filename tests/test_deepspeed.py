"""learner.strategy = "deepspeed": ZeRO-2 and ZeRO-3 on CPU with gloo (2 ranks) give the FSDP2 learner's loss,
gradient norm and updated weights on the same batch, and a run checkpoints DeepSpeed's partitions and resumes
bit for bit. (Its shared-memory all-reduce op compiles once, about a minute, into TORCH_EXTENSIONS_DIR.)"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("deepspeed", reason="pip install -c constraints.txt -e '.[deepspeed]' (scripts/setup.sh does)")

from rayrl.actors.learner import LearnerGroup  # noqa: E402
from rayrl.driver import train  # noqa: E402
from rayrl.tracking import read_metrics  # noqa: E402
from test_learner import model_and_tokenizer, samples_with_known_ratios  # noqa: E402, F401


@pytest.mark.slow
def test_zero_2_and_3_match_fsdp2_on_one_batch(ray_cluster, small_config, tiny_model_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    samples, expected, _ = samples_with_known_ratios(model, tok)
    results = {}
    for name, learner in (("fsdp2", {}), ("zero2", {"strategy": "deepspeed", "zero_stage": 2}),
                          ("zero3", {"strategy": "deepspeed", "zero_stage": 3})):
        group = LearnerGroup(small_config(learner={"workers": 2, "micro_batch_size": 2, **learner}), tiny_model_path,
                             f"test-strategy-{name}")
        try:
            results[name] = group.update(samples), group.full_state_dict()
        finally:
            group.shutdown()
    fsdp, fsdp_sd = results["fsdp2"]
    assert fsdp["loss"] == pytest.approx(expected, rel=1e-4)
    for name in ("zero2", "zero3"):
        stats, sd = results[name]
        assert stats["loss"] == pytest.approx(fsdp["loss"], rel=1e-5), name
        assert stats["grad_norm"] == pytest.approx(fsdp["grad_norm"], rel=1e-4), name
        assert sd.keys() == fsdp_sd.keys()
        for key in sd:
            torch.testing.assert_close(sd[key], fsdp_sd[key], rtol=1e-4, atol=1e-6, msg=f"{name} {key}")


@pytest.mark.slow
def test_a_deepspeed_run_resumes_bit_for_bit(ray_cluster, small_config, base_model_path, tmp_path):
    ds = {"learner": {"workers": 2, "strategy": "deepspeed", "zero_stage": 3},
          "ckpt": {"interval": 0, "at_end": True, "keep": 0}, "eval": {"interval": 0, "at_start": False}}
    straight = train(small_config(tmp_path / "straight", max_steps=3, **ds))
    train(small_config(tmp_path / "stopped", max_steps=2, **ds))
    assert (tmp_path / "stopped" / "checkpoints" / "step_2" / "deepspeed").is_dir()
    resumed = train(small_config(tmp_path / "stopped", max_steps=3, **{**ds, "ckpt": {**ds["ckpt"], "resume_step": -1}}))
    timing = ("step_time_s", "tokens_per_s", "time/")
    a, b = (read_metrics(r.output_dir / "metrics.jsonl") for r in (straight, resumed))
    assert [{k: v for k, v in m.items() if not k.startswith(timing)} for m in a] == [
        {k: v for k, v in m.items() if not k.startswith(timing)} for m in b
    ]
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "straight" / "checkpoints" / "step_3" / "model.safetensors")
    wb = load_file(tmp_path / "stopped" / "checkpoints" / "step_3" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
