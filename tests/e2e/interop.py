#!/usr/bin/env python3
"""Interop matrix: ftpgate and the kernel's FTP helper, side by side (needs root).

Roles {outbound transparent, publish, explicit user@host} x servers {vsftpd, pure-ftpd,
pyftpdlib} x clients {curl EPSV/PASV/EPRT/PORT, lftp PASV/PORT/EPSV, Python ftplib
PASV/PORT}; each cell does LIST, RETR of a 3 MiB random file and STOR of a 2 MiB one,
both checked by SHA-256. Outbound and publish run twice: with the shipped config
(`relay: kernel`, the kernel forwards the data connections) and with `relay: splice`. The same cells run through the kernel helper (nf_conntrack_ftp +
nf_nat_ftp attached with `ct helper set`, forward chain allowing related) where the role
exists for it. Then, through ftpgate only: 40 parallel transfers per role in mixed modes
with distinct files, and faults (a server killed and a client killed mid-transfer) after
which every other session must finish intact and every data port must be back in the pool.

Exit status 0 when every ftpgate cell and check passed; kernel cells are recorded, not
judged. --write-doc FILE puts the table into FILE between the matrix markers.
"""
import concurrent.futures
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import lab

# The kernel's helper as a router uses it since Linux 6.0: attached explicitly with
# `ct helper set`, NAT by masquerade (outbound) and DNAT (publish), related data allowed.
KERNEL_RULES = """
table inet kernel_ftp_helper {
    ct helper ftp_std { type "ftp" protocol tcp; }
    chain helper {
        type filter hook prerouting priority filter; policy accept;
        iifname { "lan0", "wan0" } tcp dport 21 ct helper set "ftp_std"
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" tcp dport 21 accept
        ct status dnat tcp dport 21 accept
    }
    chain nat_prerouting {
        type nat hook prerouting priority dstnat;
        iifname "wan0" ip daddr 203.0.113.1 tcp dport 21 dnat ip to 10.0.1.10:21
    }
    chain nat_postrouting {
        type nat hook postrouting priority srcnat;
        oifname "wan0" masquerade
    }
}
"""

CLIENTS = [lab.Client("curl", m) for m in ("EPSV", "PASV", "EPRT", "PORT")] + \
          [lab.Client("lftp", m) for m in ("PASV", "PORT", "EPSV")] + \
          [lab.Client("ftplib", m) for m in ("PASV", "PORT")]


class Role:
    def __init__(self, name, path, server_ns, server_addr, config, listen, files=(),
                 text=None, kernel=True):
        self.name, self.path = name, path
        self.server_ns, self.server_addr = server_ns, server_addr
        self.config, self.listen, self.files, self.text = config, listen, files, text
        self.kernel = kernel

    def configs(self, work):
        """(column, config file) for each data path the role's shipped config can take:
        the shipped file itself (`relay: kernel` for outbound and publish) and the same
        with `relay: splice`."""
        with open(self.config) as f:
            text = f.read()
        if "relay: kernel" not in text:
            return [("ftpgate", self.config)]
        spliced = os.path.join(work, "%s-splice.yaml" % self.name)
        with open(spliced, "w") as f:
            f.write(text.replace("relay: kernel", "relay: splice"))
        return [("ftpgate", spliced), ("ftpgate-kernel", self.config)]


ROLES = [
    Role("outbound", lab.Path("lan", "203.0.113.10", 21, "anonymous"), "inet", "203.0.113.10",
         "config/outbound.yaml", "10.0.0.1:2121", files=["deploy/nftables/outbound.nft"]),
    Role("publish", lab.Path("inet", "203.0.113.1", 21, "anonymous"), "dmz", "10.0.1.10",
         "config/publish.yaml", "203.0.113.1:21", files=["deploy/nftables/publish.nft"]),
    Role("explicit", lab.Path("lan", "10.0.0.1", 2121, "anonymous@203.0.113.10"), "inet",
         "203.0.113.10", "config/explicit.yaml", "10.0.0.1:2121",
         text=lab.FORWARD_DROP_RULES, kernel=False),
]

