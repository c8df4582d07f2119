"""A whole Stage-1 training step captured in one CUDA graph (TrainConfig.graph).

At the seed's batch of 8 a GPU step is launch-bound: a few hundred small kernels (the encoder,
the search's chunks, the gradient pass, backward, clipping, Adam), each waiting on the host. With
the shape-static search (render.search = "static": no tensor's size depends on the data, nothing is
read back) and Adam's capturable mode (its step count and lr live on the device), the step is
recorded once and replayed: one launch per step. Each batch is copied into the step's fixed input
buffers; tau and the lr are device scalars filled before each replay.

On a CPU there is no graph: the same step runs eagerly. That is what the tests compare against
the reference step of train/loop.py, and what a dry run of the GPU check exercises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowsdf.data.dataset import Views

# objective(batch, tau) -> the mean loss over the batch (0-d, differentiable)
Objective = Callable[[Views, Tensor], Tensor]


def set_group_lr(group: dict, value: float) -> None:
    """Set one parameter group's lr: in place when it is a device scalar (a captured Adam reads it
    from that memory), else as a number."""
    if isinstance(group["lr"], Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Turn an Adam's groups capturable (on CUDA): lr as a device scalar, the step count on the
    device. Called after any checkpoint was loaded into it (a checkpoint stores lr as a number)."""
    if device.type != "cuda":
        return
    for group in optimizer.param_groups:
        group["capturable"] = True
        group["lr"] = torch.tensor(float(group["lr"]), device=device)
    for state in optimizer.state.values():
        if "step" in state:
            state["step"] = state["step"].to(device=device, dtype=torch.float32)


class GraphedStep:
    """One optimiser step on a batch of fixed shape: loss, backward, gradient clipping, Adam.

    `step(batch, tau, lrs)` -> (mean loss, gradient norm), both 0-d tensors on the device that are
    not read back (the caller decides when to look at them). On CUDA the first call records the
    step in a graph (after warm-up steps whose effect on the weights and on Adam is undone) and
    every call replays it; elsewhere the step runs eagerly.
    """

    def __init__(self, objective: Objective, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                 grad_clip: float, example: Views, warmup: int = 3):
        self.objective, self.params, self.optimizer = objective, params, optimizer
        self.grad_clip, self.warmup = grad_clip, warmup
        self.device = params[0].device
        self.inputs = Views(*(x.detach().clone() for x in _tensors(example)))  # fixed buffers a graph reads
        self.tau = torch.zeros((), device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[Tensor, Tensor] | None = None

    def step(self, batch: Views, tau: float, lrs: list[float]) -> tuple[Tensor, Tensor]:
        if batch.images.shape != self.inputs.images.shape:
            raise ValueError(f"a graphed step takes batches of shape {tuple(self.inputs.images.shape)}, "
                             f"got {tuple(batch.images.shape)}")
        for buffer, value in zip(_tensors(self.inputs), _tensors(batch)):
            buffer.copy_(value, non_blocking=True)
        self.tau.fill_(tau)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            set_group_lr(group, lr)
        if self.device.type != "cuda":
            self.optimizer.zero_grad(set_to_none=True)
            return self._eager()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.outputs

    def _eager(self) -> tuple[Tensor, Tensor]:
        """The step itself: what the graph records."""
        loss = self.objective(self.inputs, self.tau)
        loss.backward()
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in self.params]))
        self.optimizer.step()
        return loss.detach(), norm.detach()

    def _capture(self) -> None:
        saved = _snapshot(self.params, self.optimizer)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream: lazy inits, autotuning, Adam's state
            for _ in range(self.warmup):
                self.optimizer.zero_grad(set_to_none=True)
                self._eager()
        torch.cuda.current_stream().wait_stream(side)
        _restore(saved, self.params, self.optimizer)  # the warm-up steps never happened
        self.optimizer.zero_grad(set_to_none=True)  # backward inside the graph allocates the gradients
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self._eager()


def _tensors(views: Views) -> tuple[Tensor, ...]:
    return views.images, views.masks, views.K, views.c2w, views.light


def _snapshot(params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], dict]:
    state = {id(p): {k: v.detach().clone() for k, v in optimizer.state[p].items() if isinstance(v, Tensor)}
             for p in params if p in optimizer.state}
    return [p.detach().clone() for p in params], state


def _restore(saved: tuple[list[Tensor], dict], params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    """Put the weights and Adam's state back in place (a graph captures their addresses): the state
    a parameter had before, or zeros where it had none (Adam's fresh state)."""
    weights, state = saved
    with torch.no_grad():
        for p, w in zip(params, weights):
            p.copy_(w)
            before = state.get(id(p), {})
            for key, value in optimizer.state[p].items():
                if not isinstance(value, Tensor):
                    continue
                if key in before:
                    value.copy_(before[key])
                else:
                    value.zero_()
