"""What every queue shares, either end and either layout: its layout kind, views of its rings that follow guest
memory, and the broken latch (pure-Python twin)."""

from __future__ import annotations

from typing import Any, ClassVar

from .._errors import VringError, broken_error, caller_error, check_fits
from .._features import Feature
from .._layout import PackedLayout, SplitLayout
from .memory import GuestMemory


def as_ints(values: Any) -> list[int]:
    """A caller's sequence (list, numpy array, ...) as Python ints."""
    return [int(v) for v in values]


def as_c_ints(values: Any, name: str, ctype: str) -> list[int]:
    """``as_ints``, refusing a value the Cython twin's array of ``ctype`` cannot hold (``argument-range``)."""
    ints = as_ints(values)
    check_fits(name, ints, ctype)
    return ints


class Queue:
    """The base of the four queue classes. Each subclass names the layout kind it serves and the class of its
    ring views. Once the other side broke a rule of the spec, the queue is broken: its ring operations raise
    QueueBroken until ``reset``."""

    _side: ClassVar[str]  # "device" or "driver", as QueueBroken words it
    _kind: ClassVar[str]  # "split" or "packed", as the layout-kind error words it
    _layout_type: ClassVar[type]  # SplitLayout or PackedLayout
    _rings_type: ClassVar[type]  # SplitRings or PackedRings, made from (mem, layout)
    mem: GuestMemory
    layout: SplitLayout | PackedLayout
    features: Feature
    size: int
    broken: bool
    error: VringError | None
    _event_idx: bool
    _rings: Any  # a _rings_type: each method that reads it names the type it works on

    def _refuse_other_kind(self, layout: object) -> None:
        """The first check of every ``__init__``: a layout of the other kind is a LayoutError."""
        if not isinstance(layout, self._layout_type):
            raise caller_error("layout-kind", kind=self._kind, layout=self._layout_type.__name__,
                               given=type(layout).__name__)

    def _attach(self, mem: GuestMemory, layout: SplitLayout | PackedLayout, features: int) -> None:
        """Take the arguments every queue has (once ``__init__`` has checked them)."""
        self.mem = mem
        self.layout = layout
        self.features = Feature(int(features))
        self.size = layout.size
        self._event_idx = bool(features & Feature.EVENT_IDX)

    def _map_rings(self) -> None:
        """Take the views of the ring areas (AddressError if guest memory does not hold them)."""
        self._rings = self._rings_type(self.mem, self.layout)

    def _bind(self) -> Any:
        """The ring views, mapped again if guest memory changed since they were taken."""
        if self._rings.generation != self.mem.generation:
            self._map_rings()
        return self._rings

    def _check(self) -> Any:
        """``_bind``, for a call that a broken queue refuses."""
        if self.broken:
            raise broken_error(self._side, self.error)
        return self._bind()

    def _fail(self, err: VringError) -> VringError:
        """Latch the queue broken by ``err`` (which the caller raises)."""
        self.broken = True
        self.error = err
        return err
