#!/usr/bin/env python3
"""STAMP benchmark: regionprobe's reflector and sender against stamp-suite's, on loopback.

Usage (from anywhere; builds nothing: run `cargo build --release` first):
  bench/stamp.py                       # DURATION=20 s per measurement
  DURATION=10 STAMP_SUITE=/path/to/stamp-suite bench/stamp.py

What it measures (each process alone, CPU from /proc/PID/stat utime+stime):
  reflector capacity  a Python load generator sends 44-byte unauthenticated requests as fast as
                      it can from 8 sockets (and reads the replies) for DURATION s; the figure
                      is replies / reflector CPU seconds = packets reflected per second per core
                      (the generator, not the reflector, is the bottleneck on a small machine:
                      per core is what compares).
  sender CPU/packet   each sender sends 1,000 packets/s for DURATION s to stamp-suite's
                      reflector (the same reflector for both): regionprobe with one
                      `probe = "stamp"` target, train = 100 every 100 ms; stamp-suite with
                      -d 1ms. CPU microseconds per packet sent.
The machine is shared and noisy: run it twice and believe the figures only to within ~20%.
"""

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGIONPROBE = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "regionprobe")
STAMP_SUITE = os.environ.get("STAMP_SUITE", "stamp-suite")
DURATION = float(os.environ.get("DURATION", "20"))
TICK = os.sysconf("SC_CLK_TCK")
children = []


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port(kind=socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(args, **kw):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    children.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def metrics(port):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def value(text, name, must=()):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(m in line for m in must):
                total += float(line.rsplit(" ", 1)[1])
    return total


def wait_http(port):
    for _ in range(200):
        try:
            return metrics(port)
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing answers on port {port}")


def request(seq):
    p = bytearray(44)
    p[0:4] = struct.pack(">I", seq)
    p[12:14] = b"\x20\x01"
    return bytes(p)


def blast(port, seconds):
    """Sends as fast as possible from 8 sockets, reading replies; returns replies received."""
    socks = []
    for _ in range(8):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    packet = request(0)
    replies = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for s in socks:
            for _ in range(16):
                try:
                    s.sendto(packet, ("127.0.0.1", port))
                except BlockingIOError:
                    break
            while True:
                try:
                    s.recv(256)
                    replies += 1
                except BlockingIOError:
                    break
    time.sleep(0.2)
    for s in socks:
        while True:
            try:
                s.recv(256)
                replies += 1
            except BlockingIOError:
                break
        s.close()
    return replies


def reflector_capacity(name, proc, port):
    time.sleep(1)
    before = cpu_seconds(proc.pid)
    replies = blast(port, DURATION)
    cpu = cpu_seconds(proc.pid) - before
    rate = replies / DURATION
    per_core = replies / cpu if cpu > 0 else float("nan")
    return f"| {name} | {rate:,.0f} | {cpu:.2f} | {per_core:,.0f} |"


def main():
    work = tempfile.mkdtemp(prefix="regionprobe-bench-stamp-")
    rows = []
    try:
        # ---- reflector capacity
        port = free_port()
        http = free_port(socket.SOCK_STREAM)
        cfg = os.path.join(work, "reflector.toml")
        with open(cfg, "w") as f:
            f.write(f'[exporter]\nregion = "r"\nlisten = "127.0.0.1:{http}"\nallow_empty = true\n'
                    f'[reflector]\nlisten = "127.0.0.1:{port}"\nrate_limit = 10000000\n'
                    '[[reflector.allow]]\nnetwork = "127.0.0.1/32"\nregion = "s"\n')
        ours = start([REGIONPROBE, "--config", cfg])
        wait_http(http)
        rows.append(reflector_capacity("regionprobe", ours, port))
        stop(ours)
        port = free_port()
        theirs = start([STAMP_SUITE, "-i", "-S", "127.0.0.1", "-o", str(port), "--stateful-reflector"])
        rows.append(reflector_capacity("stamp-suite", theirs, port))
        stop(theirs)
        print(f"Reflector capacity, {DURATION:.0f} s of unauthenticated 44-byte requests from one Python generator")
        print("| reflector | reflected/s | reflector CPU s | reflected per CPU-second |")
        print("|---|---|---|---|")
        print("\n".join(rows))

        # ---- sender CPU per packet, both against stamp-suite's reflector
        port = free_port()
        reflector = start([STAMP_SUITE, "-i", "-S", "127.0.0.1", "-o", str(port), "--stateful-reflector"])
        time.sleep(0.5)
        sender_rows = []
        for train, interval in [(100, "100ms"), (10, "10ms")]:
            http = free_port(socket.SOCK_STREAM)
            cfg = os.path.join(work, "sender.toml")
            with open(cfg, "w") as f:
                f.write(f'[exporter]\nregion = "s"\nlisten = "127.0.0.1:{http}"\n'
                        f'[[target]]\nname = "r"\nregion = "r"\nprobe = "stamp"\naddress = "127.0.0.1:{port}"\n'
                        f'interval = "{interval}"\ntimeout = "{interval}"\ntrain = {train}\n')
            sender = start([REGIONPROBE, "--config", cfg])
            wait_http(http)
            time.sleep(2)
            before_cpu = cpu_seconds(sender.pid)
            before = value(metrics(http), "regionprobe_stamp_packets_total")
            time.sleep(DURATION)
            cpu = cpu_seconds(sender.pid) - before_cpu
            text = metrics(http)
            packets = value(text, "regionprobe_stamp_packets_total") - before
            lost = value(text, "regionprobe_stamp_lost_packets_total")
            stop(sender)
            sender_rows.append(f"| regionprobe (train {train} / {interval}) | {packets:,.0f} | {cpu:.2f} | {cpu / packets * 1e6:.1f} | {lost:.0f} |")
        count = int(DURATION * 1000)
        t0 = os.times()
        out = subprocess.run([STAMP_SUITE, "-r", "127.0.0.1", "-p", str(port), "-S", "127.0.0.1",
                              "-c", str(count), "-d", "1ms", "--output-format", "json"],
                             capture_output=True, text=True)
        t1 = os.times()
        cpu = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
        summary = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
        summary = [s for s in summary if s.get("type") == "summary"]
        received = summary[-1]["packets_received"] if summary else float("nan")
        sender_rows.append(f"| stamp-suite (-d 1ms) | {count:,} | {cpu:.2f} | {cpu / count * 1e6:.1f} | {count - received} |")
        stop(reflector)
        print()
        print(f"Sender CPU per packet, 1,000 packets/s for {DURATION:.0f} s to stamp-suite's reflector")
        print("| sender | packets | sender CPU s | CPU us/packet | lost |")
        print("|---|---|---|---|---|")
        print("\n".join(sender_rows))
    finally:
        for p in children:
            stop(p)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