FAULTS_CONFIG = """
gateways:
  - name: faults
    listen: "10.0.0.1:2121"
    upstream: "user@host"
    client_side: { address: 10.0.0.1 }
    server_side: { address: 203.0.113.1 }
    data_ports: "41000-41999"
    allow_clients: ["10.0.0.0/24"]
    allow_server_ports: [2100, 2200]
limits:
  data_accept_timeout: 5s
metrics:
  listen: "10.0.0.1:9464"
log:
  level: info
"""


# IPv6, FTP64 and mode conversion: gateways of one ftpgate process (ftpgate only; the
# kernel helper has no equivalent). lan6 is an IPv6-only LAN; the internet and the DMZ are
# dual-stack; IPv4-only servers listen only on their IPv4 address.
BEYOND_CONFIG = """
gateways:
  - name: out6
    listen: "[2001:db8:6::1]:2121"
    upstream: transparent
    client_side: { address: "2001:db8:6::1" }
    server_side: { address: "2001:db8:b::1" }
    data_ports: "42000-42199"
    client_source: gateway
    relay: kernel
  - name: pub6
    listen: "[2001:db8:b::1]:21"
    upstream: "[2001:db8:c::10]:21"
    client_side: { address: "2001:db8:b::1" }
    server_side: { address: "2001:db8:c::1" }
    data_ports: "42200-42299"
    relay: kernel
  - name: pub6-2200
    listen: "[2001:db8:b::1]:2200"
    upstream: "[2001:db8:c::10]:2200"
    client_side: { address: "2001:db8:b::1" }
    server_side: { address: "2001:db8:c::1" }
    data_ports: "42300-42399"
  - name: exp6
    listen: "[2001:db8:6::1]:2126"
    upstream: "user@host"
    client_side: { address: "2001:db8:6::1" }
    server_side: { address: "2001:db8:b::1" }
    data_ports: "42400-42599"
    allow_server_ports: [21, 2200]
  - name: exp64
    listen: "[2001:db8:6::1]:2164"
    upstream: "user@host"
    client_side: { address: "2001:db8:6::1" }
    server_side: { address: 203.0.113.1 }
    data_ports: "42600-42699"
    allow_server_ports: [21, 2100]
  - name: out64
    listen: "[2001:db8:6::1]:2196"
    upstream: transparent
    client_side: { address: "2001:db8:6::1" }
    server_side: { address: 203.0.113.1 }
    data_ports: "43800-43999"
    nat64_prefix: "64:ff9b::/96"
  - name: exp46
    listen: "10.0.0.1:2146"
    upstream: "user@host"
    client_side: { address: 10.0.0.1 }
    server_side: { address: "2001:db8:b::1" }
    data_ports: "42700-42799"
  - name: pub64-vsftpd
    listen: "[2001:db8:b::1]:2164"
    upstream: "10.0.1.10:21"
    client_side: { address: "2001:db8:b::1" }
    server_side: { address: 10.0.1.1 }
    data_ports: "42800-42899"
  - name: pub64-rfc959
    listen: "[2001:db8:b::1]:2165"
    upstream: "10.0.1.10:2165"
    client_side: { address: "2001:db8:b::1" }
    server_side: { address: 10.0.1.1 }
    data_ports: "42900-42999"
  - name: out-to-passive
    listen: "10.0.0.1:2131"
    upstream: transparent
    client_side: { address: 10.0.0.1 }
    server_side: { address: 203.0.113.1 }
    data_ports: "43000-43199"
    server_mode: passive
    client_source: server
    relay: kernel
  - name: pub-to-passive
    listen: "203.0.113.1:2101"
    upstream: "10.0.1.10:2101"
    client_side: { address: 203.0.113.1 }
    server_side: { address: 10.0.1.1 }
    data_ports: "43200-43399"
    server_mode: passive
  - name: pub-to-active
    listen: "203.0.113.1:2102"
    upstream: "10.0.1.10:2102"
    client_side: { address: 203.0.113.1 }
    server_side: { address: 10.0.1.1 }
    data_ports: "43400-43599"
    server_mode: active
    relay: kernel
  - name: pub-private-227
    listen: "203.0.113.1:2103"
    upstream: "10.0.1.10:2103"
    client_side: { address: 203.0.113.1 }
    server_side: { address: 10.0.1.1 }
    data_ports: "43600-43799"
metrics:
  listen: "127.0.0.1:9464"
log:
  level: info
"""

