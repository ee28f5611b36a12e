"""Errors shared by both engine twins, so that ``except vring.MalformedChain`` works whichever one is loaded."""

from __future__ import annotations


class VringError(Exception):
    """Base of every error vring raises on purpose.

    ``reason`` is a short, stable, machine-readable name of the check that failed (``"head-out-of-range"``);
    the message says the same thing in words, with the values involved.
    """

    reason: str = "vring-error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class AddressError(VringError, ValueError):
    """A guest-physical range that leaves registered guest memory (or wraps past 2**64)."""

    reason = "address"


class LayoutError(VringError, ValueError):
    """A ring layout the spec does not allow (size, alignment, overlap) or that guest memory cannot hold."""

    reason = "layout"


class MalformedChain(VringError):
    """The driver's side of the ring broke a rule of the spec; the device queue is now broken."""

    reason = "malformed-chain"


class MalformedUsed(VringError):
    """The device's side of the ring broke a rule of the spec; the driver queue is now broken."""

    reason = "malformed-used"


class QueueBroken(VringError):
    """The queue latched broken after an earlier error; only ``reset()`` revives it."""

    reason = "queue-broken"


class InflightError(VringError, ValueError):
    """An inflight record (vhost-user's "Inflight I/O tracking" region) that no crash of a device can have left:
    a field out of range, a broken list, a record of another queue. The queue it was offered to is unchanged."""

    reason = "inflight-record"


def inflight_error(field: str, value: object, problem: str) -> InflightError:
    """The InflightError for the record's ``field`` holding ``value`` (both twins word it through here)."""
    return InflightError(f"inflight record: {field} {value} {problem}")


class QueueFull(VringError):
    """The driver has not enough free descriptors for the chain (reap used buffers, then retry)."""

    reason = "queue-full"


