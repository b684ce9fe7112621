"""VFIO type1 and iommufd ioctls issued on /dev/null: the kernel answers ENOTTY, and the
collector must still decode every argument. Writes what it passed."""

import ctypes
import fcntl
import json
import os
import struct
import sys

fd = os.open("/dev/null", os.O_RDWR)
calls = []


def ioctl(cmd, payload):
    buf = ctypes.create_string_buffer(payload, len(payload))
    try:
        fcntl.ioctl(fd, cmd, buf)
        return 0
    except OSError as e:
        return -e.errno


ret = ioctl(0x3B71, struct.pack("=IIQQQ", 32, 3, 0x7F1200000000, 0x100000, 0x200000))
calls.append({"table": "dma", "api": "vfio_type1", "op": "map", "fd": fd, "flags": 3,
              "vaddr": 0x7F1200000000, "iova": 0x100000, "size": 0x200000, "ret": ret})
ret = ioctl(0x3B72, struct.pack("=IIQQ", 24, 0, 0x100000, 0x200000))
calls.append({"table": "dma", "api": "vfio_type1", "op": "unmap", "fd": fd, "flags": 0,
              "iova": 0x100000, "size": 0x200000, "ret": ret})
ret = ioctl(0x3B85, struct.pack("=IIIIQQQ", 40, 7, 3, 0, 0x7F1300000000, 0x400000, 0x800000))
calls.append({"table": "dma", "api": "iommufd", "op": "map", "fd": fd, "flags": 7, "ioas_id": 3,
              "vaddr": 0x7F1300000000, "iova": 0x800000, "size": 0x400000, "ret": ret})
ret = ioctl(0x3B86, struct.pack("=IIQQ", 24, 3, 0x800000, 0x400000))
calls.append({"table": "dma", "api": "iommufd", "op": "unmap", "fd": fd, "ioas_id": 3,
              "iova": 0x800000, "size": 0x400000, "ret": ret})
ret = ioctl(0x3B68, struct.pack("=i", 42))
calls.append({"table": "vfio_groups", "op": "attach", "group_fd": fd, "container_fd": 42, "ret": ret})
ret = ioctl(0x3B69, b"\0" * 8)
calls.append({"table": "vfio_groups", "op": "detach", "group_fd": fd, "ret": ret})
ret = ioctl(0x3B75, struct.pack("=IIQQ", 24, 4, 0x100000, 0x200000))
calls.append({"table": "dirty_log", "op": "vfio_dirty_get_bitmap", "fd": fd, "iova": 0x100000,
              "size": 0x200000, "ret": ret})
ret = ioctl(0x3B75, struct.pack("=II", 8, 1))
calls.append({"table": "dirty_log", "op": "vfio_dirty_start", "fd": fd, "ret": ret})

json.dump({"pid": os.getpid(), "calls": calls}, open(sys.argv[1], "w"))
