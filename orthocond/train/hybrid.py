"""Switching the matrix function of a model's meta-layers; the hybrid NS→SVD protocol.

ICCV 2021 (FORMULAS §2, "Hybrid NS→SVD protocol"): train the covariance-pooling head with
iSQRT-COV (Newton–Schulz, ``method="ns"``) through every learning-rate stage but the last,
then switch the meta-layer to the eigendecomposition root (``method="eig"``, any
eigen-gradient; SVD-Padé = ``backward="pade"``) at the last lr decay and finish with it.
ResNet on ImageNet, 60 epochs with decays at 30/45: eigendecomposition for the 0-based
epochs 45–59 (``HybridSwitch(model, switch_epoch=45)``).

The meta-layers (:data:`orthocond.nn.META_LAYERS`: ``GlobalCovPool``,
``DecorrelatedBatchNorm2d``/``1d`` and their subclasses, e.g. the synchronised ones) read
their plain attributes ``method``, ``backward`` and ``iters`` at every forward, so a switch
takes effect at the next forward. These attributes are not in the model's ``state_dict``:
resume restores them through :meth:`HybridSwitch.load_state_dict` (or by calling
:meth:`HybridSwitch.on_epoch_start` again with the resumed epoch).

Example:
    >>> model = gcp_resnet50()                                  # iSQRT-COV head
    >>> switch = HybridSwitch(model, switch_epoch=45)           # eig + Padé from epoch 45
    >>> for epoch in range(60):
    ...     switch.on_epoch_start(epoch)
    ...     train_one_epoch(model)
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from orthocond._checks import check_int, check_module
from orthocond.nn.meta import (
    KEEP,
    META_LAYERS,
    _check_triple,
    _check_types,
    meta_layer_methods,
    set_meta_layer_method,
)

__all__ = ["HybridSwitch"]


class HybridSwitch:
    """Switch a model's meta-layers to another matrix function once, at a given epoch.

    :meth:`on_epoch_start` (alias :meth:`step`) is called with the 0-based epoch about to
    run; the first call with ``epoch >= switch_epoch`` applies
    :func:`set_meta_layer_method` (``method``, ``backward``, ``iters``) and returns True;
    every other call returns False and changes nothing, so the switch happens exactly once.

    Args:
        model: the model whose meta-layers are switched.
        switch_epoch: first 0-based epoch to run with the new method (>= 0); the epoch of the
            last lr decay for the ICCV 2021 protocol, see
            :func:`orthocond.train.schedules.last_decay_epoch`.
        method, backward: the new matrix function (default ``"eig"`` with ``"pade"``:
            SVD-Padé).
        iters: as in :func:`set_meta_layer_method` (default ``"keep"``).
        types: the layer classes to switch (default every meta-layer).

    Attributes:
        switched (bool); switched_at (int | None): the epoch at which it switched;
        previous (dict): :func:`meta_layer_methods` just before the switch (empty before).

    Raises ``ValueError`` when ``model`` has no layer of ``types``.

    ``state_dict()``/``load_state_dict()`` carry the schedule and whether the switch has
    happened; loading a state in which it has re-applies it to the model, whose
    ``method`` attributes are not part of the model's own ``state_dict``, and loading a
    pre-switch state after the switch (a rollback) puts the layers back to their settings
    from before it.

    Example:
        >>> switch = HybridSwitch(model, switch_epoch=45, method="eig", backward="pade")
        >>> [switch.on_epoch_start(e) for e in (44, 45, 46)]
        [False, True, False]
    """

    def __init__(
        self,
        model: nn.Module,
        switch_epoch: int,
        method: str = "eig",
        backward: str = "pade",
        *,
        iters: int | None | str = KEEP,
        types: type | tuple[type, ...] = META_LAYERS,
    ) -> None:
        check_module(model)
        check_int(switch_epoch, "switch_epoch", minimum=0)
        _check_triple(method, backward, iters)
        self.types = _check_types(types)
        if not meta_layer_methods(model, self.types):
            names = ", ".join(t.__name__ for t in self.types)
            raise ValueError(f"model has no meta-layer to switch (looked for {names})")
        self.model = model
        self.switch_epoch = switch_epoch
        self.method = method
        self.backward = backward
        self.iters = iters
        self.switched = False
        self.switched_at: int | None = None
        self.previous: dict[str, tuple[str, str, int | None]] = {}

    def _apply(self, record: bool = True) -> int:
        if record:  # not when re-applying over a switch: keep the pre-switch settings
            self.previous = meta_layer_methods(self.model, self.types)
        return set_meta_layer_method(
            self.model, self.method, backward=self.backward, iters=self.iters, types=self.types
        )

    def on_epoch_start(self, epoch: int) -> bool:
        """Switch if ``epoch >= switch_epoch`` and not switched yet; True iff it switched now."""
        check_int(epoch, "epoch", minimum=0)
        if self.switched or epoch < self.switch_epoch:
            return False
        self._apply()
        self.switched = True
        self.switched_at = epoch
        return True

    def step(self, epoch: int) -> bool:
        """Alias of :meth:`on_epoch_start`."""
        return self.on_epoch_start(epoch)

    def state_dict(self) -> dict[str, Any]:
        """``{"switch_epoch", "method", "backward", "iters", "switched", "switched_at"}``."""
        return {
            "switch_epoch": self.switch_epoch,
            "method": self.method,
            "backward": self.backward,
            "iters": self.iters,
            "switched": self.switched,
            "switched_at": self.switched_at,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; if it records a switch, apply it to the model
        now (the loaded settings win over the constructor's)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        keys = {"switch_epoch", "method", "backward", "iters", "switched", "switched_at"}
        missing = keys - set(state)
        if missing:
            raise ValueError(f"state is missing the keys {sorted(missing)}")
        check_int(state["switch_epoch"], "state['switch_epoch']", minimum=0)
        _check_triple(state["method"], state["backward"], state["iters"])
        if not isinstance(state["switched"], bool):
            raise TypeError(f"state['switched'] must be a bool, got {state['switched']!r}")
        if state["switched"]:
            check_int(state["switched_at"], "state['switched_at']", minimum=0)
        self.switch_epoch = state["switch_epoch"]
        self.method = state["method"]
        self.backward = state["backward"]
        self.iters = state["iters"]
        was_switched = self.switched
        if was_switched and not state["switched"]:
            self._undo()
        self.switched = state["switched"]
        self.switched_at = state["switched_at"] if self.switched else None
        if self.switched:
            self._apply(record=not was_switched)

    def _undo(self) -> None:
        """Give every layer switched by :meth:`_apply` its settings from before the switch."""
        modules = dict(self.model.named_modules())
        for name, (method, backward, iters) in self.previous.items():
            layer = modules.get(name)
            if layer is not None:
                layer.method, layer.backward, layer.iters = method, backward, iters
        self.previous = {}

    def __repr__(self) -> str:
        return (
            f"HybridSwitch(switch_epoch={self.switch_epoch}, method={self.method!r}, "
            f"backward={self.backward!r}, iters={self.iters!r}, switched={self.switched})"
        )
