"""Faults under load, on loopback and bounded in time: a killed worker, SIGTERM, certificate rotation, a soak.

The sustained load runs 3 s, or the promised minute with UPGRADE_GUARD_LONG_TESTS=1 (or UPGRADE_GUARD_SOAK_SECONDS=N).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.figures import FIGURES
from tests.guard import Guard
from tests.load import Load
from tests.switches import amount
from webhook import certs

SOAK_SECONDS = amount("UPGRADE_GUARD_SOAK_SECONDS", 3, 60)
SOAK_MEMORY_GROWTH_LIMIT = 16 * 1024 * 1024


def test_a_killed_worker_is_replaced_and_the_others_are_unaffected(cert_dir):
    with Guard(cert_dir, "--workers", "2") as guard:
        guard.wait_workers(2)
        load = Load(guard, clients=4)
        load.spread()
        with load:
            load.wait_for(5)
            victim = load.clients[0].owner
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            replacements = guard.wait_workers(2, other_than=(victim,))
            served = load.ok
            while load.ok < served + 50:
                time.sleep(0.05)
        for client in load.clients:
            if client.owner == victim:  # its in-flight request at most, then it connected again
                assert len(client.failures) <= 1, client.failures
                assert all(kind == "cut" and when >= killed_at for when, kind, _ in client.failures)
            else:
                assert client.failures == [], client.failures
        connection = guard.connect()
        assert connection.get("/healthz")[0] == 200
        connection.close()
    assert victim not in replacements
    FIGURES.add("faults survived", "SIGKILL of a worker under load")


def test_sigterm_under_load_cuts_no_request(cert_dir):
    """Every request sent gets its whole answer: the guard closes connections only between requests."""
    guard = Guard(cert_dir, "--workers", "2").start()
    try:
        load = Load(guard, clients=4)
        load.spread()
        with load:
            load.wait_for(5)
            guard.process.send_signal(signal.SIGTERM)
            code = guard.process.wait(60)
    finally:
        guard.stop()
    assert code == 0
    assert load.failures() == [], load.failures()
    assert load.ok > 0
    FIGURES.add("faults survived", "SIGTERM under load")


def _kubelet_dir(root: Path, version: str, pair: certs.Pair) -> None:
    """A projected Secret volume as kubelet writes it: files in a timestamped dir behind the `..data` link."""
    data = root / version
    data.mkdir()
    (data / "tls.crt").write_bytes(pair.cert_pem)
    (data / "tls.key").write_bytes(pair.key_pem)
    link = root / "..data_tmp"
    link.symlink_to(version)
    os.replace(link, root / "..data")  # the atomic swap
    for name in ("tls.crt", "tls.key"):
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")


def test_certificates_rotated_the_kubelet_way_under_load(tmp_path):
    """Two rotations: a new serving certificate, then a new CA and certificate (the caBundle trusts both)."""
    old_ca, new_ca = certs.make_ca(), certs.make_ca()
    names = certs.service_names() + ["127.0.0.1"]
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    bundle = tmp_path / "ca-bundle.crt"
    bundle.write_bytes(old_ca.cert_pem + new_ca.cert_pem)
    first = certs.make_serving(old_ca, names)
    _kubelet_dir(mounted, "..2026_01_01_00_00_00.1", first)
    (mounted / "ca.crt").write_bytes(bundle.read_bytes())
    rotations = [certs.make_serving(old_ca, names), certs.make_serving(new_ca, names)]
    with Guard(mounted, "--workers", "2") as guard:
        load = Load(guard, clients=2, fresh_connections=True, ca_file=bundle)
        steady = Load(guard, clients=2, ca_file=bundle)  # kept-alive connections made before the rotation
        with load, steady:
            load.wait_for(5)
            steady.wait_for(5)
            for step, pair in enumerate(rotations, start=2):
                previous = next(p.name for p in mounted.iterdir() if p.name.startswith("..2026"))
                _kubelet_dir(mounted, f"..2026_01_01_00_00_00.{step}", pair)
                for stale in (mounted / previous).iterdir():  # kubelet removes the old dir after the swap
                    stale.unlink()
                (mounted / previous).rmdir()
                serial = pair.cert.serial_number
                deadline = time.monotonic() + 10
                while not all(serial in c.serials for c in load.clients):
                    assert time.monotonic() < deadline, "the new certificate was not served"
                    time.sleep(0.05)
            served = load.ok
            while load.ok < served + 20:
                time.sleep(0.05)
    assert load.failures() == [] and steady.failures() == [], (load.failures(), steady.failures())
    FIGURES.add("faults survived", "two kubelet-style certificate rotations under load")


def test_sustained_load(cert_dir):
    with Guard(cert_dir, "--workers", "2") as guard:
        load = Load(guard, clients=4)
        with load:
            load.wait_for(20)  # warm: every worker has allocated what it keeps
            baseline, served, started = guard.memory(), load.ok, time.monotonic()
            time.sleep(SOAK_SECONDS)  # the duration under test
            growth, requests, elapsed = guard.memory() - baseline, load.ok - served, time.monotonic() - started
    assert load.failures() == [], load.failures()[:5]
    assert growth < SOAK_MEMORY_GROWTH_LIMIT, f"the workers grew by {growth / 2**20:.1f} MiB"
    FIGURES.set("sustained load", f"{requests} requests in {elapsed:.0f} s ({requests / elapsed:.0f}/s), "
                                  f"0 errors, memory growth {growth / 2**20:.1f} MiB")
    FIGURES.add("faults survived", f"sustained load for {SOAK_SECONDS:g} s")
