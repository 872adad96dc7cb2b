#!/usr/bin/env python3
"""Load for ftpgate's fault suite, run inside a client namespace.

  loadgen.py churn --host H --port P --seconds S --workers N --file NAME --sha256 HEX
      N threads log in, download NAME in passive mode (PASV or EPSV, alternating) and check
      its SHA-256, and quit, again and again for S seconds. Prints one JSON line:
      {"sessions": n, "failures": n, "first_failure": "..."}.
  loadgen.py flood --host H --port P --clients N --wait S
      N control connections at once; each reads its first reply within S seconds. Prints
      {"greeted": n, "refused": n, "silent": n}, holds them for a moment, then closes all.
  loadgen.py stor --host H --port P --name NAME --size BYTES --rate BYTES_PER_S
      An upload in passive mode, paced; whatever happens to the data connection, reads the
      server's (or the gateway's) final reply to STOR. Prints {"sent": n, "error": "...",
      "reply": "..."}: what a client that believes its control channel is told.
"""
import argparse
import ftplib
import hashlib
import json
import socket
import threading
import time


def churn(args):
    stop = time.time() + args.seconds
    lock = threading.Lock()
    counts = {"sessions": 0, "failures": 0, "first_failure": ""}

    def worker(n):
        while time.time() < stop:
            try:
                ftp = ftplib.FTP(timeout=20)
                ftp.connect(args.host, args.port)
                ftp.login("anonymous", "churn@")
                ftp.af = socket.AF_INET6 if n % 2 else socket.AF_INET  # EPSV, PASV
                digest = hashlib.sha256()
                ftp.retrbinary("RETR " + args.file, digest.update)
                ftp.quit()
                ok = digest.hexdigest() == args.sha256
                why = "" if ok else "SHA-256 mismatch"
            except (OSError, ftplib.Error, EOFError) as e:
                ok, why = False, repr(e)[:200]
            with lock:
                counts["sessions"] += 1
                if not ok:
                    counts["failures"] += 1
                    counts["first_failure"] = counts["first_failure"] or why

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(counts), flush=True)


def flood(args):
    socks, replies = [], {}
    lock = threading.Lock()

    def one(i):
        try:
            s = socket.create_connection((args.host, args.port), timeout=args.wait)
        except OSError as e:
            with lock:
                replies[i] = "connect:" + e.__class__.__name__
            return
        with lock:
            socks.append(s)
        try:
            replies[i] = s.recv(256)[:3].decode(errors="replace") or "closed"
        except OSError:
            replies[i] = "silent"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(args.clients)]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary = {"greeted": 0, "refused": 0, "silent": 0, "other": 0,
               "seconds": round(time.time() - started, 2)}
    for r in replies.values():
        key = {"220": "greeted", "421": "refused", "silent": "silent"}.get(r, "other")
        summary[key] += 1
    print(json.dumps(summary), flush=True)
    time.sleep(0.5)
    for s in socks:
        s.close()


def stor(args):
    ftp = ftplib.FTP(timeout=30)
    ftp.connect(args.host, args.port)
    ftp.login("anonymous", "stor@")
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR " + args.name)
    sent, error = 0, ""
    block = b"x" * 65536
    started = time.time()
    try:
        while sent < args.size:
            conn.sendall(block)
            sent += len(block)
            time.sleep(max(0.0, sent / args.rate - (time.time() - started)))
        conn.close()
    except OSError as e:
        error = repr(e)[:120]
        conn.close()
    try:
        reply = ftp.getline()
        if reply[3:4] == "-":  # a multi-line reply: its last line has the code and a space
            while not reply.startswith(reply[:3] + " "):
                reply = ftp.getline()
    except (OSError, EOFError) as e:
        reply = "no reply: " + repr(e)[:80]
    print(json.dumps({"sent": sent, "error": error, "reply": reply}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("churn")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--seconds", type=float, required=True)
    c.add_argument("--workers", type=int, default=8)
    c.add_argument("--file", required=True)
    c.add_argument("--sha256", required=True)
    f = sub.add_parser("flood")
    f.add_argument("--host", required=True)
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--clients", type=int, required=True)
    f.add_argument("--wait", type=float, default=5)
    s = sub.add_parser("stor")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--rate", type=float, required=True)
    args = ap.parse_args()
    {"churn": churn, "flood": flood, "stor": stor}[args.what](args)


if __name__ == "__main__":
    main()