BEYOND_RULES = """
table inet ftpgate_beyond {
    chain nat_prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "lan6" ip6 daddr 64:ff9b::/96 tcp dport { 21, 2100 } redirect to :2196
        iifname "lan6" ip6 daddr 64:ff9b::/96 tcp dport 43800-43999 redirect
        iifname "lan6" tcp dport { 21, 2200 } redirect to :2121
        iifname "lan6" tcp dport 42000-42199 redirect
        iifname "lan0" tcp dport 2101 redirect to :2131
        iifname "lan0" tcp dport 43000-43199 redirect
    }
    chain mangle_prerouting {
        type filter hook prerouting priority mangle; policy accept;
        meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set 0x1
    }
    chain input {
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        ct state invalid drop
        meta l4proto { icmp, ipv6-icmp } accept
        tcp dport { 21, 2101-2103, 2121, 2126, 2131, 2146, 2164-2165, 2196, 2200, 42000-43999 } accept
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct mark and 0xffff0000 == 0x46470000 accept
    }
}
"""

V6_CLIENTS = [lab.Client(tool, m) for tool in ("curl", "lftp", "ftplib") for m in ("EPSV", "EPRT")]
ACTIVE_CLIENTS = [lab.Client("curl", "PORT"), lab.Client("curl", "EPRT"),
                  lab.Client("lftp", "PORT"), lab.Client("ftplib", "PORT")]
PASSIVE_CLIENTS = [lab.Client("curl", "PASV"), lab.Client("curl", "EPSV"),
                   lab.Client("lftp", "PASV"), lab.Client("lftp", "EPSV"),
                   lab.Client("ftplib", "PASV")]


