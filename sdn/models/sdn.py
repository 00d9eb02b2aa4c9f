"""The Shallow-Deep Network: a backbone CNN with internal classifiers (ICs) after some blocks."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sdn.errors import SDNError
from sdn.models.backbone import CNN
from sdn.models.flops import count_call_flops, eval_mode, probe_input
from sdn.models.ic import InternalClassifier
from sdn.models.runtime import run_early_exit


def check_ic_positions(positions: Sequence[int], num_blocks: int) -> list[int]:
    """Validate 0-based block indices: non-empty, integers, strictly increasing, in range."""
    try:
        values = [int(p) for p in positions]
    except (TypeError, ValueError):
        raise SDNError(f"ic_positions must be a list of block indices, got {positions!r}") from None
    if any(isinstance(p, bool) or int(p) != p for p in positions):
        raise SDNError(f"ic_positions must be integer block indices, got {positions!r}")
    if not values:
        raise SDNError("ic_positions is empty; an SDN needs at least one internal classifier")
    bad = [p for p in values if not 0 <= p < num_blocks]
    if bad:
        raise SDNError(
            f"ic_positions {values!r}: {bad!r} out of range; block indices are 0..{num_blocks - 1}"
        )
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise SDNError(
            f"ic_positions {values!r} must be strictly increasing (sorted, no duplicates)"
        )
    return values


@torch.no_grad()
def _probe_shapes(backbone: CNN, positions: Sequence[int]) -> list[tuple[int, int]]:
    """(channels, size) of the feature map after each tapped block, from one dummy image.

    Runs in eval mode so BN statistics stay untouched, and stops after the last tapped block.
    """
    wanted = set(positions)
    shapes: list[tuple[int, int]] = []
    with eval_mode(backbone):
        x = backbone.stem(probe_input(backbone, backbone.image_size))
        for i, block in enumerate(backbone.blocks[: max(positions) + 1]):
            x = block(x)
            if i in wanted:
                if x.dim() != 4 or x.shape[2] != x.shape[3]:
                    raise SDNError(f"block {i} gives shape {tuple(x.shape)}; ICs need square maps")
                shapes.append((int(x.shape[1]), int(x.shape[2])))
    return shapes


class SDN(nn.Module):
    """A backbone CNN plus internal classifiers; one forward pass gives every exit's logits.

    ``ic_positions`` are 0-based indices into ``backbone.blocks``; IC k reads block
    ``ic_positions[k]``'s output. Exits are numbered 0..E-1 with the final head last (E-1).
    The state dict has ``backbone.*`` and ``ics.*`` keys only, so a plain CNN's state dict loads
    strictly into ``sdn.backbone``.
    """

    def __init__(self, backbone: CNN, ic_positions: Sequence[int] | None = None) -> None:
        super().__init__()
        if ic_positions is None:
            ic_positions = getattr(backbone, "DEFAULT_IC_POSITIONS", None)
            if ic_positions is None:
                raise SDNError(f"{type(backbone).__name__} has no default IC positions; pass some")
        positions = check_ic_positions(ic_positions, len(backbone.blocks))
        self.backbone = backbone
        shapes = _probe_shapes(backbone, positions)
        ics = [InternalClassifier(c, s, backbone.num_classes) for c, s in shapes]
        param = next(backbone.parameters())
        self.ics = nn.ModuleList(ics).to(device=param.device, dtype=param.dtype)
        self._ic_positions = tuple(positions)
        # _ic_at[block index] = IC index, or -1: one lookup per block in the hot loops.
        ic_at = [-1] * len(backbone.blocks)
        for k, p in enumerate(positions):
            ic_at[p] = k
        self._ic_at = tuple(ic_at)
        self._costs: tuple[list[float], float] | None = None

    @classmethod
    def from_cnn(cls, cnn: CNN, ic_positions: Sequence[int] | None = None) -> SDN:
        """Wrap a (trained) CNN: the SDN's backbone *is* ``cnn`` (same module, same weights)."""
        return cls(cnn, ic_positions)

    @property
    def ic_positions(self) -> list[int]:
        return list(self._ic_positions)

    @property
    def ic_index_per_block(self) -> tuple[int, ...]:
        """For each backbone block, the index of the IC reading its output, or -1."""
        return self._ic_at

    @property
    def num_exits(self) -> int:
        return len(self.ics) + 1

    @property
    def config(self) -> dict[str, Any]:
        """The dict that rebuilds this model with ``sdn.models.build_model``."""
        config = self.backbone.config
        config["kind"] = "sdn"
        config["ic_positions"] = list(self._ic_positions)
        return config

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit in one pass: ICs in depth order, the final head last."""
        backbone = self.backbone
        outputs: list[torch.Tensor] = []
        x = backbone.stem(x)
        for block, k in zip(backbone.blocks, self._ic_at, strict=True):
            x = block(x)
            if k >= 0:
                outputs.append(self.ics[k](x))
        outputs.append(backbone.head(x))
        return outputs

    # ---- costs -------------------------------------------------------------------------------

    def _count_costs(self) -> tuple[list[float], float]:
        """Cumulative FLOPs per exit and the plain CNN's FLOPs, for one image."""
        backbone = self.backbone
        with eval_mode(self):
            flops, x = count_call_flops(backbone.stem, probe_input(self, backbone.image_size))
            backbone_flops, ic_flops = flops, 0.0
            exits: list[float] = []
            for block, k in zip(backbone.blocks, self._ic_at, strict=True):
                flops, x = count_call_flops(block, x)
                backbone_flops += flops
                if k >= 0:
                    ic_flops += count_call_flops(self.ics[k], x)[0]
                    exits.append(backbone_flops + ic_flops)
            cnn_flops = backbone_flops + count_call_flops(backbone.head, x)[0]
        exits.append(cnn_flops + ic_flops)
        return exits, cnn_flops

    def exit_costs(self) -> list[float]:
        """Cumulative FLOPs of exiting at each output, for one image.

        Exit k costs the backbone up to IC k's block plus every IC head up to and including k
        (the earlier heads ran and did not fire); the final exit is the full SDN. Counted once
        (the architecture never changes after construction) and cached.
        """
        if self._costs is None:
            self._costs = self._count_costs()
        return list(self._costs[0])

    def cnn_cost(self) -> float:
        """FLOPs of the plain backbone CNN (no ICs) for one image: the unit of relative cost."""
        if self._costs is None:
            self._costs = self._count_costs()
        return self._costs[1]

    def relative_exit_costs(self) -> list[float]:
        """``exit_costs()`` divided by ``cnn_cost()``."""
        cnn = self.cnn_cost()
        return [c / cnn for c in self.exit_costs()]

    # ---- runtime early exit ------------------------------------------------------------------

    def early_exit(
        self,
        x: torch.Tensor,
        threshold: float,
        fallback: str = "final",
        policy: str = "confidence",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Early exit that really skips the remaining work.

        Blocks run in order on the samples still in flight. At each IC, samples whose score under
        ``policy`` reaches ``threshold`` leave with that IC's argmax; the rest continue on a
        shrunk batch, and the walk stops as soon as none remain. Policies (``sdn.early_exit``):
        ``confidence`` (max softmax >= threshold, the paper's rule), ``entropy`` (softmax entropy
        <= threshold, in nats), ``patience`` (the last ``threshold`` ICs agree). Samples that
        reach the end take the final head (exit E-1); with ``fallback="most_confident"`` they take
        instead the prediction of the most confident of all outputs (ties: the shallowest), still
        at exit E-1 and full cost. Runs in eval mode (restored afterwards) without grad; one host
        sync per IC (``sdn.models.runtime``). Gives the same predictions and exits as the offline
        replay ``sdn.early_exit.offline_early_exit`` of the analysis pass's outputs.

        Returns ``(preds, exit_idx)``, both int64 ``[B]`` on ``x``'s device.
        """
        return run_early_exit(self, x, threshold, fallback, policy)