# The device-side checks, each a distinct MalformedChain reason (both twins use these exact strings). Each names
# the clause of the spec (oasis-tcs/virtio-spec, sections "Split Virtqueues" and "Packed Virtqueues") the driver
# broke; "SPLIT /" and "PACKED /" abbreviate "Basic Facilities of a Virtio Device / Virtqueues / ..." and
# ".../ Packed Virtqueues / ...". What the spec says the device ignores, it ignores: the WRITE flag of a descriptor
# that refers to an indirect table (SPLIT / Indirect Descriptors, device requirements: "The device MUST ignore the
# write-only flag"; PACKED / Indirect Flag: Scatter-Gather Support: "VIRTQ_DESC_F_WRITE is reserved and is ignored
# by the device"), every flag but WRITE and the buffer id of a packed indirect table's entries (same section:
# "Others are reserved and are ignored by the device. Buffer ID is also reserved and is ignored by the device."),
# and the buffer id of a packed chain's descriptors but the last (PACKED / Next Flag: Descriptor Chaining: "Buffer
# ID is included in the last descriptor in the list").
# A new check: its reason here and its wording in chain_error; its C code CHECK_<REASON> in vring/_cring/defs.pxi
# and CHAIN_CHECK_CODES (tests/test_check_codes.py matches them); the check in both twins, in the file of its
# concern (descriptors.* when both layouts have it, else split_device.* / packed_device.*), at the same point in
# the order of checks; a test on both twins. docs/design.md, "Where a new check goes", says the same at length.
CHAIN_REASONS = (
    # avail->idx moved more than the queue size past last_avail_idx: the ring has Queue Size entries, so no more
    # heads can be outstanding (SPLIT / The Virtqueue Available Ring, driver requirements: "A driver MUST NOT
    # decrement the available idx"; a jump past the size is such a decrement, mod 2**16).
    "avail-index-jump",
    # An avail ring entry >= queue size: ring[] holds heads of chains in the descriptor table of Queue Size entries
    # (SPLIT / The Virtqueue Available Ring); no MUST sentence, an entry outside the table names no descriptor.
    "head-out-of-range",
    # A head made available again before the device returned it: no MUST sentence; a descriptor belongs to the
    # device from when it is made available until it is used (SPLIT / Supplying Buffers to The Device), so the
    # same head twice is two buffers in one descriptor.
    "head-in-flight",
    # desc.next >= queue size (or >= the indirect table's entries): "next" names an entry of the same table
    # (SPLIT / The Virtqueue Descriptor Table).
    "next-out-of-range",
    # More descriptors than the table holds. SPLIT / The Virtqueue Descriptor Table, driver requirements: "Drivers
    # MUST NOT add a descriptor chain longer than 2^32 bytes in total; this implies that loops in the descriptor
    # chain are forbidden!"; SPLIT / Indirect Descriptors: "A driver MUST NOT create a descriptor chain longer than
    # the Queue Size of the device."
    "chain-loop",
    # SPLIT and PACKED / Indirect Descriptors, driver requirements: "The driver MUST NOT set the
    # VIRTQ_DESC_F_INDIRECT flag unless the VIRTIO_F_INDIRECT_DESC feature was negotiated." The spec leaves the
    # device's answer open: libvhost-user serves such a descriptor, vring refuses it, because a device that did not
    # offer the feature has not bounded what it accepts in a table.
    "indirect-not-negotiated",
    # Split rings: SPLIT / Indirect Descriptors: "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag within an
    # indirect descriptor (ie. only one table per descriptor)." (In a packed table the flag is ignored: see above.)
    "nested-indirect",
    # SPLIT / Indirect Descriptors: "A driver MUST NOT set both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT in
    # flags." PACKED / Indirect Descriptors: "A driver MUST NOT write direct descriptors with VIRTQ_DESC_F_INDIRECT
    # set in a scatter-gather list linked by VIRTQ_DESC_F_NEXT." Direct descriptors followed by an indirect one are
    # served on both layouts, as SPLIT / Indirect Descriptors, device requirements, asks: "The device MUST handle
    # the case of zero or more normal chained descriptors followed by a single descriptor with
    # flags&VIRTQ_DESC_F_INDIRECT."
    "indirect-with-next",
    # An indirect table of length 0: the table is desc[len / 16] (SPLIT / Indirect Descriptors; PACKED / Indirect
    # Flag: Scatter-Gather Support) and the chain needs a first descriptor "at the start of the table".
    "indirect-len-zero",
    # A table length not a multiple of 16: the same "desc[len / 16]" of 16-byte descriptors.
    "indirect-len-unaligned",
    # More entries than the queue's limit: Message Framing, device requirements: "The device MAY have a reasonable
    # limit of descriptors it will allow in a chain"; PACKED / Scatter-Gather Support: "A driver MUST NOT create a
    # descriptor list longer than allowed by the device."
    "indirect-too-large",
    # An indirect table not inside one guest memory region: "addr and len refer to the indirect table address and
    # length" (SPLIT / Indirect Descriptors), guest-physical memory the device can read.
    "indirect-outside-memory",
    # Message Framing and PACKED / Scatter-Gather Support, driver requirements: "The driver MUST place any
    # device-writable descriptor elements after any device-readable descriptor elements."
    "readable-after-writable",
    # A buffer of length 0: no MUST sentence; "len" is the length of a buffer element and an empty one is no buffer
    # (Linux and QEMU refuse it too).
    "zero-length",
    # The chain's total length exceeds 2**32 - 1: SPLIT / The Virtqueue Descriptor Table: "Drivers MUST NOT add a
    # descriptor chain longer than 2^32 bytes in total".
    "chain-too-large",
    # A buffer that leaves guest memory: "addr" is the guest-physical address of the buffer element.
    "buffer-outside-memory",
    # Packed rings only:
    # A chain's buffer id >= queue size: no MUST sentence; at most Queue Size buffers are outstanding (PACKED /
    # Virtqueues: "if Queue Size is 4 then at most 4 buffers can be queued"), and vring's device keeps its state per
    # id in a table of that size, as the driver keeps its own.
    "buffer-id-out-of-range",
    # A buffer id the device holds already: PACKED / The Virtqueue Descriptor Table, driver requirements: "A driver
    # MUST NOT change a descriptor unless it observes the VIRTQ_DESC_F_USED bit in its flags being changed" (an id
    # comes back to the driver with its used descriptor).
    "buffer-id-in-flight",
    # A descriptor after the head that is not available: PACKED / Scatter-Gather Support: "A driver MUST NOT make the
    # first descriptor in the list available before all subsequent descriptors comprising the list are made
    # available"; PACKED / Next Flag: Descriptor Chaining: "all flags, including VIRTQ_DESC_F_AVAIL,
    # VIRTQ_DESC_F_USED, VIRTQ_DESC_F_WRITE must be set/cleared correctly in all descriptors in the list".
    "chain-flags",
    # A chain of more descriptors than the ring has: PACKED / Scatter-Gather Support: "A driver MUST NOT create a
    # descriptor list longer than the Queue Size."
    "chain-too-long",
    # A chain that takes ring slots the device still holds (the slots of the buffers it holds and the new chain's
    # add up to more than the ring), checked while the device keeps an inflight record (whose free list has one
    # entry per slot): PACKED / The Virtqueue Descriptor Table, driver requirements: "A driver MUST NOT change a
    # descriptor unless it observes the VIRTQ_DESC_F_USED bit in its flags being changed".
    "slots-in-flight",
)

