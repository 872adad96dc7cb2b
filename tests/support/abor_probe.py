#!/usr/bin/env python3
"""ABOR as clients send it, for tests/abor.rs.

  abor_probe.py HOST PORT MODE FORM FILE [USER]

MODE is passive or active; FORM is `urgent` (RFC 959 §4.1.3 and BSD ftp(1): IAC IP in
band, IAC as TCP urgent data, DM ABOR in band) or `plain` (ABOR CR LF). The probe logs in
anonymously, starts RETR FILE, reads 256 KiB, sends ABOR, reads the data connection to its
end and the replies up to ABOR's own, then checks that the session still works (NOOP, and
a RETR of FILE read whole). Prints one JSON line:
{"replies": [codes after ABOR was sent, RETR's final reply first], "bytes": data bytes
read, "after": "ok" or what failed}.
"""
import json
import socket
import sys


def reply(f):
    line = f.readline().decode(errors="replace")
    code = line[:3]
    if line[3:4] == "-":
        while True:
            more = f.readline().decode(errors="replace")
            if not more or (more[:3] == code and more[3:4] == " "):
                break
    return int(code) if code.isdigit() else 0


def data_connection(ctrl, f, mode):
    if mode == "passive":
        ctrl.sendall(b"PASV\r\n")
        line = f.readline().decode()
        nums = line[line.index("(") + 1:line.index(")")].split(",")
        port = int(nums[4]) * 256 + int(nums[5])
        return socket.create_connection((ctrl.getpeername()[0], port), 10), None
    listener = socket.socket()
    listener.bind((ctrl.getsockname()[0], 0))
    listener.listen(1)
    host, port = listener.getsockname()
    ctrl.sendall(("PORT %s,%d,%d\r\n" % (host.replace(".", ","), port >> 8, port & 255)).encode())
    code = reply(f)
    if code != 200:
        raise SystemExit("PORT: %d" % code)
    return None, listener


def main():
    host, port, mode, form, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    user = sys.argv[6] if len(sys.argv) > 6 else "anonymous"
    ctrl = socket.create_connection((host, port), 10)
    ctrl.settimeout(20)
    f = ctrl.makefile("rb")
    reply(f)
    ctrl.sendall(("USER %s\r\n" % user).encode())
    reply(f)
    ctrl.sendall(b"PASS x@\r\n")
    reply(f)
    ctrl.sendall(b"TYPE I\r\n")
    reply(f)
    data, listener = data_connection(ctrl, f, mode)
    ctrl.sendall(("RETR %s\r\n" % name).encode())
    first = reply(f)
    if listener is not None:
        data, _ = listener.accept()
    data.settimeout(20)
    got = 0
    while got < 256 * 1024:
        chunk = data.recv(65536)
        if not chunk:
            break
        got += len(chunk)
    if form == "urgent":
        ctrl.sendall(b"\xff\xf4")
        ctrl.send(b"\xff", socket.MSG_OOB)
        ctrl.sendall(b"\xf2ABOR\r\n")
    else:
        ctrl.sendall(b"ABOR\r\n")
    # The data connection: read to its end (the server stops, or finishes).
    while True:
        try:
            chunk = data.recv(1 << 20)
        except OSError:
            break
        if not chunk:
            break
        got += len(chunk)
    data.close()
    codes = []
    # RETR's final reply (if it had not come before), then ABOR's.
    while len(codes) < 2:
        code = reply(f)
        if code == 0:
            break
        codes.append(code)
    after = "ok"
    ctrl.sendall(b"NOOP\r\n")
    noop = reply(f)
    if noop != 200:
        after = "NOOP: %d" % noop
    print(json.dumps({"first": first, "replies": codes, "bytes": got, "after": after}))


if __name__ == "__main__":
    main()
