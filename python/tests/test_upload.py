"""The collector's upload of its lake to S3 (``--upload``), against real S3-compatible servers
(moto's, over HTTP and over TLS; s3s-fs, which checks every request's signature), read back
with boto3, pyarrow and ``gradtel analyze`` as a user of the store would.
"""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from gradtel import Client, Tensor
from gradtel.sidecar import Agent, Collector, binary

from conftest import metric

if os.environ.get("GRADTEL_REQUIRE_PYTHON") == "1":
    # The test command installs them (tests/requirements.txt).
    import boto3
    import moto.server  # noqa: F401
else:
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server")

import pyarrow.parquet as pq

RUN = "uploaded"
KEYS = {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "secret-test-key"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd, port, log):
    """Start an S3 server and wait until it listens on ``port``."""
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{cmd[0]} did not start: {open(log).read()}")


def start_moto(port, tmp_path, tls=None):
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    if tls:
        cmd += ["-c", tls[0], "-k", tls[1]]
    return start_server(cmd, port, tmp_path / f"moto-{port}.log")


def s3s_fs():
    """The s3s-fs binary (scripts/test installs it and names it in GRADTEL_S3S_FS)."""
    path = os.environ.get("GRADTEL_S3S_FS") or shutil.which("s3s-fs")
    if path is None:
        if os.environ.get("GRADTEL_REQUIRE_PYTHON") == "1":
            raise AssertionError("s3s-fs is not installed: GRADTEL_S3S_FS is unset")
        pytest.skip("s3s-fs is not installed (cargo install s3s-fs@0.14.1 --features binary)")
    return path


