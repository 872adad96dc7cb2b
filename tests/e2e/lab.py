"""A network-namespace lab for ftpgate's end-to-end tests (needs root).

Topology (every address lives only inside namespaces this module creates):

    lan 10.0.0.2 --eth0-- lan0 10.0.0.1 [ router ] wan0 203.0.113.1 --eth0-- inet 203.0.113.10
                                           dmz0 10.0.1.1 --eth0-- dmz 10.0.1.10

The internet host has no route to private space, as on the real internet. Servers
(vsftpd, pure-ftpd, pyftpdlib), clients (curl, lftp, Python ftplib) and ftpgate run inside
the namespaces; every transferred file is checked by SHA-256.
"""
import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUPPORT = os.path.join(REPO, "tests", "support")

DOWN_SIZE = 3 * 1024 * 1024 + 11
UP_SIZE = 2 * 1024 * 1024 + 5

# Each client namespace's own address (curl's "--ftp-port -" is unreliable in 7.88).
CLIENT_ADDRESS = {"lan": "10.0.0.2", "inet": "203.0.113.10", "lan6": "2001:db8:6::2"}

# The explicit role needs no rules; the forward chain is closed to prove it.
FORWARD_DROP_RULES = """
table inet closed {
    chain forward { type filter hook forward priority filter; policy drop; }
}
"""


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def random_file(path, size):
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return sha256_file(path)


def peer_binary(package, env):
    """An FTP server: $ENV, or unpacked by tests/run into target/peers (Debian's FTP server
    packages conflict, and installing one starts it), or installed on PATH."""
    unpacked = os.path.join(REPO, "target", "peers", package, "usr", "sbin", package)
    for path in (os.environ.get(env), unpacked, shutil.which(package)):
        if path and os.path.exists(path):
            return path
    return None


def pure_ftpd_binary():
    return peer_binary("pure-ftpd", "PURE_FTPD")


def vsftpd_binary():
    return peer_binary("vsftpd", "VSFTPD")


def missing_tools(extra=()):
    missing = [t for t in ("ip", "nft", "curl", "lftp", "python3", "ss", "prlimit") + tuple(extra)
               if shutil.which(t) is None]
    for name, binary in (("vsftpd", vsftpd_binary()), ("pure-ftpd", pure_ftpd_binary())):
        if binary is None:
            missing.append("%s (unpacked into target/peers by tests/run)" % name)
    probe = subprocess.run(["python3", "-c", "import pyftpdlib"], capture_output=True)
    if probe.returncode != 0:
        missing.append("pyftpdlib")
    return missing