class Matrix:
    def __init__(self, topo, binary):
        self.topo, self.binary = topo, binary
        self.cells = {}     # (role, server, client label) -> {"kernel": .., "ftpgate": ..}
        self.checks = []    # (name, ok, detail)

    def record(self, role, server, client, column, ok, detail):
        self.cells.setdefault((role, server, client.label), {})[column] = (ok, detail)
        print("%-8s %-9s %-10s %-11s %-4s %s" % (column, role, server, client.label,
                                                 "ok" if ok else "FAIL", detail), flush=True)

    def run_clients(self, column, role, server):
        for client in CLIENTS:
            tag = "%s-%s-%s-%s-%s" % (column, role.name, server.name, client.tool, client.mode)
            ok, detail = lab.run_cell(self.topo, tag, client, role.path, server)
            self.record(role.name, server.name, client, column, ok, detail)

    def start_gateway(self, role, name, config):
        self.topo.router_rules(text=role.text, files=role.files)
        return lab.Ftpgate(self.topo, self.binary, config, name, role.listen)

    def matrix(self, server_names):
        for server_name in server_names:
            cls = lab.SERVERS[server_name]
            servers = {ns: cls(self.topo, ns, addr) for ns, addr in
                       (("inet", "203.0.113.10"), ("dmz", "10.0.1.10"))}
            for role in ROLES:
                server = servers[role.server_ns]
                for column, config in role.configs(self.topo.work):
                    gw = self.start_gateway(role, "%s-%s-%s" % (column, role.name, server_name),
                                            config)
                    self.run_clients(column, role, server)
                    if role.name != "explicit":
                        self.check_paths(role, server_name, column)
                    gw.stop()
                    if column == "ftpgate-kernel":
                        self.check_table_removed(gw)
                if role.kernel:
                    self.topo.router_rules(text=KERNEL_RULES)
                    self.run_clients("kernel", role, server)
            for s in servers.values():
                s.stop()

    def beyond(self):
        """IPv6 through each role, FTP64 (IPv6-only clients to IPv4-only servers, including
        one without EPSV/EPRT), every mode conversion against pyftpdlib configured passive-
        or active-only, and a server announcing a wrong private address in its 227."""
        topo = self.topo
        v6 = "2001:db8:6::2"
        inet6 = "2001:db8:b::10"
        servers = {
            "vsftpd6-inet": lab.Vsftpd(topo, "inet", "2001:db8:b::10"),
            "pyftpdlib6-inet": lab.PyFtpd(topo, "inet", "2001:db8:b::10", 2200),
            "vsftpd6-dmz": lab.Vsftpd(topo, "dmz", "2001:db8:c::10"),
            "pyftpdlib6-dmz": lab.PyFtpd(topo, "dmz", "2001:db8:c::10", 2200),
            "vsftpd4-inet": lab.Vsftpd(topo, "inet", "203.0.113.10"),
            "rfc959-inet": lab.PyFtpd(topo, "inet", "203.0.113.10", 2100,
                                      ["--disable", "EPSV,EPRT"]),
            "vsftpd4-dmz": lab.Vsftpd(topo, "dmz", "10.0.1.10"),
            "rfc959-dmz": lab.PyFtpd(topo, "dmz", "10.0.1.10", 2165, ["--disable", "EPSV,EPRT"]),
            "passive-only-inet": lab.PyFtpd(topo, "inet", "203.0.113.10", 2101,
                                            ["--disable", "PORT,EPRT"]),
            "passive-only-dmz": lab.PyFtpd(topo, "dmz", "10.0.1.10", 2101,
                                           ["--disable", "PORT,EPRT"]),
            "active-only-dmz": lab.PyFtpd(topo, "dmz", "10.0.1.10", 2102,
                                          ["--disable", "PASV,EPSV"]),
            "private-227-dmz": lab.PyFtpd(topo, "dmz", "10.0.1.10", 2103,
                                          ["--masquerade", "192.168.77.7"]),
        }
        # (role label, path, server key, server label, clients)
        cells = []
        # The IPv6 outbound gateway and the publish one for port 21 run relay: kernel.
        for kind, port in (("vsftpd6", 21), ("pyftpdlib6", 2200)):
            label = kind[:-1] + " (IPv6)"
            cells += [
                ("outbound IPv6 (relay: kernel)", lab.Path("lan6", inet6, port, "anonymous", v6),
                 kind + "-inet", label, V6_CLIENTS),
                ("publish IPv6" + (" (relay: kernel)" if port == 21 else ""),
                 lab.Path("inet", "2001:db8:b::1", port, "anonymous", inet6),
                 kind + "-dmz", label, V6_CLIENTS),
                ("explicit IPv6", lab.Path("lan6", "2001:db8:6::1", 2126,
                                           "anonymous@[%s]:%d" % (inet6, port), v6),
                 kind + "-inet", label, V6_CLIENTS),
            ]
        cells += [
            ("FTP64 explicit", lab.Path("lan6", "2001:db8:6::1", 2164,
                                        "anonymous@203.0.113.10", v6),
             "vsftpd4-inet", "vsftpd (IPv4)", V6_CLIENTS),
            ("FTP64 explicit", lab.Path("lan6", "2001:db8:6::1", 2164,
                                        "anonymous@203.0.113.10:2100", v6),
             "rfc959-inet", "pyftpdlib (IPv4, no EPSV/EPRT)", V6_CLIENTS),
            ("FTP64 outbound (NAT64 64:ff9b::/96)",
             lab.Path("lan6", "64:ff9b::cb00:710a", 21, "anonymous", v6),
             "vsftpd4-inet", "vsftpd (IPv4)", V6_CLIENTS),
            ("FTP64 outbound (NAT64 64:ff9b::/96)",
             lab.Path("lan6", "64:ff9b::cb00:710a", 2100, "anonymous", v6),
             "rfc959-inet", "pyftpdlib (IPv4, no EPSV/EPRT)", V6_CLIENTS),
            ("IPv4 client, IPv6 server", lab.Path("lan", "10.0.0.1", 2146,
                                                  "anonymous@[%s]" % inet6),
             "vsftpd6-inet", "vsftpd (IPv6)", CLIENTS),
            ("FTP64 publish", lab.Path("inet", "2001:db8:b::1", 2164, "anonymous", inet6),
             "vsftpd4-dmz", "vsftpd (IPv4)", V6_CLIENTS),
            ("FTP64 publish", lab.Path("inet", "2001:db8:b::1", 2165, "anonymous", inet6),
             "rfc959-dmz", "pyftpdlib (IPv4, no EPSV/EPRT)", V6_CLIENTS),
            ("outbound server_mode: passive (relay: kernel, spliced)",
             lab.Path("lan", "203.0.113.10", 2101, "anonymous"),
             "passive-only-inet", "pyftpdlib (passive only)", ACTIVE_CLIENTS),
            ("publish server_mode: passive", lab.Path("inet", "203.0.113.1", 2101, "anonymous"),
             "passive-only-dmz", "pyftpdlib (passive only)", ACTIVE_CLIENTS),
            ("publish server_mode: active (relay: kernel, spliced)",
             lab.Path("inet", "203.0.113.1", 2102, "anonymous"),
             "active-only-dmz", "pyftpdlib (active only)", PASSIVE_CLIENTS),
            ("publish, 227 names 192.168.77.7", lab.Path("inet", "203.0.113.1", 2103,
                                                          "anonymous"),
             "private-227-dmz", "pyftpdlib (wrong 227)", PASSIVE_CLIENTS),
        ]
        config = os.path.join(topo.work, "beyond.yaml")
        with open(config, "w") as f:
            f.write(BEYOND_CONFIG)
        topo.router_rules(text=BEYOND_RULES)
        gw = lab.Ftpgate(topo, self.binary, config, "beyond", "[2001:db8:6::1]:2121")
        for role, path, key, label, clients in cells:
            server = servers[key]
            for client in clients:
                tag = "beyond-%s-%s-%s-%s" % ("".join(c if c.isalnum() else "_" for c in role),
                                             key, client.tool, client.mode)
                ok, detail = lab.run_cell(topo, tag, client, path, server)
                self.record(role, label, client, "ftpgate", ok, detail)
        samples = lab.scrape(topo)
        refused = lab.metric(samples, "ftpgate_refusals_total", gateway="pub-private-227",
                             reason="passive_address_ignored")
        on_kernel = {g: lab.metric(samples, "ftpgate_data_channels_total", gateway=g,
                                   path="kernel", outcome="ok") for g in ("out6", "pub6")}
        spliced = {g: lab.metric(samples, "ftpgate_data_channels_total", gateway=g,
                                 path="splice") for g in ("out6", "pub6")}
        self.check("IPv6 data channels on the kernel path",
                   all(on_kernel.values()) and not any(spliced.values()),
                   "ok channels on the kernel path %s, spliced %s" % (on_kernel, spliced))
        # Conversions on relay: kernel gateways fall back to splice, per channel, and the
        # transparent role's redirect of the data ports still serves them.
        converted = {g: (lab.metric(samples, "ftpgate_data_channels_total", gateway=g,
                                    path="splice", outcome="ok"),
                         lab.metric(samples, "ftpgate_data_channels_total", gateway=g,
                                    path="kernel"))
                     for g in ("out-to-passive", "pub-to-active")}
        self.check("conversions on relay: kernel gateways are spliced",
                   all(ok and not k for ok, k in converted.values()),
                   "(spliced ok, on the kernel path) per gateway: %s" % converted)
        gw.stop()
        with open(gw.log, errors="replace") as f:
            mismatch = [line for line in f if "announced another address" in line]
        per_session = {}
        for line in mismatch:
            sid = line.split("session{id=", 1)[-1].split()[0] if "session{id=" in line else "?"
            per_session[sid] = per_session.get(sid, 0) + 1
        self.check("wrong 227 address logged once per session",
                   bool(per_session) and max(per_session.values()) == 1 and bool(refused),
                   "%d sessions logged it, at most %d times each; %s refusals counted"
                   % (len(per_session), max(per_session.values(), default=0), refused))
        for server in servers.values():
            server.stop()

    def check(self, name, ok, detail):
        self.checks.append((name, ok, detail))
        print("check    %-40s %-4s %s" % (name, "ok" if ok else "FAIL", detail), flush=True)

    def concurrency(self, jobs=40):
        """40 transfers at once per role, clients and modes mixed, distinct files."""
        servers = {ns: lab.Vsftpd(self.topo, ns, addr) for ns, addr in
                   (("inet", "203.0.113.10"), ("dmz", "10.0.1.10"))}
        for role, (column, config) in [(r, c) for r in ROLES for c in r.configs(self.topo.work)]:
            server = servers[role.server_ns]
            gw = self.start_gateway(role, "concurrency-%s-%s" % (column, role.name), config)
            files = [("par-%s-%s-%d.bin" % (column, role.name, i), None) for i in range(jobs)]
            files = [(n, server.add_file(n, 1024 * 1024 + i)) for i, (n, _) in enumerate(files)]
            started = time.time()
            with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(lab.run_cell, self.topo,
                                       "par-%s-%s-%d" % (column, role.name, i), CLIENTS[i % len(CLIENTS)],
                                       role.path, server, 60, files[i])
                           for i in range(jobs)]
                results = [f.result() for f in futures]
            bad = [d for ok, d in results if not ok]
            self.check("%d parallel sessions via %s (%s)" % (jobs, role.name, column), not bad,
                       "all SHA-256 ok in %.1f s" % (time.time() - started) if not bad
                       else "%d failed: %s" % (len(bad), bad[0]))
            gw.stop()
        for s in servers.values():
            s.stop()

    def faults(self):
        """A server killed mid-transfer and a client killed mid-transfer, through the
        explicit role: only their sessions end; the rest finish; ports return."""
        topo = self.topo
        topo.router_rules(text=lab.FORWARD_DROP_RULES)
        doomed = lab.PyFtpd(topo, "inet", "203.0.113.10", 2100)
        healthy = lab.PyFtpd(topo, "inet", "203.0.113.10", 2200)
        big = 48 * 1024 * 1024
        for s in (doomed, healthy):
            s.big_sha = s.add_file("big.bin", big)
        # The killed server must still be sending when it dies: socket buffers autotune up
        # to tcp_rmem's maximum (32 MiB here), so its file is far larger than they hold.
        doomed.add_file("huge.bin", 256 * 1024 * 1024)
        config = os.path.join(topo.work, "faults.yaml")
        with open(config, "w") as f:
            f.write(FAULTS_CONFIG)
        gw = lab.Ftpgate(topo, self.binary, config, "faults", "10.0.0.1:2121")

        def download(server, name, mode_args, rate="8M", remote="big.bin"):
            out = os.path.join(topo.work, name)
            url = "ftp://anonymous%%40203.0.113.10%%3A%d:x@10.0.0.1:2121/%s" % (server.port, remote)
            p = topo.spawn("lan", ["curl", "-sS", "--limit-rate", rate, "--max-time", "60",
                                   "-o", out] + mode_args + [url], name + ".log")
            return p, out

        up_src = os.path.join(topo.work, "fault-up.bin")
        up_sha = lab.random_file(up_src, 24 * 1024 * 1024)
        url = "ftp://anonymous%40203.0.113.10%3A2200:x@10.0.0.1:2121/upload/fault-up.bin"
        upload = topo.spawn("lan", ["curl", "-sS", "--limit-rate", "8M", "--max-time", "60",
                                    "-T", up_src, url], "fault-up.log")
        # A server that had handed its whole file to the kernel and sent its 226 before
        # dying would rightly see its transfer delivered: this one is mid-file.
        victim_server, _ = download(doomed, "fault-server-killed.bin", ["--ftp-pasv"], "1M",
                                    "huge.bin")
        victim_client, _ = download(healthy, "fault-client-killed.bin", ["--ftp-port", "10.0.0.2"])
        survivors = [download(healthy, "fault-ok-%d.bin" % i, m) for i, m in
                     enumerate((["--ftp-pasv"], ["--ftp-port", "10.0.0.2"],
                                ["--ftp-pasv", "--disable-epsv"]))]
        time.sleep(1.5)
        doomed.stop(signal.SIGKILL)
        topo.stop(victim_client, signal.SIGKILL)
        victim_server.wait(60)
        self.check("server killed: its session ends with an error",
                   victim_server.returncode != 0, "curl exit %d" % victim_server.returncode)
        intact = []
        for p, out in survivors:
            p.wait(60)
            intact.append(p.returncode == 0 and lab.sha256_file(out) == healthy.big_sha)
        upload.wait(60)
        stored = os.path.join(healthy.root, "upload", "fault-up.bin")
        intact.append(upload.returncode == 0 and os.path.exists(stored)
                      and lab.sha256_file(stored) == up_sha)
        self.check("other sessions finish intact", all(intact),
                   "%d of %d transfers SHA-256 ok" % (intact.count(True), len(intact)))
        in_use, active = self.wait_pool_empty("faults")
        self.check("data ports all back in the pool", in_use == 0,
                   "ftpgate_data_ports_in_use=%s, sessions_active=%s" % (in_use, active))
        listeners = topo.run("rtr", ["ss", "-Htln", "sport >= :41000 and sport <= :41999"],
                             capture_output=True, text=True).stdout.strip()
        self.check("no data listener left open", listeners == "", listeners or "none")
        gw.stop()
        healthy.stop()

    def wait_pool_empty(self, gateway, timeout=15):
        deadline = time.time() + timeout
        in_use = active = None
        while time.time() < deadline:
            samples = lab.scrape(self.topo, "http://10.0.0.1:9464/metrics")
            in_use = lab.metric(samples, "ftpgate_data_ports_in_use", gateway=gateway)
            active = lab.metric(samples, "ftpgate_sessions_active", gateway=gateway)
            if in_use == 0 and active == 0:
                break
            time.sleep(0.5)
        return in_use, active

    def check_paths(self, role, server_name, column):
        """Every data channel took the path the column names."""
        samples = lab.scrape(self.topo)
        want = "kernel" if column == "ftpgate-kernel" else "splice"
        counts = {path: lab.metric(samples, "ftpgate_data_channels_total", path=path) or 0
                  for path in ("kernel", "splice")}
        self.check("%s %s: channels on %s only" % (role.name, server_name, want),
                   counts[want] > 0 and sum(counts.values()) == counts[want],
                   "data channels by path: %s" % counts)

    def check_table_removed(self, gw):
        """A kernel-path ftpgate that exited left no nftables table behind."""
        if any(name == "table removed at exit" for name, _, _ in self.checks):
            return
        tables = self.topo.run("rtr", ["nft", "list", "tables"], capture_output=True,
                               text=True).stdout
        self.check("table removed at exit", "table inet ftpgate" not in tables.splitlines(),
                   "nft list tables: " + " ".join(tables.split()))

    def table(self):
        lines = ["| role | server | client | kernel helper | ftpgate (splice) "
                 "| ftpgate (relay: kernel) |",
                 "|---|---|---|---|---|---|"]
        for (role, server, client), cols in self.cells.items():
            def show(col):
                if col not in cols:
                    return "n/a"
                ok, detail = cols[col]
                return "ok" if ok else "FAIL: " + detail.replace("|", "/")
            lines.append("| %s | %s | %s | %s | %s | %s |" % (
                role, server, client, show("kernel"), show("ftpgate"), show("ftpgate-kernel")))
        return "\n".join(lines)

    def summary(self):
        kernel = [c["kernel"][0] for c in self.cells.values() if "kernel" in c]
        ftpgate = [c["ftpgate"][0] for c in self.cells.values() if "ftpgate" in c]
        kpath = [c["ftpgate-kernel"][0] for c in self.cells.values() if "ftpgate-kernel" in c]
        return ("ftpgate %d/%d cells ok; ftpgate relay: kernel %d/%d cells ok; "
                "kernel helper %d/%d cells ok; checks %d/%d ok"
                % (ftpgate.count(True), len(ftpgate), kpath.count(True), len(kpath),
                   kernel.count(True), len(kernel),
                   sum(1 for c in self.checks if c[1]), len(self.checks)))

    def judged(self):
        """Outcomes of every ftpgate cell (both paths) and check."""
        return [ok for c in self.cells.values() for col, (ok, _) in c.items()
                if col.startswith("ftpgate")] + [c[1] for c in self.checks]


