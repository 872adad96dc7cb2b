#!/usr/bin/env python3
"""Probes for the kernel data path's security tests, each run inside a namespace.

  probe.py server --host H --port P --log FILE
      A minimal FTP server that records every data connection it accepts: its PASV/EPSV
      listeners accept *every* connection (the gateway must be the one that admits only
      the first), each appended to FILE as "accepted <port> <peer ip>". RETR/LIST send a
      short text over the first connection (PASV) or to the PORT/EPRT address; each
      PORT/EPRT is logged as "port <ip> <port>". Anonymous.
  probe.py client --host H --port P
      A control connection driven line by line from stdin; prints one line per request:
        cmd <FTP command>   sends it, prints the final reply line (past any 1xx)
        listen <ip>         a listener for active mode: prints "<port>" (then use PORT)
        accepted            prints how many connections that listener accepted
        close               closes the control connection, prints "closed"
  probe.py connect --to IP --port P [--source IP] [--wait S]
      One data connection attempt; exit status 0 when it is established within S seconds,
      1 when it is refused or times out. (Only the probe server's log tells whether it
      reached the server.)
"""
import argparse
import socket
import sys
import threading
import time


def accept_all(listener, on_accept):
    def loop():
        while True:
            try:
                conn, peer = listener.accept()
            except OSError:
                return
            on_accept(conn, peer)
    threading.Thread(target=loop, daemon=True).start()


def server(args):
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    control = socket.create_server((args.host, args.port), family=family, reuse_port=True)
    log = open(args.log, "a", buffering=1)
    print("READY", flush=True)

    def session(conn):
        f = conn.makefile("rb")
        out = lambda line: conn.sendall(line.encode() + b"\r\n")
        out("220 probe ready")
        data = {"first": None, "port": None, "listener": None}
        got = threading.Event()

        def on_accept(c, peer):
            log.write("accepted %d %s\n" % (c.getsockname()[1], peer[0]))
            if data["first"] is None:
                data["first"] = c
                got.set()

        for raw in f:
            line = raw.decode(errors="replace").strip()
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb in ("PASV", "EPSV"):
                lst = socket.create_server((args.host, 0), family=family, backlog=16)
                data.update(listener=lst, first=None, port=None)
                got.clear()
                accept_all(lst, on_accept)
                port = lst.getsockname()[1]
                if verb == "PASV":
                    out("227 Entering Passive Mode (%s,%d,%d)"
                        % (args.host.replace(".", ","), port >> 8, port & 255))
                else:
                    out("229 Entering Extended Passive Mode (|||%d|)" % port)
            elif verb in ("PORT", "EPRT"):
                if verb == "PORT":
                    n = arg.split(",")
                    data["port"] = (".".join(n[:4]), int(n[4]) * 256 + int(n[5]))
                else:
                    _, _, host, port, _ = arg.split(arg[0])
                    data["port"] = (host, int(port))
                log.write("port %s %d\n" % data["port"])
                out("200 PORT ok")
            elif verb in ("LIST", "NLST", "RETR"):
                if data["port"]:
                    try:
                        c = socket.create_connection(data["port"], timeout=5)
                    except OSError:
                        out("425 cannot open data connection")
                        continue
                elif got.wait(5):
                    c = data["first"]
                else:
                    out("425 no data connection")
                    continue
                out("150 here it comes")
                c.sendall(b"probe data\r\n")
                c.close()
                out("226 done")
            elif verb == "ABOR":
                if data["listener"]:
                    data["listener"].close()
                out("226 aborted")
            elif verb == "USER":
                out("331 password")
            elif verb == "PASS":
                out("230 in")
            elif verb == "QUIT":
                out("221 bye")
                break
            else:
                out("200 ok")
        conn.close()

    while True:
        conn, _ = control.accept()
        threading.Thread(target=session, args=(conn,), daemon=True).start()


def client(args):
    ctl = socket.create_connection((args.host, args.port), timeout=10)
    replies = ctl.makefile("rb")

    def final_reply():
        while True:
            line = replies.readline().decode(errors="replace").rstrip("\r\n")
            if not line or (len(line) >= 4 and line[:3].isdigit() and line[3] == " "):
                return line

    final_reply()
    listener = {"sock": None, "count": 0}
    for request in sys.stdin:
        verb, _, arg = request.strip().partition(" ")
        if verb == "cmd":
            ctl.sendall(arg.encode() + b"\r\n")
            reply = final_reply()
            while reply.startswith("1"):
                reply = final_reply()
            print(reply, flush=True)
        elif verb == "listen":
            fam = socket.AF_INET6 if ":" in arg else socket.AF_INET
            lst = socket.create_server((arg, 0), family=fam, backlog=16)
            listener["sock"] = lst

            def on_accept(c, _peer):
                listener["count"] += 1
                c.close()
            accept_all(lst, on_accept)
            print(lst.getsockname()[1], flush=True)
        elif verb == "accepted":
            print(listener["count"], flush=True)
        elif verb == "close":
            ctl.close()
            print("closed", flush=True)


def connect(args):
    family = socket.AF_INET6 if ":" in args.to else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(args.wait)
    try:
        if args.source:
            s.bind((args.source, 0))
        s.connect((args.to, args.port))
        return 0
    except OSError as e:
        print("not connected: %s" % e, file=sys.stderr)
        return 1
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("server")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=21)
    p.add_argument("--log", required=True)
    p = sub.add_parser("client")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=21)
    p = sub.add_parser("connect")
    p.add_argument("--to", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--source")
    p.add_argument("--wait", type=float, default=2.0)
    args = ap.parse_args()
    if args.what == "server":
        server(args)
    elif args.what == "client":
        client(args)
    else:
        sys.exit(connect(args))


if __name__ == "__main__":
    main()