def parser():
    """The arguments every lab takes (`--ftpgate`, `--keep`); a lab adds its own."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--ftpgate", required=True, help="path of the ftpgate binary")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    return ap


def require_root_and_tools(script, extra=()):
    """Exits, saying why, unless the lab can run here: root, and every tool it uses."""
    if os.geteuid() != 0:
        sys.exit("%s needs root (network namespaces, nftables)" % script)
    missing = missing_tools(extra)
    if missing:
        sys.exit("%s needs: %s (run tests/run)" % (script, ", ".join(missing)))


class Topology:
    def __init__(self, work):
        tag = "fg%d" % (os.getpid() % 100000)
        self.ns = {role: "%s-%s" % (tag, role)
                   for role in ("lan", "rtr", "inet", "dmz", "lan6")}
        self.work = work
        self.procs = []

    def ip(self, *args):
        subprocess.run(["ip", *args], check=True)

    def run(self, where, cmd, **kw):
        return subprocess.run(["ip", "netns", "exec", self.ns[where], *cmd], **kw)

    def up(self, policy_routing=True):
        for name in self.ns.values():
            self.ip("netns", "add", name)
            self.ip("-n", name, "link", "set", "lo", "up")
        rtr = self.ns["rtr"]
        # The router, the internet and the DMZ are dual-stack (IPv6 from the documentation
        # prefix); lan is IPv4-only and lan6 IPv6-only.
        for side, peer, rtr_addrs, peer_addrs in (
            ("lan0", "lan", ["10.0.0.1/24"], ["10.0.0.2/24"]),
            ("wan0", "inet", ["203.0.113.1/24", "2001:db8:b::1/64"],
             ["203.0.113.10/24", "2001:db8:b::10/64"]),
            ("dmz0", "dmz", ["10.0.1.1/24", "2001:db8:c::1/64"],
             ["10.0.1.10/24", "2001:db8:c::10/64"]),
            ("lan6", "lan6", ["2001:db8:6::1/64"], ["2001:db8:6::2/64"]),
        ):
            self.ip("link", "add", side, "netns", rtr, "type", "veth",
                    "peer", "name", "eth0", "netns", self.ns[peer])
            for ns, dev in ((rtr, side), (self.ns[peer], "eth0")):
                # No duplicate address detection: addresses are usable at once.
                self.ip("netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.%s.accept_dad=0" % dev)
            for addr in rtr_addrs:
                self.ip("-n", rtr, "addr", "add", addr, "dev", side, "nodad")
            self.ip("-n", rtr, "link", "set", side, "up")
            for addr in peer_addrs:
                self.ip("-n", self.ns[peer], "addr", "add", addr, "dev", "eth0", "nodad")
            self.ip("-n", self.ns[peer], "link", "set", "eth0", "up")
        self.ip("-n", self.ns["lan"], "route", "add", "default", "via", "10.0.0.1")
        self.ip("-n", self.ns["dmz"], "route", "add", "default", "via", "10.0.1.1")
        self.ip("-n", self.ns["dmz"], "-6", "route", "add", "default", "via", "2001:db8:c::1")
        self.ip("-n", self.ns["lan6"], "-6", "route", "add", "default", "via", "2001:db8:6::1")
        self.run("rtr", ["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        self.run("rtr", ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], check=True)
        if policy_routing:
            # What ftpgate installs at start for transparent sockets, here once for the
            # whole run: several gateways come and go, none of them owns it then.
            for family, local in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
                self.run("rtr", ["ip", family, "rule", "add", "fwmark", "1", "lookup", "100"],
                         check=True)
                self.run("rtr", ["ip", family, "route", "replace", "local", local, "dev", "lo",
                                 "table", "100"], check=True)

    def spawn(self, where, cmd, log_name):
        log = open(os.path.join(self.work, log_name), "ab")
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[where], *cmd],
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def spawn_capture(self, where, cmd):
        """Starts CMD in a namespace with its standard output piped back."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[where], *cmd],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def spawn_capture_io(self, where, cmd):
        """Starts CMD in a namespace with its standard input and output piped (text)."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[where], *cmd],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM):
        if p.poll() is None:
            os.killpg(p.pid, sig)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def router_rules(self, text=None, files=()):
        self.run("rtr", ["nft", "flush", "ruleset"], check=True)
        for f in files:
            self.run("rtr", ["nft", "-f", os.path.join(REPO, f)], check=True)
        if text:
            self.run("rtr", ["nft", "-f", "-"], input=text.encode(), check=True)

    def down(self):
        for p in self.procs:
            try:
                self.stop(p)
            except ProcessLookupError:
                pass
        for name in self.ns.values():
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in pids.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)


def finish(work, results, keep, name):
    """The end of a lab run: on failure (or with --keep) the logs stay and their tails are
    printed; the tally is printed; the exit status says whether every check passed."""
    failed = results.count(False)
    if failed or keep:
        print("logs kept in", work)
        for log in sorted(os.listdir(work)):
            if log.endswith(".log") and failed:
                with open(os.path.join(work, log), errors="replace") as f:
                    print("---- %s\n%s" % (log, f.read()[-3000:]))
    else:
        shutil.rmtree(work, ignore_errors=True)
    print("%s: %d passed, %d failed" % (name, results.count(True), failed))
    return 0 if results and all(results) else 1


def wait_port(topo, where, host, port, timeout=10):
    probe = ("import socket,sys\ntry:\n socket.create_connection((%r,%d),1)\n"
             "except OSError:\n sys.exit(1)" % (host, port))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if topo.run(where, ["python3", "-c", probe]).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("nothing listens on %s:%d in %s" % (host, port, where))


class Server:
    """An FTP server in a namespace serving ROOT: anonymous download of down.bin from the
    top, anonymous upload into upload/."""

    name = "?"

    def __init__(self, topo, where, address, port=21, args=()):
        self.topo, self.where, self.address, self.port = topo, where, address, port
        self.args = list(args)
        self.root = tempfile.mkdtemp(dir=topo.work, prefix="root-%s-%s-%d-" % (self.name, where, port))
        os.makedirs(os.path.join(self.root, "upload"))
        os.chmod(topo.work, 0o755)
        os.chmod(self.root, 0o755)
        shutil.chown(os.path.join(self.root, "upload"), "ftp", "ftp")
        self.down_sha = random_file(os.path.join(self.root, "down.bin"), DOWN_SIZE)
        os.chmod(os.path.join(self.root, "down.bin"), 0o644)
        self.proc = topo.spawn(where, self.command(), "%s-%s-%d.log" % (self.name, where, port))
        wait_port(topo, where, address, port)

    def command(self):
        raise NotImplementedError

    def stop(self, sig=signal.SIGTERM):
        self.topo.stop(self.proc, sig)

    def add_file(self, name, size):
        """A further world-readable random file; returns its SHA-256."""
        path = os.path.join(self.root, name)
        sha = random_file(path, size)
        os.chmod(path, 0o644)
        return sha


class Vsftpd(Server):
    name = "vsftpd"

    def command(self):
        empty = os.path.join(self.topo.work, "empty")
        os.makedirs(empty, exist_ok=True)
        conf = os.path.join(self.root + ".conf")
        with open(conf, "w") as f:
            f.write("\n".join([
                "listen=NO", "listen_ipv6=YES", "listen_address6=" + self.address,
            ] if ":" in self.address else [
                "listen=YES", "listen_ipv6=NO", "listen_address=" + self.address,
            ]) + "\n".join([
                "",
                "listen_port=%d" % self.port,
                "background=NO", "anonymous_enable=YES", "local_enable=NO",
                "write_enable=YES", "anon_upload_enable=YES", "anon_umask=022",
                "no_anon_password=YES", "anon_root=" + self.root,
                "pasv_enable=YES", "pasv_min_port=30000", "pasv_max_port=30999",
                "port_enable=YES", "connect_from_port_20=YES",
                "secure_chroot_dir=" + empty, "seccomp_sandbox=NO",
                "xferlog_enable=NO", "dirmessage_enable=NO", "hide_ids=YES",
                "vsftpd_log_file=" + os.path.join(self.topo.work, "vsftpd-%s.log" % self.where),
                "",
            ]))
        binary = vsftpd_binary()
        if binary is None:
            raise RuntimeError("vsftpd not found: run tests/run, which unpacks it into "
                               "target/peers (or set VSFTPD=/path/to/vsftpd)")
        return [binary, conf]


class PureFtpd(Server):
    """pure-ftpd serves anonymous users the ftp account's home: ROOT is bind-mounted over
    it inside the server's own mount namespace (ip netns exec makes one)."""

    name = "pure-ftpd"

    def command(self):
        home = subprocess.run(["getent", "passwd", "ftp"], capture_output=True,
                              text=True).stdout.split(":")[5]
        return ["sh", "-c", 'mount --bind "$1" "$2" && exec "$3" -S "$4,$5" -e -H -A -p 30000:30999',
                "pure-ftpd", self.root, home, pure_ftpd_binary(), self.address, str(self.port)]


