#!/usr/bin/env python3
"""The kernel data path (`relay: kernel`) in network namespaces (needs root).

The router loads the shipped rule files (forward chain on drop, accepting only flows with
ftpgate's conntrack mark) and runs ftpgate with the shipped publish and outbound configs.
- Security: a recording FTP server (tests/support/probe.py) accepts *every* data
  connection that reaches it, so what reaches it is what the kernel mapping let through:
  another IP, a second connection, a replaced PASV, the timeout, ABOR, REIN, the end of
  the session, a server impostor in active mode, and a SIGKILLed and restarted ftpgate.
- Bypass: a 256 MiB download (SHA-256 checked) costs ftpgate almost no CPU, and
  `conntrack -L` shows the DNATed, marked flow while it runs; the transfer log has the
  exact byte count and `path="kernel"`, the metrics count it.
- pure-ftpd answers curl's active LIST with the listing and 226 at once: 20 in a row.
- Without CAP_NET_ADMIN, `relay: kernel` refuses to start and says why.
Exit status 0 when every check passed.
"""
import os
import re
import signal
import sys
import tempfile
import time

import lab

PROBE = os.path.join(lab.SUPPORT, "probe.py")
MARK = "0x46470000/0xffff0000"


def config_with(path, work, name, **changes):
    """The shipped config PATH with top-level limits changed, written into WORK."""
    with open(os.path.join(lab.REPO, path)) as f:
        text = f.read()
    for key, value in changes.items():
        text = re.sub(r"(?m)^(  %s:).*$" % key, r"\1 %s" % value, text)
        if "  %s:" % key not in text:
            text = text.replace("limits:\n", "limits:\n  %s: %s\n" % (key, value), 1)
    out = os.path.join(work, name)
    with open(out, "w") as f:
        f.write(text)
    return out


class Lab:
    def __init__(self, topo, binary):
        self.topo, self.binary = topo, binary
        self.results = []

    def check(self, name, ok, detail=""):
        self.results.append(bool(ok))
        print("%-4s %-62s %s" % ("ok" if ok else "FAIL", name, detail), flush=True)

    def connects(self, where, to, port, source=None, wait=2.0):
        cmd = ["python3", PROBE, "connect", "--to", to, "--port", str(port), "--wait", str(wait)]
        if source:
            cmd += ["--source", source]
        return self.topo.run(where, cmd, capture_output=True).returncode == 0