# The driver-side checks of what the device wrote into the used ring (MalformedUsed reasons), each naming what the
# device broke. What the spec says drivers ignore, the driver ignores: the length of a packed used descriptor
# without WRITE (PACKED / Element Address and Length: "Element Length is reserved for used descriptors without the
# VIRTQ_DESC_F_WRITE flag, and is ignored by drivers") and NEXT in used descriptors (PACKED / Next Flag: Descriptor
# Chaining: "VIRTQ_DESC_F_NEXT is reserved in used descriptors, and should be ignored by drivers").
USED_REASONS = (
    # used->idx moved past the buffers the driver published: a used element returns a buffer the driver made
    # available (SPLIT / The Virtqueue Used Ring); no MUST sentence bounds idx, but nothing else can be returned.
    "used-index-jump",
    # A used element id >= queue size: "id indicates the head entry of the descriptor chain" (SPLIT / The Virtqueue
    # Used Ring), an index into a table of Queue Size entries; packed: a buffer id the driver wrote.
    "used-id-out-of-range",
    # An id that is not the head of an outstanding chain (or was returned already): as above, a used element returns
    # one buffer the driver made available, once.
    "used-id-not-in-flight",
    # A used length larger than the chain's device-writable bytes: SPLIT / The Virtqueue Used Ring, device
    # requirements: "The device MUST write at least len bytes to descriptor, beginning at the first device-writable
    # buffer" (there are no more bytes to write than the writable ones).
    "used-len-too-large",
    # Packed: a used descriptor where the driver has nothing in flight: PACKED / The Virtqueue Descriptor Table,
    # device requirements: "A device MUST NOT use a descriptor unless it observes the VIRTQ_DESC_F_AVAIL bit in its
    # flags being changed".
    "used-wrap",
)


