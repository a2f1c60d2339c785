"""The GPU's decode step replayed from a CUDA graph: one launch a step instead of some 700.

On the H200 this was measured on, a one-token step of torch_step.py took 60-80 ms whatever the batch
(one row or 64), while the GPU worked 2-5 ms of it: the host launching kernels from Python was the
bound, as it is for transformers' own generate there (10 tok/s). A CUDA graph records the step's
kernels once and replays them with one call. A graph holds fixed shapes and addresses, so the step
attends over each layer's whole KV buffer (cache.py's spare room, zeros, masked) and writes the new
position with `index_copy_` at an index held on the device; it stays valid while the batch keeps its
rows and its buffers, which cache.py reallocates only every ROOM steps, when a row joins or leaves.
A step whose batch differs from the last one's runs eagerly (joins and departures come in bursts,
where a capture every step would cost more than it saves); the second alike is captured and replayed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache

from loupe.runtime.cache import GrowingLayer
from loupe.runtime.torch_step import TorchDecodeStep

log = logging.getLogger(__name__)

# Graph-safe kernels for the one-token attention: no per-shape plan to build, as cuDNN's needs.
GRAPH_ATTENTION = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class _Inputs:
    """The graph's inputs and output: tensors at fixed addresses that each step refills."""

    input_ids: torch.Tensor  # (rows, 1)
    position_ids: torch.Tensor  # (4, rows, 1)
    keep: torch.Tensor  # (rows, capacity) bool: True on the positions a row attends to
    at: torch.Tensor  # (1,): the position this step writes
    logits: torch.Tensor | None = None


class GraphedDecodeStep:
    """TorchDecodeStep, captured into a CUDA graph per batch shape and replayed; eager where it cannot be."""

    def __init__(self, model: torch.nn.Module):
        self.eager = TorchDecodeStep(model)
        self.device = next(model.parameters()).device
        self.stream = torch.cuda.Stream(self.device)  # captures run here, as CUDA graphs require
        self.pool = torch.cuda.graph_pool_handle()  # one memory pool, reused by each new capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: _Inputs | None = None
        self.key: tuple | None = None  # the batch the graph was captured for
        self.last: tuple | None = None  # the batch of the last step
        self.warm = False
        self.broken = False

    @torch.inference_mode()
    def __call__(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """As TorchDecodeStep.__call__; the returned logits are overwritten by the next step."""
        if self.broken or not all(isinstance(layer, GrowingLayer) for layer in cache.layers):
            return self.eager(input_ids, position_ids, mask, cache)
        length = cache.layers[0].get_seq_length()
        buffers = [layer.reserve(1) for layer in cache.layers]
        # rows and capacity too: a new buffer of another size may start where a freed one did
        key = (input_ids.shape[0], buffers[0][0].shape[-2], *(b.data_ptr() for pair in buffers for b in pair))
        last, self.last = self.last, key
        if key != self.key:
            if key != last:  # a new batch: eager until it holds still for a step
                return self.eager(input_ids, position_ids, mask, cache)
            self._capture(key, buffers, length)
            if self.broken:
                return self.eager(input_ids, position_ids, mask, cache)
        inputs = self.inputs
        inputs.input_ids.copy_(input_ids)
        inputs.position_ids.copy_(position_ids)
        inputs.keep[:, : mask.shape[1]].copy_(mask)
        inputs.keep[:, mask.shape[1] :] = False  # the room ahead (and whatever an earlier batch here left)
        inputs.at.fill_(length)
        self.graph.replay()
        for layer in cache.layers:
            layer.filled(length + 1)
        return inputs.logits

    def _capture(self, key: tuple, buffers: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        """Record the step for this batch (its rows, its buffers); on failure, stay eager from now on."""
        self.graph = self.inputs = self.key = None  # the old graph's memory goes back to the pool first
        rows, capacity = key[0], buffers[0][0].shape[-2]
        device = self.device
        inputs = _Inputs(
            torch.zeros(rows, 1, dtype=torch.long, device=device),
            torch.zeros(4, rows, 1, dtype=torch.long, device=device),
            torch.zeros(rows, capacity, dtype=torch.bool, device=device),
            torch.full((1,), length, dtype=torch.long, device=device),  # a recording writes where the step will
        )
        inputs.keep[:, : length + 1] = True

        def write(index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            keys, values = buffers[index]
            keys.index_copy_(2, inputs.at, k)
            values.index_copy_(2, inputs.at, v)
            return keys, values

        def step() -> torch.Tensor:
            with sdpa_kernel(GRAPH_ATTENTION):
                return self.eager.run(inputs.input_ids, inputs.position_ids, inputs.keep, write)

        graph = torch.cuda.CUDAGraph()
        try:
            self.stream.wait_stream(torch.cuda.current_stream(device))
            if not self.warm:  # libraries' lazy set-up (cuBLAS's workspace on this stream) before any capture
                with torch.cuda.stream(self.stream):
                    step()
                self.warm = True
            # thread_local: the request threads' own work (prompts, on the CPU) may go on meanwhile
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
                inputs.logits = step()
            torch.cuda.current_stream(device).wait_stream(self.stream)
        except RuntimeError:
            log.exception("the decode step could not be captured into a CUDA graph: decoding eagerly from now on")
            self.broken = True
            return
        self.graph, self.inputs, self.key = graph, inputs, key