class PyFtpd(Server):
    name = "pyftpdlib"

    def command(self):
        return ["python3", os.path.join(SUPPORT, "ftpserver.py"), "--host", self.address,
                "--port", str(self.port), "--root", self.root,
                "--passive-ports", "30000-30999"] + self.args


SERVERS = {cls.name: cls for cls in (Vsftpd, PureFtpd, PyFtpd)}


class Ftpgate:
    def __init__(self, topo, binary, config, name, listen):
        self.topo = topo
        self.log = os.path.join(topo.work, "ftpgate-%s.log" % name)
        self.proc = topo.spawn("rtr", [binary, "run", "--config", os.path.join(REPO, config)],
                               "ftpgate-%s.log" % name)
        host, port = listen.rsplit(":", 1)
        wait_port(topo, "rtr", host.strip("[]"), int(port))

    def stop(self):
        self.topo.stop(self.proc)
        return self.proc.returncode


class Client:
    """A client program and the data-connection command it must use."""

    def __init__(self, tool, mode):
        self.tool, self.mode = tool, mode

    @property
    def label(self):
        return "%s %s" % (self.tool, self.mode)

    def run(self, topo, path, down, got, up, remote_up, timeout):
        """LIST, RETR DOWN into GOT, STOR UP as REMOTE_UP; returns (ok, detail, listing)."""
        args = (topo, path, down, got, up, remote_up, timeout)
        try:
            if self.tool == "curl":
                return self._curl(*args)
            if self.tool == "lftp":
                return self._lftp(*args)
            return self._ftplib(*args)
        except subprocess.TimeoutExpired:
            return False, "timed out", ""

    def _curl(self, topo, path, down, got, up, remote_up, timeout):
        where = path.where
        mode_args = {
            "EPSV": ["--ftp-pasv"],
            "PASV": ["--ftp-pasv", "--disable-epsv"],
            "EPRT": ["--ftp-port", path.active],
            "PORT": ["--ftp-port", path.active, "--disable-eprt"],
        }[self.mode]
        base = "ftp://%s:guest@%s:%d/" % (urllib.parse.quote(path.user, safe=""),
                                          path.url_host, path.port)
        listing = ""
        for what, url, extra in (("LIST", base, []), ("RETR", base + down, ["-o", got]),
                                 ("STOR", base + remote_up, ["-T", up])):
            r = topo.run(where, ["curl", "-sS", "-v", "-g", "--max-time", str(timeout),
                                 "--connect-timeout", "5"] + mode_args + extra + [url],
                         capture_output=True, timeout=timeout + 10)
            log = r.stderr.decode(errors="replace")
            if r.returncode != 0:
                reason = failure_reason(log, "< ", "> ")
                if data_connection_failed(log):
                    reason = DATA_CONNECTION_FAILED + reason
                return False, "%s: %s" % (what, reason), ""
            if "> " + self.mode not in log:
                return False, "%s: curl did not use %s" % (what, self.mode), ""
            if what == "LIST":
                listing = r.stdout.decode(errors="replace")
        return True, "", listing

    def _lftp(self, topo, path, down, got, up, remote_up, timeout):
        settings = {
            "PASV": ["set ftp:passive-mode on", "set ftp:prefer-epsv no"],
            "EPSV": ["set ftp:passive-mode on", "set ftp:prefer-epsv yes"],
            "PORT": ["set ftp:passive-mode off"],
            # lftp sends EPRT by itself on IPv6 control connections.
            "EPRT": ["set ftp:passive-mode off"],
        }[self.mode]
        script = "; ".join([
            "set cmd:fail-exit yes", "set net:max-retries 1", "set net:timeout %d" % timeout,
            "set net:reconnect-interval-base 1",
        ] + settings + [
            "open -u '%s',guest -p %d ftp://%s" % (path.user, path.port, path.url_host),
            "cls -1", "get %s -o %s" % (down, got), "put %s -o %s" % (up, remote_up),
        ])
        r = topo.run(path.where, ["lftp", "-d", "-c", script], capture_output=True,
                     timeout=3 * timeout + 10)
        log = r.stderr.decode(errors="replace")
        if r.returncode != 0:
            return False, "lftp: " + failure_reason(log, "<--- ", "---> "), ""
        if "---> " + self.mode not in log:
            return False, "lftp did not use %s" % self.mode, ""
        return True, "", r.stdout.decode(errors="replace")

    def _ftplib(self, topo, path, down, got, up, remote_up, timeout):
        base = ["python3", os.path.join(SUPPORT, "ftpclient.py"), "--host", path.host, "--port",
                str(path.port), "--mode", self.mode, "--user", path.user,
                "--timeout", str(timeout)]
        listing = ""
        for what, op in (("LIST", ["list"]), ("RETR", ["get", down, got]),
                         ("STOR", ["put", up, remote_up])):
            r = topo.run(path.where, base + op, capture_output=True, timeout=timeout + 10)
            if r.returncode != 0:
                return False, "%s: %s" % (what, r.stderr.decode(errors="replace").strip()[-160:]), ""
            if what == "LIST":
                listing = r.stdout.decode(errors="replace")
        return True, "", listing


