#!/usr/bin/env python3
"""An ftplib client for ftpgate's tests that uses exactly the data mode it is told.

  ftpclient.py --host H --port P --mode PASV|EPSV|PORT|EPRT [--user U --password W] OP...
  OP: get REMOTE LOCAL | put LOCAL REMOTE | list

Prints a listing for "list"; exits non-zero with the error on stderr on failure.
"""
import argparse
import ftplib
import socket
import sys


class Client(ftplib.FTP):
    def __init__(self, mode, timeout):
        super().__init__(timeout=timeout)
        self.mode = mode
        self.set_pasv(mode in ("PASV", "EPSV"))

    def makepasv(self):
        peer = self.sock.getpeername()
        if self.mode == "EPSV":
            return ftplib.parse229(self.sendcmd("EPSV"), peer)
        _, port = ftplib.parse227(self.sendcmd("PASV"))
        # As ftplib does by default: trust the control peer, not the address in the 227.
        return peer[0], port

    def makeport(self):
        sock = socket.create_server(("", 0), family=self.af, backlog=1)
        host = self.sock.getsockname()[0]
        port = sock.getsockname()[1]
        if self.mode == "EPRT":
            self.sendeprt(host, port)
        else:
            self.sendport(host, port)
        sock.settimeout(self.timeout)
        return sock


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["PASV", "EPSV", "PORT", "EPRT"], required=True)
    ap.add_argument("--user", default="anonymous")
    ap.add_argument("--password", default="test@")
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("op", nargs="+")
    args = ap.parse_args()

    ftp = Client(args.mode, args.timeout)
    ftp.connect(args.host, args.port)
    ftp.login(args.user, args.password)
    op = args.op
    if op[0] == "get":
        with open(op[2], "wb") as f:
            ftp.retrbinary("RETR " + op[1], f.write)
    elif op[0] == "put":
        with open(op[1], "rb") as f:
            ftp.storbinary("STOR " + op[2], f)
    elif op[0] == "list":
        lines = []
        ftp.retrlines("LIST", lines.append)
        print("\n".join(lines))
    else:
        sys.exit("unknown op " + op[0])
    ftp.quit()


if __name__ == "__main__":
    try:
        main()
    except (ftplib.Error, OSError, EOFError) as e:
        sys.exit("ftpclient: %s: %s" % (type(e).__name__, e))
