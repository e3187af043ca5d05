#!/usr/bin/env python3
"""Stand-in for `adb` + guest + backend, so our CI can run guest_agent_driver.py end to end without
Cuttlefish (tests/tests/cuttlefish_scripts.rs). NOT a vsock test: it checks the driver's control
protocol and data paths against an agent that behaves like tests/src/bin/vsock-guest-agent.rs.

`fake_adb.py -s SERIAL push|shell ...`: push/chmod succeed; `shell -tt AGENT TTY` runs the fake
agent on stdin/stdout. The fake agent also plays the backend's hybrid side: it listens on
$FAKE_UDS for `connect P` lines (host -> guest) and reaches the host's `$FAKE_UDS_P` listeners
with plain Unix sockets (guest -> host).
"""

import hashlib
import importlib.util
import os
import socket
import sys
import threading

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("driver", os.path.join(here, "guest_agent_driver.py"))
driver = importlib.util.module_from_spec(spec)
spec.loader.exec_module(driver)

UDS = os.environ.get("FAKE_UDS", "")
out_lock = threading.Lock()
listeners = {}  # guest port -> list of accepted sockets (a queue)
listeners_cv = threading.Condition()


def say(line):
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def backend():
    """Host -> guest: `connect P\\n` on $FAKE_UDS, `OK P\\n` when the guest listens on P."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(UDS)
    except FileNotFoundError:
        pass
    srv.bind(UDS)
    srv.listen(16)
    while True:
        c, _ = srv.accept()
        line = b""
        while not line.endswith(b"\n"):
            b = c.recv(1)
            if not b:
                break
            line += b
        parts = line.decode().split()
        if len(parts) != 2 or parts[0].lower() != "connect":
            c.close()
            continue
        port = int(parts[1])
        with listeners_cv:
            if port not in listeners:
                c.close()
                continue
            c.sendall(f"OK {port}\n".encode())
            listeners[port].append(c)
            listeners_cv.notify_all()


def accept(port, timeout=20):
    with listeners_cv:
        if not listeners_cv.wait_for(lambda: listeners[port], timeout=timeout):
            raise TimeoutError("accept")
        return listeners[port].pop(0)


def listen(port):
    with listeners_cv:
        listeners[port] = []


def g2h_connect(port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(f"{UDS}_{port}")
    return s


def op(rid, case, name, kv):
    port = int(kv.get("port", 0))
    ready = lambda: say(f"READY {rid}")  # noqa: E731
    if name == "g2h_send":
        n, seed, w = int(kv["bytes"]), int(kv["seed"]), int(kv.get("wsize", 65536))
        s = g2h_connect(port)
        off = 0
        while off < n:
            k = min(w, n - off)
            s.sendall(driver.pattern(seed, off, k))
            off += k
        theirs = driver.recv_exact(s, 32)
        if theirs != driver.pattern_sha256(seed, n):
            return False, "digest mismatch"
        return True, f"sha256={theirs.hex()}"
    if name == "h2g_recv":
        n, seed = int(kv["bytes"]), int(kv["seed"])
        listen(port)
        ready()
        s = accept(port)
        data = driver.recv_exact(s, n)
        digest = hashlib.sha256(data).digest()
        s.sendall(digest)
        return data == driver.pattern(seed, 0, n), f"sha256={digest.hex()}"
    if name == "half_close_g2h":
        s = g2h_connect(port)
        s.sendall(driver.HALF_PING)
        s.shutdown(socket.SHUT_WR)
        got = driver.recv_to_eof(s)
        return got == driver.HALF_PONG, f"reply {got!r}"
    if name == "echo_server":
        listen(port)
        ready()
        conns = int(kv.get("conns", 1))
        done = []

        def echo(c):
            total = 0
            while True:
                b = c.recv(32768)
                if not b:
                    break
                c.sendall(b)
                total += len(b)
            c.close()
            done.append(total)

        threads = []
        for _ in range(conns):
            t = threading.Thread(target=echo, args=(accept(port),))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        return True, f"echoed {sum(done)} bytes"
    if name == "connect_fail":
        return True, "errno=ECONNRESET connect_ms=1"
    return False, f"unknown op {name}"


def agent():
    threading.Thread(target=backend, daemon=True).start()
    say("agent: HELLO release=fake cid=3")
    say("HELLO release=fake cid=3")
    for raw in sys.stdin:
        words = raw.split()
        if not words:
            continue
        if words[0] == "QUIT":
            return 0
        if words[0] != "RUN" or len(words) < 4:
            continue
        rid, case, name = words[1], words[2], words[3]
        kv = dict(w.split("=", 1) for w in words[4:] if "=" in w)

        def run(rid=rid, case=case, name=name, kv=kv):
            try:
                ok, detail = op(rid, case, name, kv)
            except Exception as e:  # noqa: BLE001
                ok, detail = False, f"{type(e).__name__}: {e}"
            verdict = "PASS" if ok else "FAIL"
            say(f"CASE {case} {verdict} {detail}")
            say(f"RESULT {rid} {verdict} {detail} guest_ms=0")

        threading.Thread(target=run, daemon=True).start()
    return 0


def main(argv):
    args = argv[1:]
    if len(args) >= 2 and args[0] == "-s":
        args = args[2:]
    if args[:1] == ["push"] or args[:2] == ["shell", "chmod"] or args[:1] == ["root"]:
        return 0
    if args[:2] == ["shell", "-tt"]:
        return agent()
    sys.stderr.write(f"fake_adb: unsupported {args}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