def versions():
    def first_line(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    pyftpdlib = first_line(["python3", "-c", "import pyftpdlib; print(pyftpdlib.__ver__)"])
    pure = first_line([lab.pure_ftpd_binary() or "false", "--help"])
    lftp = first_line(["lftp", "--version"])
    return [
        ("kernel", os.uname().release),
        # vsftpd prints its version on standard input.
        ("vsftpd", first_line(["sh", "-c", '"$0" -v 0>&1', lab.vsftpd_binary() or "false"]).split()[-1]),
        ("pure-ftpd", pure.split()[1] if len(pure.split()) > 1 else "?"),
        ("pyftpdlib", pyftpdlib),
        ("curl", first_line(["curl", "--version"]).split()[1]),
        ("lftp", lftp.split("|")[1].split()[-1] if "|" in lftp else "?"),
        ("Python", first_line(["python3", "--version"]).split()[-1]),
    ]


def write_doc(path, matrix):
    begin, end = "<!-- matrix:begin -->", "<!-- matrix:end -->"
    with open(path) as f:
        doc = f.read()
    if begin not in doc or end not in doc:
        sys.exit("%s lacks the %s / %s markers" % (path, begin, end))
    generated = "\n".join([
        begin,
        "Generated %s by `sudo python3 tests/e2e/interop.py --ftpgate target/release/ftpgate "
        "--write-doc docs/interop.md`." % datetime.date.today().isoformat(),
        "",
        "Versions: " + ", ".join("%s %s" % v for v in versions()) + ".",
        "",
        "**" + matrix.summary() + ".**",
        "",
        matrix.table(),
        "",
        "| check (ftpgate) | result |",
        "|---|---|",
    ] + ["| %s | %s: %s |" % (n, "ok" if ok else "FAIL", d) for n, ok, d in matrix.checks] + [
        end,
    ])
    doc = doc[:doc.index(begin)] + generated + doc[doc.index(end) + len(end):]
    with open(path, "w") as f:
        f.write(doc)


def main():
    ap = lab.parser()
    ap.add_argument("--servers", default="vsftpd,pure-ftpd,pyftpdlib")
    ap.add_argument("--sections", default="matrix,beyond,concurrency,faults",
                    help="which parts to run (comma-separated; default: all)")
    ap.add_argument("--write-doc", help="write the table into this markdown file")
    args = ap.parse_args()
    lab.require_root_and_tools("interop.py")

    work = tempfile.mkdtemp(prefix="ftpgate-interop-")
    topo = lab.Topology(work)
    m = Matrix(topo, args.ftpgate)
    try:
        topo.up()
        sections = args.sections.split(",")
        if "matrix" in sections:
            m.matrix(args.servers.split(","))
        for section in ("beyond", "concurrency", "faults"):
            if section in sections:
                getattr(m, section)()
    finally:
        topo.down()
    print()
    print(m.table())
    print(m.summary())
    judged = m.judged()
    passed = all(judged) and bool(m.cells)
    if args.write_doc:
        write_doc(args.write_doc, m)
    if passed:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("logs kept in", work)
    print("interop: %d passed, %d failed" % (judged.count(True), judged.count(False)))
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
