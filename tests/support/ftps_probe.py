#!/usr/bin/env python3
"""FTPS probes for tests/ftps.rs: clients that do what curl and lftp never do.

  ftps_probe.py inject   HOST PORT CA          AUTH TLS with a command behind it in clear
  ftps_probe.py truncate HOST PORT CA NAME     a STOR whose TLS stream is cut (no close_notify)
  ftps_probe.py noreuse  HOST PORT CA NAME     RETR over a data connection that does not
                                               resume the control session (ftplib's way)
  ftps_probe.py plain    HOST PORT             plain text on the implicit FTPS port

Each prints one line of what it saw and exits 0 when the exchange itself could be made.
"""
import ftplib
import socket
import ssl
import sys


def context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    return ctx


def reply(f):
    """One (possibly multi-line) reply from a file object."""
    line = f.readline().decode(errors="replace")
    text = line
    if line[3:4] == "-":
        while not (line[:3] == text[:3] and line[3:4] == " "):
            line = f.readline().decode(errors="replace")
            text += line
    return text.strip()


def inject(host, port, ca):
    s = socket.create_connection((host, port), 10)
    f = s.makefile("rb")
    reply(f)
    # The DELE rides in the same segment as AUTH, in clear: it must never run.
    s.sendall(b"AUTH TLS\r\nDELE victim.txt\r\n")
    print("AUTH:", reply(f))
    t = context(ca).wrap_socket(s, server_hostname=host)
    tf = t.makefile("rb")
    t.sendall(b"USER anonymous\r\n")
    print("USER:", reply(tf))
    t.sendall(b"PASS x@\r\n")
    print("PASS:", reply(tf))
    t.sendall(b"QUIT\r\n")
    print("QUIT:", reply(tf))


class ResumingFTP(ftplib.FTP_TLS):
    """ftplib that resumes the control connection's TLS session on data connections, as
    curl and lftp do (plain ftplib does not)."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


def truncate(host, port, ca, name):
    f = ResumingFTP(context=context(ca), timeout=20)
    f.connect(host, port)
    f.login()
    f.prot_p()
    f.voidcmd("TYPE I")
    conn, _ = f.ntransfercmd("STOR " + name)
    conn.sendall(b"x" * 300000)
    # Close the TCP connection under TLS without close_notify: a cut upload.
    raw = socket.socket(fileno=conn.detach())
    raw.close()
    print("STOR:", reply_of(f))


def reply_of(f):
    try:
        return f.getresp()
    except ftplib.all_errors as e:
        return str(e)


def noreuse(host, port, ca, name):
    f = ftplib.FTP_TLS(context=context(ca), timeout=20)
    f.connect(host, port)
    f.login()
    f.prot_p()
    try:
        data = []
        f.retrbinary("RETR " + name, data.append)
        print("RETR: ok", sum(map(len, data)))
    except (ftplib.all_errors + (ssl.SSLError, ConnectionError)) as e:
        print("RETR: failed", e)


def plain(host, port):
    s = socket.create_connection((host, port), 10)
    s.sendall(b"USER anonymous\r\n")
    s.settimeout(10)
    try:
        got = s.recv(100)
    except OSError as e:
        got = ("error %s" % e).encode()
    print("got:", got)


def main():
    cmd, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "inject":
        inject(host, port, sys.argv[4])
    elif cmd == "truncate":
        truncate(host, port, sys.argv[4], sys.argv[5])
    elif cmd == "noreuse":
        noreuse(host, port, sys.argv[4], sys.argv[5])
    elif cmd == "plain":
        plain(host, port)
    else:
        sys.exit("unknown probe " + cmd)


if __name__ == "__main__":
    main()