def failure_reason(log, reply_prefix, command_prefix):
    """The last command and reply of a client's debug log, for a one-line reason."""
    last_cmd = last_reply = ""
    for line in log.splitlines():
        line = line.strip()
        if line.startswith(command_prefix):
            last_cmd = line[len(command_prefix):]
        elif line.startswith(reply_prefix) and line[len(reply_prefix):][:1].isdigit():
            last_reply = line[len(reply_prefix):]
    tail = log.strip().splitlines()[-1] if log.strip() else ""
    return ("after '%s' got '%s'; %s" % (last_cmd, last_reply, tail))[:220]


# Marks a failure of the kind NAT causes (see data_connection_failed).
DATA_CONNECTION_FAILED = "data connection failed: "


def data_connection_failed(curl_log):
    """Whether a curl -v log shows the failure NAT causes: the control session works (login
    succeeded) but no transfer ever starts, because the data connection could not be set
    up: the server refused a private address in PORT ("500 Illegal PORT command"), the
    client could not reach the announced port, or the server could not reach the client."""
    logged_in = "< 230" in curl_log
    asked_for_data = any(c in curl_log for c in ("> PORT", "> EPRT", "> PASV", "> EPSV"))
    transfer_started = "< 150" in curl_log or "< 125" in curl_log
    return logged_in and asked_for_data and not transfer_started


