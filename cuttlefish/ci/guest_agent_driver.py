#!/usr/bin/env python3
"""Host side of the upstream-kernel suite's guest cases, against a Cuttlefish guest.

The guest program is tests/src/bin/vsock-guest-agent.rs (static x86_64 binary), the same one the
QEMU real-guest suite runs in a busybox initramfs. There its control channel is a serial port; here
it is the pty of `adb shell -tt` (the agent opens /proc/self/fd/0 and puts it in raw mode), so the
control channel is adb - which itself runs over the vsock device under test (adbd on vsock with
--vhost_user_vsock=true). The data paths are the hybrid-vsock Unix sockets of the backend:
  guest -> host port P:  the backend connects to <uds-path>_P   (we listen there)
  host -> guest port P:  we connect to <uds-path>, send "connect P\\n", expect "OK P\\n"

Control protocol (tests/src/real_guest/proto.rs): agent -> host `HELLO ...` until the first command;
host -> agent `RUN <id> <case> <op> key=value...`; agent -> host `READY <id>` (listener up) and
`RESULT <id> PASS|FAIL <detail>`; host -> agent `QUIT`.

  guest_agent_driver.py --uds-path /tmp/vsock_3_$(id -u)/vm.vsock [--serial 0.0.0.0:6520] [--adb adb]
  guest_agent_driver.py --pattern-sha256 SEED LEN      (self-check used by our cargo tests)
Exit status 0 iff every case passed.
"""

import argparse
import hashlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time

AGENT_ON_DEVICE = "/data/local/tmp/vsock-guest-agent"
HOST_CID = 2
HALF_PING = b"half-close ping\n"
HALF_PONG = b"reply after EOF\n"
M64 = (1 << 64) - 1


# --- the data pattern (tests/src/real_guest/proto.rs fill_pattern) ---------------------------------

