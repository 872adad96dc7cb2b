#!/usr/bin/env python3
"""A pyftpdlib FTP server for ftpgate's tests.

Prints "READY <port>" on stdout once it listens. Anonymous login (and user "user",
password "pass") may read and write ROOT.
"""
import argparse
import logging
import sys
import warnings

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--root", required=True)
    ap.add_argument("--passive-ports", help="first-last")
    ap.add_argument("--masquerade", help="address written into 227 replies")
    ap.add_argument("--permit-foreign", action="store_true",
                    help="accept PORT/EPRT naming another host (a permissive target)")
    ap.add_argument("--permit-privileged", action="store_true",
                    help="accept PORT/EPRT with ports below 1024")
    ap.add_argument("--disable", default="",
                    help="comma-separated commands to answer with 500 (e.g. EPSV,EPRT)")
    ap.add_argument("--max-cons", type=int, default=512,
                    help="most simultaneous connections (pyftpdlib's default: 512)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    # Anonymous write access is what these tests want.
    warnings.filterwarnings("ignore", message="write permissions assigned to anonymous")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        stream=sys.stderr)
    auth = DummyAuthorizer()
    auth.add_anonymous(args.root, perm="elradfmwMT")
    auth.add_user("user", "pass", args.root, perm="elradfmwMT")

    class Handler(FTPHandler):
        pass

    Handler.authorizer = auth
    Handler.banner = "pyftpdlib test server ready."
    Handler.permit_foreign_addresses = args.permit_foreign
    Handler.permit_privileged_ports = args.permit_privileged
    if args.passive_ports:
        first, last = (int(p) for p in args.passive_ports.split("-"))
        Handler.passive_ports = range(first, last + 1)
    if args.masquerade:
        Handler.masquerade_address = args.masquerade
    disabled = {c.strip().upper() for c in args.disable.split(",") if c.strip()}
    Handler.proto_cmds = {k: v for k, v in FTPHandler.proto_cmds.items() if k not in disabled}

    server = FTPServer((args.host, args.port), Handler)
    server.max_cons = args.max_cons
    print("READY", server.socket.getsockname()[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