class Path:
    """How a client reaches a server: from which namespace, to which host and port, with
    which user name; ACTIVE is the client's own address for PORT/EPRT (by default its
    namespace's IPv4 address)."""

    def __init__(self, where, host, port, user, active=None):
        self.where, self.host, self.port, self.user = where, host, port, user
        self.active = active or CLIENT_ADDRESS[where]

    @property
    def url_host(self):
        return "[%s]" % self.host if ":" in self.host else self.host


def run_cell(topo, tag, client, path, server, timeout=20, down=("down.bin", None)):
    """One cell: LIST, RETR of DOWN (name, SHA-256; default the server's down.bin), STOR
    of a fresh file; both checked by SHA-256."""
    down_name, down_sha = down[0], down[1] or server.down_sha
    up = os.path.join(topo.work, "up-%s.bin" % tag)
    up_sha = random_file(up, UP_SIZE)
    got = os.path.join(topo.work, "got-%s.bin" % tag)
    remote_up = "upload/up-%s.bin" % tag
    ok, detail, listing = client.run(topo, path, down_name, got, up, remote_up, timeout)
    if not ok:
        return False, detail
    if down_name not in listing:
        return False, "LIST lacks %s: %r" % (down_name, listing[:120])
    if sha256_file(got) != down_sha:
        return False, "RETR: SHA-256 mismatch"
    stored = os.path.join(server.root, remote_up)
    if not os.path.exists(stored) or sha256_file(stored) != up_sha:
        return False, "STOR: SHA-256 mismatch or missing"
    return True, "LIST, RETR %d B, STOR %d B: SHA-256 ok" % (os.path.getsize(got), UP_SIZE)


def scrape(topo, url="http://127.0.0.1:9464/metrics"):
    """ftpgate's metrics from inside the router: {(name, frozenset(labels)): value}."""
    text = topo.run("rtr", ["curl", "-s", url], capture_output=True, text=True).stdout
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        pairs = frozenset(tuple(kv.split("=", 1)) for kv in labels.rstrip("}").split(",") if kv)
        samples[(name, frozenset((k, v.strip('"')) for k, v in pairs))] = float(value)
    return samples


def metric(samples, name, **labels):
    """The sum of every sample of NAME whose labels include LABELS (None if there is none)."""
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]
    return sum(found) if found else None