def chain_error(reason: str, head: int, index: int, in_indirect: bool, a: int = 0, b: int = 0) -> MalformedChain:
    """Build the MalformedChain for a failed device-side check; both twins word their errors through here.

    ``index`` is the descriptor's slot in the table being walked (the indirect table when ``in_indirect``);
    ``a`` and ``b`` are the values the check compared (their meaning depends on ``reason``).
    """
    where = f"indirect descriptor {index} of head {head}" if in_indirect else f"descriptor {index} of head {head}"
    if reason == "avail-index-jump":
        text = f"avail index {a} is {(a - b) & 0xFFFF} entries past last_avail_idx {b}, more than the queue size"
    elif reason == "head-out-of-range":
        text = f"avail ring holds head {head}, not below the queue size {a}"
    elif reason == "head-in-flight":
        text = f"head {head} was made available again before the device returned it"
    elif reason == "next-out-of-range":
        text = f"{where} links to next {a}, not below the table size {b}"
    elif reason == "chain-loop":
        text = f"{where}: the chain has more than {a} descriptors (a loop, or longer than its table)"
    elif reason == "indirect-not-negotiated":
        text = f"{where} is indirect but VIRTIO_F_INDIRECT_DESC was not negotiated"
    elif reason == "nested-indirect":
        text = f"{where} is an indirect descriptor inside an indirect table"
    elif reason == "indirect-with-next":
        text = f"{where} sets both INDIRECT and NEXT"
    elif reason == "indirect-len-zero":
        text = f"{where} refers to an indirect table of length 0"
    elif reason == "indirect-len-unaligned":
        text = f"{where} refers to an indirect table of length {a}, not a multiple of 16"
    elif reason == "indirect-too-large":
        text = f"{where} refers to an indirect table of {a // 16} entries, more than the limit {b}"
    elif reason == "indirect-outside-memory":
        text = f"{where} refers to an indirect table at {a:#x} (+{b}) that is not inside one guest memory region"
    elif reason == "readable-after-writable":
        text = f"{where} is device-readable after a device-writable descriptor"
    elif reason == "zero-length":
        text = f"{where} has a buffer of length 0"
    elif reason == "chain-too-large":
        text = f"{where}: the chain's total length exceeds 2**32 - 1 bytes"
    elif reason == "buffer-outside-memory":
        text = f"{where} has a buffer at {a:#x} (+{b}) that leaves guest memory"
    elif reason == "buffer-id-out-of-range":
        text = f"{where}: buffer id {a} is not below the queue size {b}"
    elif reason == "buffer-id-in-flight":
        text = f"{where}: buffer id {a} is already held by the device"
    elif reason == "chain-flags":
        text = f"{where} is not available (flags {a:#x}, wrap counter {b}): the chain is broken"
    elif reason == "chain-too-long":
        text = f"{where}: the chain has more than the ring's {a} descriptors"
    elif reason == "slots-in-flight":
        text = f"{where}: the chain takes {a} slots but only {b} are not held by the device"
    else:  # pragma: no cover - a reason without wording is a bug in vring itself
        raise AssertionError(f"unknown chain check {reason!r}")
    return MalformedChain(f"malformed chain ({reason}): {text}", reason)


def used_error(reason: str, position: int, a: int = 0, b: int = 0) -> MalformedUsed:
    """Build the MalformedUsed for a failed driver-side check of the used ring (shared wording, both twins)."""
    if reason == "used-index-jump":
        text = f"used index {a} is more than the {b} published buffers past last_used_idx {position}"
    elif reason == "used-id-out-of-range":
        text = f"used element {position} returns id {a}, not below the queue size {b}"
    elif reason == "used-id-not-in-flight":
        text = f"used element {position} returns id {a}, which is not the head of an outstanding chain"
    elif reason == "used-len-too-large":
        text = f"used element {position} reports {a} bytes written, more than the chain's {b} writable bytes"
    elif reason == "used-wrap":
        text = f"used descriptor {position} (flags {a:#x}) is marked used but nothing is in flight there"
    else:  # pragma: no cover
        raise AssertionError(f"unknown used check {reason!r}")
    return MalformedUsed(f"malformed used ring ({reason}): {text}", reason)


def host_alignment_error(gpa: int) -> LayoutError:
    """A ring area whose host address is odd: its 16-bit fields could not be loaded and stored whole (both twins
    refuse it, when a queue maps its areas)."""
    return LayoutError(f"ring area at {gpa:#x} is at an odd host address; 16-bit fields need 2-byte alignment",
                       "host-alignment")


def broken_error(side: str, cause: VringError | None) -> QueueBroken:
    why = f": {cause}" if cause is not None else ""
    return QueueBroken(f"{side} queue is broken{why}; reset() it to use it again")


