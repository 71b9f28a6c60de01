"""PyTorch TorchScript backend (platform pytorch_libtorch), with Triton's tensor naming."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from infergate.models.config import TensorSpec
from infergate.models.errors import ConfigError
from infergate.models.runtime import Runtime, StopToken, requires_gpu, wants_gpu

logger = logging.getLogger(__name__)

# Triton's libtorch convention: <name>__<index> gives the position in forward()'s
# arguments or in the returned tuple; other names follow the config's order.
INDEXED_NAME = re.compile(r"^.+__(\d+)$")
# Set once per process (torch's pool is global); 1 leaves the cores to the batcher.
DEFAULT_TORCH_THREADS = 1


def _positions(names: Sequence[str]) -> list[int]:
    """Returns the argument position of each tensor name (config order when not indexed)."""
    matches = [INDEXED_NAME.match(n) for n in names]
    if all(matches):
        return [int(m.group(1)) for m in matches if m]
    return list(range(len(names)))


class TorchRuntime(Runtime):
    module: torch.jit.ScriptModule

    def load(self) -> None:
        if not self.spec.inputs or not self.spec.outputs:
            raise ConfigError(
                f"model '{self.spec.name}': a TorchScript model needs its inputs and outputs in config.pbtxt "
                "(TorchScript files do not carry names, shapes or data types)"
            )
        if torch.get_num_threads() != int(self.spec.parameters.get("intra_op_thread_count", DEFAULT_TORCH_THREADS)):
            torch.set_num_threads(int(self.spec.parameters.get("intra_op_thread_count", DEFAULT_TORCH_THREADS)))
        self._device = torch.device("cpu")
        if wants_gpu(self.spec) and torch.cuda.is_available():
            self._device = torch.device("cuda", 0)
        elif requires_gpu(self.spec):
            raise ConfigError(
                f"model '{self.spec.name}': instance_group kind KIND_GPU, but torch sees no CUDA device; "
                "use KIND_CPU or KIND_AUTO"
            )
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated upstream, but it is what pytorch_libtorch serves.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(  # type: ignore[no-untyped-call]
                    str(self.model_path), map_location=self._device)
        except Exception as exc:
            raise ConfigError(f"model '{self.spec.name}': torch cannot load {self.model_path}: {exc}") from None
        self.module.eval()
        input_positions = _positions([t.name for t in self.spec.inputs])
        self._input_order = [t.name for _, t in sorted(zip(input_positions, self.spec.inputs))]
        self._output_position = dict(zip([t.name for t in self.spec.outputs],
                                          _positions([t.name for t in self.spec.outputs])))

    @property
    def device(self) -> str:
        return str(self._device)

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return list(self.spec.inputs), list(self.spec.outputs)

    def predict(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str],
                stop: StopToken | None = None) -> dict[str, np.ndarray]:
        if stop is not None:
            stop.raise_if_stopped()
        args = [torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self._device) for name in self._input_order]
        with torch.inference_mode():
            result = self.module(*args)
        values = list(result) if isinstance(result, (tuple, list)) else [result]
        outputs = {}
        for name in output_names:
            position = self._output_position[name]
            if position >= len(values):
                raise ConfigError(
                    f"model '{self.spec.name}' returned {len(values)} outputs; output '{name}' expects position "
                    f"{position}"
                )
            outputs[name] = values[position].detach().cpu().numpy()
        return outputs

    def unload(self) -> None:
        del self.module
