"""InferenceActor: one replica of the policy, an engine behind a Ray actor."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from rayrl.engines import make_engine
from rayrl.engines.base import Completion, EngineSpec, SamplingParams
from rayrl.engines.weights import WeightBundle, fingerprint, unflatten
from rayrl.errors import WeightsError
from rayrl.models.export import merged_model_dir
from rayrl.models.source import ModelSource, local_model_dir


@dataclass
class GenerationResult:
    completions: list[Completion]
    version: int  # policy version that produced every completion of this call
    engine_s: float = 0.0  # time the engine spent generating (excludes queueing)


class InferenceActor:
    """Serves ``generate`` calls one at a time; weights change only between calls.

    With a ``board`` (training), a replica that Ray restarted loads the newest published weights from it
    before it serves anything: its calls (retried by Ray) then see the policy the others serve."""

    def __init__(self, model: ModelSource | str, spec: EngineSpec, version: int = 0, board: str | None = None,
                 name: str = ""):  # fmt: skip
        """``board``: the namespace whose PolicyBoard a restarted replica reads the newest weights from."""
        torch.set_num_threads(spec.threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        # a LoRA checkpoint (rayrl eval of a LoRA run) is served merged into its base
        path = merged_model_dir(local_model_dir(model))
        self.engine = make_engine(replace(spec, model_path=path, device=device))
        self.version = version
        self.name = name
        if board:
            import ray

            from rayrl.actors.board import find_board, report_start

            board = find_board(board)
            if report_start(board, name):
                newest, bundle = ray.get(board.newest.remote())
                if bundle:
                    self.load_weights(ray.get(bundle[0]))

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationResult:
        start = time.perf_counter()
        completions = self.engine.generate(prompts, params)
        return GenerationResult(completions, self.version, time.perf_counter() - start)

    def load_weights(self, bundle: WeightBundle) -> int:
        """Load a published version (Ray resolves the object ref to the shared bundle), then check it: the
        bundle as received, and what the engine now holds under the bundle's names (where the engine's names
        are the learner's: the transformers engine, full weights), against the publisher's fingerprint.
        A difference raises WeightsError naming this replica and the version."""
        self.engine.load_weights(bundle)
        if bundle.fingerprint:
            self._verify(bundle)
        self.version = bundle.version
        return self.version

    def _verify(self, bundle: WeightBundle) -> None:
        received = unflatten(bundle)
        as_received = fingerprint(received)
        problems = []
        if as_received != bundle.fingerprint:
            problems.append("the bundle changed on its way")
        held_by = getattr(self.engine, "held_weights", None)
        held = held_by(list(received)) if held_by is not None and bundle.adapter_scaling is None else None
        # tensors that are views of the received bundle (the CPU engine aliases it) hold exactly its bytes
        if held is not None and any(held[n].data_ptr() != t.data_ptr() for n, t in received.items()):
            # compared in the engine's dtypes (a replica may serve in another precision)
            cast = {n: t.to(held[n].dtype) for n, t in received.items() if t.dtype != held[n].dtype}
            expected = fingerprint({**received, **cast}) if cast else as_received
            if fingerprint(held) != expected:
                problems.append("the engine holds other values than it was given")
        if problems:
            raise WeightsError(
                f"{self.name or 'replica'}: weights version {bundle.version} failed its check after loading "
                f"({'; '.join(problems)}; published fingerprint {bundle.fingerprint}). Nothing was generated from them; "
                "this is a bug or a hardware fault: report it with the replica's log"
            )

    def memory_info(self) -> dict[str, int]:
        """This process's memory in bytes: rss, and uss/pss, which count shared weights once per node."""
        import psutil

        info = psutil.Process().memory_full_info()
        return {"rss": info.rss, "uss": info.uss, "pss": info.pss}

    def get_version(self) -> int:
        return self.version

    def pid(self) -> int:
        import os

        return os.getpid()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.engine.state_dict()
