"""Helpers of the test suite and the benchmarks: the vhost-user-blk back-end launchers (``backends``), the QEMU
guest harness (``guest``) and its kernel fixture (``guest_fixtures``), the other process of the two-process tests
(``peer``). The mock driver for hand-made rings ships in the package, as ``vring.testing``."""