def analyze(where, *extra):
    """``gradtel analyze`` of a lake (a directory or s3://), as JSON."""
    r = subprocess.run([binary("gradtel"), "analyze", where, "--run", RUN, "--format", "json",
                        *extra], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def s3(endpoint, verify=True):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", verify=verify,
                        aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"])


def run_steps(collector, tmp_path, steps):
    agent = Agent(str(tmp_path / "a.sock"), collector.url)
    client = Client(RUN, socket=agent.socket)
    client.register([Tensor("w", (4000,)), Tensor("b", (100,))])
    rng = np.random.default_rng(0)
    for step in steps:
        client.push(step, "w", rng.standard_t(3, 4000).astype(np.float32))
        client.push(step, "b", rng.normal(size=100).astype(np.float32))
        client.end_step(step, loss=1.0 / (step + 1))
    assert client.flush(timeout=30)
    client.close()
    assert agent.stop() == 0


def local_files(lake):
    return sorted(str(p.relative_to(lake)) for p in lake.rglob("*.parquet")
                  if not p.name.startswith(".") and "_wal" not in p.parts)


def objects(client, bucket):
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def wait(pred, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(what)


def test_the_lake_reaches_the_store_once_it_is_up_and_reads_back_the_same(tmp_path, monkeypatch):
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    lake = tmp_path / "lake"
    # Spectrum snapshots often enough that the short run has every table `gradtel analyze` reads.
    config = tmp_path / "collector.toml"
    config.write_text("[live]\nspectrum_every = 10\n")
    # The store is not up yet: files are written locally, uploads fail and are counted.
    collector = Collector(str(lake), extra=[
        "--roll-interval", "200ms", "--metrics", "127.0.0.1:0", "--config", str(config),
        "--upload", "s3://gradtel-lake/team/runs", "--s3-endpoint", endpoint])
    moto = None
    try:
        run_steps(collector, tmp_path, range(0, 20))
        wait(lambda: local_files(lake), "no Parquet file written")
        wait(lambda: metric(collector, "gradtel_collector_upload_errors_total") > 0,
             "no failed upload counted while the store was down")
        assert metric(collector, "gradtel_collector_uploaded_files_total") == 0
        moto = start_moto(port, tmp_path)
        store = s3(endpoint)
        store.create_bucket(Bucket="gradtel-lake")
        run_steps(collector, tmp_path, range(20, 40))
        wait(lambda: metric(collector, "gradtel_collector_upload_pending_files") == 0
             and metric(collector, "gradtel_collector_uploaded_files_total") > 0,
             "uploads did not catch up")
        assert collector.stop() == 0
        files = local_files(lake)
        got = objects(store, "gradtel-lake")
        # Every published file, under the prefix, byte for byte; nothing else.
        assert sorted(got) == [f"team/runs/{f}" for f in files]
        for f in files:
            assert got[f"team/runs/{f}"] == (lake / f).read_bytes()
        # And read by a Parquet reader from the store's bytes: every step once.
        steps = [pq.read_table(io.BytesIO(b), columns=["step", "scope_kind"])
                 for k, b in got.items() if "table=steps" in k]
        model = [r for t in steps for r in t.to_pylist() if r["scope_kind"] == "model"]
        assert sorted(r["step"] for r in model) == list(range(40))
        manifest = (lake / "_uploaded").read_text().split()
        assert sorted(manifest) == files
        # `gradtel analyze` of the store gives what it gives of the local lake.
        local = analyze(str(lake))
        cache = tmp_path / "cache"
        remote = analyze("s3://gradtel-lake/team/runs", "--s3-endpoint", endpoint,
                         "--s3-cache", str(cache))
        assert remote == local and local["summary"], remote
        assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*.parquet")) == files
    finally:
        if collector.alive():
            collector.kill()
        if moto:
            moto.kill()


def make_tls(tmp_path):
    """A throwaway CA and a certificate for 127.0.0.1 it signed (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gradtel test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {n: tmp_path / f"{n}.pem" for n in ("ca", "cert", "key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return {n: str(p) for n, p in paths.items()}


def test_over_tls_with_the_local_copies_deleted(tmp_path, monkeypatch):
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    tls = make_tls(tmp_path)
    port = free_port()
    endpoint = f"https://127.0.0.1:{port}"
    moto = start_moto(port, tmp_path, tls=(tls["cert"], tls["key"]))
    lake = tmp_path / "lake"
    try:
        store = s3(endpoint, verify=tls["ca"])
        store.create_bucket(Bucket="tls-lake")
        # A collector that does not trust the store's CA refuses the handshake: counted, and
        # nothing is deleted locally.
        other = tmp_path / "other-ca"
        other.mkdir()
        wrong = make_tls(other)["ca"]
        collector = Collector(str(lake), extra=[
            "--roll-interval", "200ms", "--metrics", "127.0.0.1:0",
            "--upload", "s3://tls-lake", "--s3-endpoint", endpoint, "--s3-ca", wrong,
            "--upload-delete-local"])
        run_steps(collector, tmp_path, range(0, 10))
        wait(lambda: metric(collector, "gradtel_collector_upload_errors_total") > 0,
             "an untrusted store was not refused")
        assert collector.stop() == 0
        kept = local_files(lake)
        assert kept and not objects(store, "tls-lake")
        # With the right CA: everything goes up, and the local copies go.
        collector = Collector(str(lake), extra=[
            "--roll-interval", "200ms", "--metrics", "127.0.0.1:0",
            "--upload", "s3://tls-lake", "--s3-endpoint", endpoint, "--s3-ca", tls["ca"],
            "--upload-delete-local"])
        run_steps(collector, tmp_path, range(10, 20))
        assert collector.stop() == 0
        got = objects(store, "tls-lake")
        assert set(kept) <= set(got) and len(got) > len(kept)
        assert local_files(lake) == []
        steps = [pq.read_table(io.BytesIO(b), columns=["step", "scope_kind"])
                 for k, b in got.items() if "table=steps" in k]
        model = [r for t in steps for r in t.to_pylist() if r["scope_kind"] == "model"]
        assert sorted(r["step"] for r in model) == list(range(20))
    finally:
        moto.kill()


def test_bad_upload_settings_stop_the_collector_at_start(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    def start(*args):
        return subprocess.run([binary("gradtel-collector"), "--listen", "127.0.0.1:0", "--out",
                               str(tmp_path / "lake"), *args],
                              capture_output=True, text=True, timeout=30)

    r = start("--upload", "s3://lake", "--s3-endpoint", "http://127.0.0.1:1")
    assert r.returncode != 0 and "AWS_SECRET_ACCESS_KEY" in r.stderr, r.stderr
    r = start("--upload", "not-a-location")
    assert r.returncode != 0 and "s3://bucket" in r.stderr, r.stderr
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    r = start("--upload", "s3://lake", "--s3-endpoint", "ftp://host")
    assert r.returncode != 0 and "bad S3 endpoint" in r.stderr, r.stderr


def test_a_store_that_checks_signatures_refuses_a_wrong_key_and_takes_the_right_one(
        tmp_path, monkeypatch):
    """moto accepts any signature; s3s-fs recomputes each request's AWS Signature Version 4 from
    its own copy of the secret and refuses a mismatch, so this is where gradtel's signer meets
    a server's. It stores an object as the file <root>/<bucket>/<key>."""
    root = tmp_path / "store"
    (root / "signed").mkdir(parents=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = start_server([s3s_fs(), "--host", "127.0.0.1", "--port", str(port),
                           "--access-key", KEYS["AWS_ACCESS_KEY_ID"],
                           "--secret-key", KEYS["AWS_SECRET_ACCESS_KEY"], str(root)],
                          port, tmp_path / "s3s-fs.log")
    lake = tmp_path / "lake"
    config = tmp_path / "collector.toml"
    config.write_text("[live]\nspectrum_every = 10\n")
    upload = ["--roll-interval", "200ms", "--metrics", "127.0.0.1:0", "--config", str(config),
              "--upload", "s3://signed/team/runs", "--s3-endpoint", endpoint]

    def stored():
        return sorted(str(p.relative_to(root / "signed" / "team" / "runs"))
                      for p in (root / "signed").rglob("*.parquet"))

    collector = None
    try:
        # A wrong secret: every PUT refused (SignatureDoesNotMatch), counted, nothing stored.
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEYS["AWS_ACCESS_KEY_ID"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        collector = Collector(str(lake), extra=upload)
        run_steps(collector, tmp_path, range(0, 20))
        wait(lambda: metric(collector, "gradtel_collector_upload_errors_total") > 0,
             "a wrongly signed upload was not refused")
        assert metric(collector, "gradtel_collector_uploaded_files_total") == 0
        assert collector.stop() == 0
        assert local_files(lake) and stored() == []
        # The right one: the next collector on the lake uploads what the first could not, then
        # its own files; every one arrives byte for byte.
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEYS["AWS_SECRET_ACCESS_KEY"])
        collector = Collector(str(lake), extra=upload)
        run_steps(collector, tmp_path, range(20, 40))
        assert collector.stop() == 0
        files = local_files(lake)
        assert stored() == files
        for f in files:
            assert (root / "signed" / "team" / "runs" / f).read_bytes() == (lake / f).read_bytes()
        # Listing and fetching are signed too: `gradtel analyze` of the store, every step.
        remote = analyze("s3://signed/team/runs", "--s3-endpoint", endpoint)
        assert remote == analyze(str(lake)) and remote["summary"], remote
        # Every tensor at every one of the 40 steps.
        samples = {r["layer"]: r["samples"] for r in remote["summary"]
                   if r["object"] == "dimension-wise"}
        assert samples == {"w": 40, "b": 40, "all": 80}, remote["summary"]
    finally:
        if collector is not None and collector.alive():
            collector.kill()
        server.kill()
