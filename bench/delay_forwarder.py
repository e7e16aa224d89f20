#!/usr/bin/env python3
"""A user-space WAN emulator for bench/accuracy.sh (this kernel has no netem).

Creates two TUN devices (IFF_TUN | IFF_NO_PI: raw IP packets), named by --a and --b, in the
network namespace it starts in; the caller moves each into its namespace (the open file keeps
working) and gives them addresses. Every packet read from one device is written to the other
after --delay-ms (one way) plus a uniform jitter in [-jitter, +jitter], unless it is dropped
with probability --loss (each direction on its own). Packets are never reordered by more than
the jitter allows; with jitter 0 they keep their order.

Counts, per IPv4 address on the B side (the probed addresses), the packets seen A->B and the
packets dropped each way, and writes them as JSON to --stats every 200 ms and at exit:
  {"seen": {addr: n}, "dropped_ab": {addr: n}, "dropped_ba": {addr: n}, "late_ms_max": x}
late_ms_max is the worst lateness of a write against its schedule (the emulator's own error).

Prints "ready" on stdout once both devices exist. Stops on SIGTERM/SIGINT.
"""

import argparse
import fcntl
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--stats", required=True)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    fd_a, fd_b = open_tun(args.a), open_tun(args.b)
    other = {fd_a: fd_b, fd_b: fd_a}
    seen, dropped_ab, dropped_ba = {}, {}, {}
    late_max = 0.0
    queue = []  # (due, order, fd_out, packet)
    order = 0
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def write_stats():
        tmp = args.stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dict(seen=seen, dropped_ab=dropped_ab, dropped_ba=dropped_ba,
                           late_ms_max=round(late_max * 1e3, 3)), f)
        os.replace(tmp, args.stats)

    print("ready", flush=True)
    next_stats = time.monotonic()
    while not stop:
        now = time.monotonic()
        timeout = 0.2
        if queue:
            timeout = max(0.0, min(timeout, queue[0][0] - now))
        try:
            readable, _, _ = select.select([fd_a, fd_b], [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd in readable:
            while True:
                try:
                    packet = os.read(fd, 65535)
                except BlockingIOError:
                    break
                except OSError:
                    stop = True  # the device went away with its namespace
                    break
                if len(packet) < 20 or packet[0] >> 4 != 4:
                    continue  # only IPv4 crosses this path (no IPv6 addresses on it)
                # The B side's address: the destination going A->B, the source coming back.
                a_to_b = fd == fd_a
                b_addr = socket.inet_ntoa(packet[16:20] if a_to_b else packet[12:16])
                if a_to_b:
                    seen[b_addr] = seen.get(b_addr, 0) + 1
                if args.loss > 0 and rng.random() < args.loss:
                    book = dropped_ab if a_to_b else dropped_ba
                    book[b_addr] = book.get(b_addr, 0) + 1
                    continue
                delay = args.delay_ms
                if args.jitter_ms > 0:
                    delay += rng.uniform(-args.jitter_ms, args.jitter_ms)
                order += 1
                heapq.heappush(queue, (now + max(0.0, delay) / 1e3, order, other[fd], packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            due, _, fd_out, packet = heapq.heappop(queue)
            late_max = max(late_max, now - due)
            try:
                os.write(fd_out, packet)
            except OSError:
                pass  # device down or queue full: the packet is lost like on a real link
        if now >= next_stats:
            write_stats()
            next_stats = now + 0.2
    write_stats()


if __name__ == "__main__":
    main()