def _splitmix64(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def pattern(seed, offset, n):
    """`n` bytes of stream `seed` from absolute `offset`: byte at pos = LE byte pos%8 of word pos/8."""
    key = (seed * 0x9E3779B97F4A7C15) & M64
    first, last = offset // 8, (offset + n + 7) // 8
    words = b"".join(_splitmix64(key ^ w).to_bytes(8, "little") for w in range(first, last))
    start = offset % 8
    return words[start:start + n]


def pattern_sha256(seed, length, chunk=1 << 16):
    h = hashlib.sha256()
    off = 0
    while off < length:
        n = min(chunk, length - off)
        h.update(pattern(seed, off, n))
        off += n
    return h.digest()


# --- the agent over adb ----------------------------------------------------------------------------

class Agent:
    def __init__(self, adb, log):
        self.log = log
        self.proc = subprocess.Popen(
            adb + ["shell", "-tt", AGENT_ON_DEVICE, "/proc/self/fd/0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
        self.lines = queue.Queue()
        threading.Thread(target=self._reader, daemon=True).start()
        self.next_id = 1

    def _reader(self):
        buf = b""
        while True:
            data = os.read(self.proc.stdout.fileno(), 4096)
            if not data:
                self.lines.put(None)
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode("utf-8", "replace").strip("\r ")
                self.log(f"agent| {text}")
                self.lines.put(text)

    def wait_for(self, prefix, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no '{prefix}' line from the agent within {timeout}s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise EOFError("the agent (adb shell) exited")
            if line.startswith(prefix):
                return line

    def send(self, text):
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def run(self, case, op, **kv):
        rid = str(self.next_id)
        self.next_id += 1
        args = " ".join(f"{k}={v}" for k, v in kv.items())
        self.send(f"RUN {rid} {case} {op} {args}")
        return rid

    def result(self, rid, timeout=120):
        line = self.wait_for(f"RESULT {rid} ", timeout)
        parts = line.split(" ", 3)
        return parts[2] == "PASS", (parts[3] if len(parts) > 3 else "")

    def quit(self):
        try:
            self.send("QUIT")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()


# --- host ends of the hybrid sockets ---------------------------------------------------------------

def listen_g2h(uds, port):
    path = f"{uds}_{port}"
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, 0o666)
    s.listen(8)
    s.settimeout(60)
    return s, path


def connect_h2g(uds, port, timeout=30):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(uds)
    s.sendall(f"connect {port}\n".encode())
    reply = b""
    while not reply.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            raise ConnectionError(f"backend closed the connection to guest port {port} (refused?)")
        reply += b
    if reply != f"OK {port}\n".encode():
        raise ConnectionError(f"backend answered {reply!r}, expected 'OK {port}' (Cuttlefish needs the guest port)")
    return s


def recv_exact(s, n):
    out = bytearray()
    while len(out) < n:
        b = s.recv(min(1 << 16, n - len(out)))
        if not b:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += b
    return bytes(out)


def recv_to_eof(s, limit=1 << 20):
    out = bytearray()
    while len(out) < limit:
        b = s.recv(1 << 16)
        if not b:
            return bytes(out)
        out += b
    raise ValueError("no EOF")


# --- cases -----------------------------------------------------------------------------------------

def case_g2h(agent, uds, name, port, nbytes, wsize, seed):
    lst, path = listen_g2h(uds, port)
    try:
        rid = agent.run(name, "g2h_send", cid=HOST_CID, port=port, bytes=nbytes, wsize=wsize, seed=seed)
        conn, _ = lst.accept()
        conn.settimeout(60)
        data = recv_exact(conn, nbytes)
        digest = hashlib.sha256(data).digest()
        conn.sendall(digest)
        ok, detail = agent.result(rid)
        if digest != pattern_sha256(seed, nbytes):
            return False, f"host received bytes that differ from the pattern ({detail})"
        conn.close()
        return ok, detail
    finally:
        lst.close()
        os.unlink(path)


def case_h2g(agent, uds, name, port, nbytes, seed, chunk=1 << 16):
    rid = agent.run(name, "h2g_recv", port=port, bytes=nbytes, seed=seed)
    agent.wait_for(f"READY {rid}", 30)
    s = connect_h2g(uds, port)
    off = 0
    while off < nbytes:
        n = min(chunk, nbytes - off)
        s.sendall(pattern(seed, off, n))
        off += n
    theirs = recv_exact(s, 32)
    ok, detail = agent.result(rid)
    s.close()
    if theirs != pattern_sha256(seed, nbytes):
        return False, f"guest digest differs from the pattern ({detail})"
    return ok, detail


def case_half_close_g2h(agent, uds, name, port):
    lst, path = listen_g2h(uds, port)
    try:
        rid = agent.run(name, "half_close_g2h", cid=HOST_CID, port=port)
        conn, _ = lst.accept()
        conn.settimeout(20)
        got = recv_to_eof(conn)
        if got != HALF_PING:
            return False, f"host got {got!r} before EOF"
        conn.sendall(HALF_PONG)
        conn.shutdown(socket.SHUT_WR)
        ok, detail = agent.result(rid)
        conn.close()
        return ok, detail
    finally:
        lst.close()
        os.unlink(path)


def case_echo(agent, uds, name, port, conns, nbytes):
    rid = agent.run(name, "echo_server", port=port, conns=conns, timeout_ms=30000)
    agent.wait_for(f"READY {rid}", 30)
    errors = []

    def one(i):
        try:
            s = connect_h2g(uds, port)
            data = pattern(1000 + i, 0, nbytes)
            sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
            sender.start()
            back = recv_to_eof(s, limit=nbytes + 1)
            sender.join()
            s.close()
            if back != data:
                errors.append(f"conn {i}: echo of {len(back)} bytes differs")
        except Exception as e:  # noqa: BLE001 - report every connection's failure
            errors.append(f"conn {i}: {e}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok, detail = agent.result(rid)
    if errors:
        return False, "; ".join(errors) + f" ({detail})"
    return ok, detail


def case_sibling_echo(agent, sibling, name, sibling_cid, port):
    """Guest -> guest through the backend's sibling forwarding (instances in one vsock group)."""
    srv = sibling.run(name, "echo_server", port=port, conns=2, timeout_ms=30000)
    sibling.wait_for(f"READY {srv}", 30)
    cli = agent.run(name, "echo_clients", cid=sibling_cid, port=port, conns=2, bytes=256 << 10)
    ok_c, detail_c = agent.result(cli)
    ok_s, detail_s = sibling.result(srv)
    return ok_c and ok_s, f"client: {detail_c}; server: {detail_s}"


def case_isolated(agent, name, cid, port):
    """A CID in no shared group must be unreachable (the connect fails, typically with a reset)."""
    rid = agent.run(name, "connect_fail", cid=cid, port=port, connect_timeout_ms=3000)
    return agent.result(rid)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uds-path", help="the instance's hybrid socket: <TMPDIR>/vsock_<CID>_<UID>/vm.vsock")
    ap.add_argument("--adb", default="adb")
    ap.add_argument("--serial", default="0.0.0.0:6520")
    ap.add_argument("--agent", help="local vsock-guest-agent binary to push first")
    ap.add_argument("--sibling-serial", help="adb serial of an instance in the same vsock group")
    ap.add_argument("--sibling-cid", type=int, help="its guest CID")
    ap.add_argument("--isolated-cid", type=int, help="CID of an instance sharing no group: must be unreachable")
    ap.add_argument("--pattern-sha256", nargs=2, type=int, metavar=("SEED", "LEN"))
    a = ap.parse_args()

    if a.pattern_sha256:
        print(pattern_sha256(*a.pattern_sha256).hex())
        return 0
    if not a.uds_path:
        ap.error("--uds-path is required")

    adb = [a.adb, "-s", a.serial]
    log = lambda m: print(m, flush=True)  # noqa: E731
    serials = [a.serial] + ([a.sibling_serial] if a.sibling_serial else [])
    if a.agent:
        for serial in serials:
            subprocess.run([a.adb, "-s", serial, "push", a.agent, AGENT_ON_DEVICE], check=True)
            subprocess.run([a.adb, "-s", serial, "shell", "chmod", "755", AGENT_ON_DEVICE], check=True)

    agent = Agent(adb, log)
    log(f"driver: {agent.wait_for('HELLO ', 60)}")
    sibling = None
    if a.sibling_serial:
        sibling = Agent([a.adb, "-s", a.sibling_serial], lambda m: log("sibling " + m))
        log(f"driver: sibling {sibling.wait_for('HELLO ', 60)}")
    cases = [
        ("g2h_1m_64k", lambda: case_g2h(agent, a.uds_path, "g2h_1m_64k", 20001, 1 << 20, 65536, 11)),
        ("g2h_4m_4k", lambda: case_g2h(agent, a.uds_path, "g2h_4m_4k", 20002, 4 << 20, 4096, 12)),
        ("h2g_4m", lambda: case_h2g(agent, a.uds_path, "h2g_4m", 20003, 4 << 20, 13)),
        ("half_close_g2h", lambda: case_half_close_g2h(agent, a.uds_path, "half_close_g2h", 20004)),
        ("echo_8x256k", lambda: case_echo(agent, a.uds_path, "echo_8x256k", 20005, 8, 256 << 10)),
    ]
    if sibling and a.sibling_cid:
        cases.append(("sibling_echo", lambda: case_sibling_echo(agent, sibling, "sibling_echo", a.sibling_cid, 20010)))
    if a.isolated_cid:
        cases.append(("isolated_cid", lambda: case_isolated(agent, "isolated_cid", a.isolated_cid, 20011)))
    passed = failed = 0
    for name, fn in cases:
        t0 = time.monotonic()
        try:
            ok, detail = fn()
        except Exception as e:  # noqa: BLE001 - one case's failure must not hide the others
            ok, detail = False, f"{type(e).__name__}: {e}"
        log(f"[cuttlefish] {'PASS' if ok else 'FAIL'} {name} ({time.monotonic() - t0:.1f}s): {detail}")
        passed += ok
        failed += not ok
    agent.quit()
    if sibling:
        sibling.quit()
    log(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