# What a caller of the engine (not the other side of the ring) did wrong: the exception class and its wording,
# one entry per check, so that both twins raise the same error with the same text. None of these breaks a queue.
CALLER_ERRORS: dict[str, tuple[type[Exception], str]] = {
    # Guest memory
    "region-size": (AddressError, "region size {size} is not positive"),
    "region-range": (AddressError, "region {gpa!r} (+{size}) is empty or not a 64-bit guest-physical range"),
    "region-overlap": (AddressError, "region {gpa:#x} (+{size:#x}) overlaps region {other:#x} (+{other_size:#x})"),
    "no-region": (AddressError, "no region starts at {gpa:#x}"),
    "range": (AddressError, "range {gpa:#x} (+{length}) is not a 64-bit guest-physical range"),
    "outside-memory": (AddressError, "guest-physical address {gpa:#x} is outside guest memory"),
    "spans-regions": (AddressError, "range {gpa:#x} (+{length}) spans {count} regions; use views()"),
    "memory-readonly": (TypeError, "guest memory must be writable"),
    "memory-strided": (TypeError, "guest memory must be C-contiguous"),
    # Queue construction and state
    "layout-kind": (LayoutError, "a {kind} queue needs a {layout}, not a {given}"),
    "max-indirect": (ValueError, "max_indirect must be at least 1"),
    "indirect-max": (ValueError, "indirect_max must be between 1 and {limit}"),
    "indirect-threshold": (ValueError, "indirect_threshold must be at least 1"),
    "inflight-region-size": (ValueError, "an inflight region of {given} bytes is smaller than the {needed} bytes a "
                             "{kind} queue of {size} needs"),
    "inflight-region-alignment": (ValueError, "an inflight region must start at an 8-byte aligned host address"),
    "inflight-busy": (ValueError, "attach_inflight needs a queue that holds no chains; this one holds {held}"),
    # Driver side: adding chains
    "empty-chain": (ValueError, "a chain needs at least one buffer"),
    "chain-longer-than-queue": (ValueError, "a chain of {nseg} buffers is longer than the queue size {size}"),
    "no-free-descriptors": (QueueFull, "{needed} descriptors needed, {free} free"),
    "buffer-length": (ValueError, "buffer length {length} is not between 1 and 2**32 - 1"),
    "buffer-order": (ValueError, "device-readable buffers must come before device-writable ones"),
    "buffer-outside-memory": (AddressError, "buffer {addr:#x} (+{length}) is outside guest memory"),
    "writable-too-large": (ValueError, "the chain's writable length exceeds 2**32 - 1"),
    "segment-arrays": (ValueError, "addrs, lens and writable differ in length"),
    "segments-uneven": (ValueError, "the segments do not split into chains of chain_segs each"),
    "segments-total": (ValueError, "chain_segs does not add up to the number of segments"),
    "heads-short": (ValueError, "heads is shorter than the number of chains"),
    "lens-short": (ValueError, "lens is shorter than heads"),
    "argument-range": (ValueError, "{name}[{index}] = {value} does not fit {ctype}"),
    # Device side: returning chains
    "head-not-held": (ValueError, "head {head} is not a chain the device holds"),
    "written-too-large": (ValueError, "written length {written} exceeds the chain's {writable} writable bytes"),
    "push-lengths": (ValueError, "heads and lens differ in length"),
    "pushed-twice": (ValueError, "head {head} is pushed twice in one batch"),
    # Batches
    "batch-capacity": (ValueError, "a batch holds at least one chain"),
    "batch-segments": (ValueError, "a batch holds at least one segment"),
    "batch-count": (ValueError, "count {count} is outside the batch's capacity {capacity}"),
    "batch-chain-segments": (ValueError, "chain {chain} runs past the batch's {max_segments} segments"),
    "batch-chain-too-long": (ValueError, "a chain of {nseg} segments does not fit a batch of {max_segments} segments"),
    "batch-set-chains": (ValueError, "{count} chains of {per} segments do not fit the batch"),
    "batch-index": (IndexError, "chain {chain} is not in the batch ({count} chains)"),
}


def caller_error(check: str, **values: object) -> Exception:
    """The exception for a caller's mistake ``check`` (a key of CALLER_ERRORS), worded with ``values``."""
    cls, text = CALLER_ERRORS[check]
    return cls(text.format(**values))


# The C types of the engine's array arguments: a value outside one is refused when the arguments are read, before
# any other check, by both twins alike.
C_INT_RANGES = {"uint64": (0, (1 << 64) - 1), "int64": (-(1 << 63), (1 << 63) - 1),
                "uint32": (0, (1 << 32) - 1)}


def check_fits(name: str, values: list[int], ctype: str) -> None:
    """Raise the ``argument-range`` error for the first of ``values`` that ``ctype`` cannot hold."""
    low, high = C_INT_RANGES[ctype]
    if not values or low <= min(values) and max(values) <= high:  # the common case, at C speed
        return
    for index, value in enumerate(values):
        if not low <= value <= high:
            raise caller_error("argument-range", name=name, index=index, value=value, ctype=ctype)
