"""Device models on the device API (``vring.device``): virtio-blk (``blk``) and virtio-rng (``rng``).

A device serves the chains it is handed and knows nothing of the transport that carries them (vhost-user, or an
in-process queue): no module here imports a transport or a driver-side model. The wire formats live here, and the
driver-side models, which stand above the transports, import them from here.
"""
