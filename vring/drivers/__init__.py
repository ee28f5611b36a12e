"""Driver-side models: what a guest's virtio driver does, in Python, over a transport's front-end.

``blk.BlkClient`` (virtio-blk) and ``net.NetClient`` (virtio-net) drive any vhost-user back-end through
``vring.vhost_user.Frontend``. Drivers stand above transports and take the wire format from the device models
(``vring.devices``); nothing below imports them.
"""