class ProbeClient:
    """probe.py client: a control connection driven from here."""

    def __init__(self, topo, where, host, port=21):
        self.p = topo.spawn_capture_io(where, ["python3", PROBE, "client", "--host", host,
                                               "--port", str(port)])

    def ask(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def passive(self):
        reply = self.ask("cmd PASV")
        nums = re.search(r"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", reply)
        if not nums:
            raise RuntimeError("no 227: %r" % reply)
        n = [int(x) for x in nums.groups()]
        return "%d.%d.%d.%d" % tuple(n[:4]), n[4] * 256 + n[5]

    def close(self):
        self.ask("close")
        self.p.stdin.close()
        self.p.wait(5)


def security(lab_, work):
    """The mapping admits the expected peer once, and nothing else."""
    topo = lab_.topo
    log = os.path.join(work, "probe-accepted.log")
    open(log, "w").close()
    server = topo.spawn_capture_io("dmz", ["python3", PROBE, "server", "--host", "10.0.1.10",
                                           "--log", log])
    server.stdout.readline()
    # An intruder on the internet, and an impostor beside the server in the DMZ.
    topo.run("inet", ["ip", "addr", "add", "203.0.113.20/24", "dev", "eth0"], check=True)
    topo.run("dmz", ["ip", "addr", "add", "10.0.1.20/24", "dev", "eth0"], check=True)
    config = config_with("config/publish.yaml", work, "publish-kernel.yaml",
                         data_accept_timeout="2s")
    topo.router_rules(files=["deploy/nftables/publish.nft"])
    gw = lab.Ftpgate(topo, lab_.binary, config, "security", "203.0.113.1:21")

    def accepted():
        with open(log) as f:
            return [line.split() for line in f if line.startswith("accepted ")]

    def reached(attempt):
        before = len(accepted())
        attempt()
        time.sleep(0.2)
        return accepted()[before:]

    c = ProbeClient(topo, "inet", "203.0.113.1")
    c.ask("cmd USER anonymous")
    c.ask("cmd PASS x")

    host, port = c.passive()
    got = reached(lambda: lab_.connects("inet", host, port, source="203.0.113.20"))
    lab_.check("PASV: a connection from another IP is not forwarded", not got, repr(got))
    got = reached(lambda: lab_.connects("inet", host, port, source="203.0.113.10"))
    lab_.check("PASV: the client's connection is forwarded, from server_side",
               len(got) == 1 and got[0][2] == "10.0.1.1", repr(got))
    got = reached(lambda: lab_.connects("inet", host, port, source="203.0.113.10"))
    lab_.check("PASV: a second connection to a used port is not forwarded", not got, repr(got))
    c.ask("cmd LIST")

    _, old = c.passive()
    _, new = c.passive()
    got = reached(lambda: lab_.connects("inet", host, old))
    lab_.check("PASV: the port a newer PASV replaced is not forwarded", not got, repr(got))
    got = reached(lambda: lab_.connects("inet", host, new))
    lab_.check("PASV: the newer PASV's port is forwarded", len(got) == 1, repr(got))
    c.ask("cmd LIST")

    _, port = c.passive()
    time.sleep(3)
    got = reached(lambda: lab_.connects("inet", host, port))
    lab_.check("PASV: no connection after data_accept_timeout (2 s)", not got, repr(got))

    for verb in ("ABOR", "REIN"):
        _, port = c.passive()
        c.ask("cmd " + verb)
        got = reached(lambda: lab_.connects("inet", host, port))
        lab_.check("PASV: no connection after %s" % verb, not got, repr(got))
        if verb == "REIN":
            c.ask("cmd USER anonymous")
            c.ask("cmd PASS x")

    # Active mode: only the server's own address may reach the client's listener.
    listen_port = int(c.ask("listen 203.0.113.10"))
    c.ask("cmd PORT 203,0,113,10,%d,%d" % (listen_port >> 8, listen_port & 255))
    with open(log) as f:
        announced = int([line for line in f if line.startswith("port ")][-1].split()[-1])
    lab_.connects("dmz", "10.0.1.1", announced, source="10.0.1.20")
    time.sleep(0.2)
    lab_.check("PORT: a connection from another DMZ host is not forwarded",
               c.ask("accepted") == "0")
    c.ask("cmd LIST")
    time.sleep(0.2)
    lab_.check("PORT: the server's connection is forwarded", c.ask("accepted") == "1")
    lab_.connects("dmz", "10.0.1.1", announced, source="10.0.1.10")
    time.sleep(0.2)
    lab_.check("PORT: a second connection from the server is not forwarded",
               c.ask("accepted") == "1")

    _, port = c.passive()
    c.close()
    time.sleep(0.3)
    got = reached(lambda: lab_.connects("inet", host, port))
    lab_.check("PASV: no connection after the session ended", not got, repr(got))

    c = ProbeClient(topo, "inet", "203.0.113.1")
    c.ask("cmd USER anonymous")
    c.ask("cmd PASS x")
    _, port = c.passive()
    topo.stop(gw.proc, signal.SIGKILL)
    left = topo.run("rtr", ["nft", "list", "table", "inet", "ftpgate"], capture_output=True,
                    text=True).stdout
    gw = lab.Ftpgate(topo, lab_.binary, config, "security-restarted", "203.0.113.1:21")
    got = reached(lambda: lab_.connects("inet", host, port))
    lab_.check("SIGKILL, restart: the stale mapping forwards nothing",
               "elements" in left and not got,
               "the killed process left its mapping behind; after the restart: %r" % got)
    gw.stop()
    tables = topo.run("rtr", ["nft", "list", "tables"], capture_output=True, text=True).stdout
    lab_.check("SIGTERM: ftpgate removes its table", "table inet ftpgate" not in
               tables.splitlines(), " ".join(tables.split()))
    topo.stop(server)


def bypass(lab_, work):
    """A 256 MiB download through the outbound role: the bytes never enter ftpgate."""
    topo = lab_.topo
    size = 256 * 1024 * 1024
    server = lab.Vsftpd(topo, "inet", "203.0.113.10")
    big_sha = server.add_file("big.bin", size)
    topo.router_rules(files=["deploy/nftables/outbound.nft"])
    gw = lab.Ftpgate(topo, lab_.binary, "config/outbound.yaml", "bypass", "10.0.0.1:2121")
    pid = gw.proc.pid

    def cpu():
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    got = os.path.join(work, "big.bin")
    before = cpu()
    curl = topo.spawn("lan", ["curl", "-sS", "--ftp-pasv", "--limit-rate", "64M", "-o", got,
                              "ftp://anonymous:x@203.0.113.10/big.bin"], "curl-big.log")
    time.sleep(1.5)
    flows = topo.run("rtr", ["conntrack", "-L", "--mark", MARK], capture_output=True,
                     text=True).stdout
    curl.wait(120)
    used = cpu() - before
    data = [line for line in flows.splitlines()
            if "ESTABLISHED" in line and "dst=203.0.113.10" in line and "dport=21 " not in line]
    lab_.check("conntrack -L shows the marked, DNATed data flow", len(data) == 1,
               data[0] if data else flows.strip() or "no marked flow")
    ok = curl.returncode == 0 and lab.sha256_file(got) == big_sha
    lab_.check("256 MiB download through the kernel path: SHA-256", ok,
               "curl exit %s" % curl.returncode)
    lab_.check("ftpgate's CPU for 256 MiB stays under 0.05 s", used < 0.05, "%.3f s" % used)
    time.sleep(0.5)
    samples = lab.scrape(topo, "http://127.0.0.1:9464/metrics")
    channels = lab.metric(samples, "ftpgate_data_channels_total", path="kernel", outcome="ok")
    relayed = lab.metric(samples, "ftpgate_relayed_bytes_total", direction="to_client")
    lab_.check("metrics: kernel channels and their bytes",
               channels == 1 and relayed is not None and relayed >= size,
               "channels{path=kernel,outcome=ok}=%s relayed_bytes{to_client}=%s"
               % (channels, relayed))
    gw.stop()
    with open(gw.log, errors="replace") as f:
        lines = [line for line in f if "ftpgate::transfer" in line]
    lab_.check("the transfer log has the exact byte count and path=kernel",
               any('path="kernel" bytes=%d ' % size in line and "complete" in line
                   for line in lines), lines[-1].strip() if lines else "no transfer line")
    server.stop()


def short_listings(lab_, work):
    """pure-ftpd sends a short listing and its 226 at once; curl in active mode must
    still get the listing every time on the kernel path (nothing is gated there)."""
    topo = lab_.topo
    server = lab.PureFtpd(topo, "dmz", "10.0.1.10")
    topo.router_rules(files=["deploy/nftables/publish.nft"])
    gw = lab.Ftpgate(topo, lab_.binary, "config/publish.yaml", "short", "203.0.113.1:21")
    good = 0
    for _ in range(20):
        r = topo.run("inet", ["curl", "-sS", "--max-time", "10", "--ftp-port", "203.0.113.10",
                              "ftp://anonymous:x@203.0.113.1/"], capture_output=True, text=True)
        good += r.returncode == 0 and "down.bin" in r.stdout
    lab_.check("pure-ftpd + curl active LIST on the kernel path, 20 times", good == 20,
               "%d of 20 listings complete" % good)
    gw.stop()
    server.stop()


def unprivileged(lab_, work):
    """Without CAP_NET_ADMIN the kernel path cannot start, and says so."""
    r = lab_.topo.run("rtr", ["setpriv", "--reuid", "65534", "--regid", "65534",
                              "--clear-groups", "--inh-caps=-all", lab_.binary, "run", "--config",
                              os.path.join(lab.REPO, "config/publish.yaml")],
                      capture_output=True, text=True, timeout=20)
    lab_.check("no CAP_NET_ADMIN: start-up fails naming it",
               r.returncode != 0 and "CAP_NET_ADMIN" in r.stderr,
               (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1])


def main():
    ap = lab.parser()
    args = ap.parse_args()
    lab.require_root_and_tools("kernel_path.py", ("conntrack", "setpriv"))
    work = tempfile.mkdtemp(prefix="ftpgate-kernel-")
    os.chmod(work, 0o755)
    topo = lab.Topology(work)
    lab_ = Lab(topo, os.path.abspath(args.ftpgate))
    try:
        topo.up()
        for part in (security, bypass, short_listings, unprivileged):
            part(lab_, work)
    finally:
        topo.down()
    sys.exit(lab.finish(work, lab_.results, args.keep, "kernel_path"))


if __name__ == "__main__":
    main()
