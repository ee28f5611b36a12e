"""Device models served by vring: virtio-blk and virtio-rng."""
