# virtio-blk's wire values (spec 5.2.6), for the worker and the client loops: the same as vring.devices.blk's
# (tests/test_blk_worker.py compares them).
cdef enum:
    BLK_T_IN = 0
    BLK_T_OUT = 1
    BLK_T_FLUSH = 4
    BLK_T_GET_ID = 8
    BLK_T_DISCARD = 11
    BLK_T_WRITE_ZEROES = 13
    BLK_S_OK = 0
    BLK_S_IOERR = 1
    BLK_S_UNSUPP = 2
    BLK_HEADER_BYTES = 16
    BLK_ID_BYTES = 20
    BLK_SECTOR = 512
    BLK_DISCARD_SEG_BYTES = 16
    BLK_MAX_DISCARD_SEG = 32
    BLK_MAX_DISCARD_SECTORS = 1 << 22
    BLK_WZ_UNMAP = 1
    BLK_IOV_MAX = 1024               # what preadv / io_uring take at most in one call
BLK_WIRE = {"T_IN": BLK_T_IN, "T_OUT": BLK_T_OUT, "T_FLUSH": BLK_T_FLUSH, "T_GET_ID": BLK_T_GET_ID,
            "T_DISCARD": BLK_T_DISCARD, "T_WRITE_ZEROES": BLK_T_WRITE_ZEROES, "S_OK": BLK_S_OK,
            "S_IOERR": BLK_S_IOERR, "S_UNSUPP": BLK_S_UNSUPP, "ID_BYTES": BLK_ID_BYTES, "SECTOR": BLK_SECTOR,
            "MAX_DISCARD_SEG": BLK_MAX_DISCARD_SEG, "MAX_DISCARD_SECTORS": BLK_MAX_DISCARD_SECTORS,
            "WZ_UNMAP": BLK_WZ_UNMAP}
