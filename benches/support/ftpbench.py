#!/usr/bin/env python3
"""Client side of ftpgate's benchmark (run inside a namespace by benches/netns_bench.py).

  ftpbench.py latency HOST PORT USER MODE N FILE   PASV|PORT -> first byte, N times
  ftpbench.py idle HOST PORT USER N                hold N logged-in control sessions
  ftpbench.py many HOST PORT USER MANIFEST         all files of MANIFEST at once (PASV)

Prints one JSON object on stdout.
"""
import asyncio
import hashlib
import json
import resource
import socket
import sys
import time


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Control:
    """A blocking control connection."""

    def __init__(self, host, port, user):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.reply()
        self.cmd("USER " + user)
        self.cmd("PASS bench@")
        self.cmd("TYPE I")

    def reply(self):
        line = self.file.readline()
        code = line[:3]
        if line[3:4] == b"-":
            while True:
                more = self.file.readline()
                if more[:3] == code and more[3:4] == b" ":
                    break
        return line.decode(errors="replace")

    def send(self, line):
        self.sock.sendall(line.encode() + b"\r\n")

    def cmd(self, line):
        self.send(line)
        return self.reply()


def latency(host, port, user, mode, n, name):
    c = Control(host, port, user)
    peer = c.sock.getpeername()[0]
    local = c.sock.getsockname()[0]
    samples = []
    for _ in range(n):
        if mode == "PASV":
            t0 = time.perf_counter()
            r = c.cmd("PASV")
            nums = r[r.index("(") + 1:r.index(")")].split(",")
            data = socket.create_connection((peer, int(nums[4]) * 256 + int(nums[5])))
            c.send("RETR " + name)
            data.recv(1)
            t1 = time.perf_counter()
        else:
            listener = socket.create_server((local, 0), backlog=1)
            listener.settimeout(10)
            p = listener.getsockname()[1]
            t0 = time.perf_counter()
            c.cmd("PORT %s,%d,%d" % (local.replace(".", ","), p >> 8, p & 255))
            c.send("RETR " + name)
            try:
                data, _ = listener.accept()
            except socket.timeout:
                raise RuntimeError("transfer %d: no data connection; the server said %r"
                                   % (len(samples), c.reply()))
            data.recv(1)
            t1 = time.perf_counter()
            listener.close()
        while data.recv(65536):
            pass
        data.close()
        c.reply()  # 150
        c.reply()  # 226
        samples.append(t1 - t0)
    return {"samples_ms": [t * 1000 for t in samples]}


async def idle(host, port, user, n):
    held = []
    failed = 0
    sem = asyncio.Semaphore(200)

    async def one():
        nonlocal failed
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
                greeting = await asyncio.wait_for(r.readline(), 30)
                if not greeting.startswith(b"220"):
                    raise OSError(greeting)
                held.append((r, w))
            except (OSError, asyncio.TimeoutError):
                failed += 1

    await asyncio.gather(*(one() for _ in range(n)))
    print(json.dumps({"held": len(held), "failed": failed}), flush=True)
    await asyncio.sleep(3600)


async def many(host, port, user, manifest):
    with open(manifest) as f:
        files = json.load(f)

    async def line(r):
        first = await r.readline()
        if first[3:4] == b"-":
            while True:
                more = await r.readline()
                if more[:3] == first[:3] and more[3:4] == b" ":
                    break
        return first

    async def one(name, sha):
        r, w = await asyncio.open_connection(host, port)
        await line(r)
        for cmd in ("USER " + user, "PASS bench@", "TYPE I", "PASV"):
            w.write(cmd.encode() + b"\r\n")
            reply = await line(r)
        text = reply.decode()
        nums = text[text.index("(") + 1:text.index(")")].split(",")
        peer = w.get_extra_info("peername")[0]
        dr, dw = await asyncio.open_connection(peer, int(nums[4]) * 256 + int(nums[5]))
        w.write(b"RETR " + name.encode() + b"\r\n")
        body = await dr.read()
        dw.close()
        await line(r)
        done = await line(r)
        w.write(b"QUIT\r\n")
        w.close()
        return hashlib.sha256(body).hexdigest() == sha and done.startswith(b"226")

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(n, s) for n, s in files.items()),
                                   return_exceptions=True)
    elapsed = time.perf_counter() - t0
    ok = sum(1 for r in results if r is True)
    return {"transfers": len(files), "ok": ok, "corrupt_or_failed": len(files) - ok,
            "seconds": elapsed}


def main():
    raise_fd_limit()
    what, host, port, user = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if what == "latency":
        out = latency(host, port, user, sys.argv[5], int(sys.argv[6]), sys.argv[7])
    elif what == "idle":
        asyncio.run(idle(host, port, user, int(sys.argv[5])))
        return
    else:
        out = asyncio.run(many(host, port, user, sys.argv[5]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
