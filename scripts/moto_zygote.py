#!/usr/bin/env python3
"""Forks ready AWS emulators (and boto3 scripts) for spotkeeper's tests.

Starting `moto_server.py` costs about 2.3 s of CPU before its first answer:
importing moto, then building each service's application and each region's
backend on first use. The test suite starts one emulator per test, over a
hundred, and runs a boto3 script (0.5 s of imports and service models) more
often still: on the 2-core machine that was most of the suite's CPU.

This process pays that once. It imports moto and boto3, answers one read-only
request per service and region the tests use (so the applications and
backends exist, empty), and then forks a copy of itself per request; a fork
starts in milliseconds with the warm state, and each copy is its own: nothing
one test does reaches another.

It listens on an abstract Unix socket named by its first argument. Abstract
names belong to a network namespace, so a test inside the loopback-only
namespace of `scripts/test` finds the zygote started there, whose emulators
listen on that namespace's loopback. Only the user that started it may
connect (SO_PEERCRED). It binds first (a second zygote started at the same
time prints TAKEN and exits), prints BOUND, warms up while the first
requests wait in the backlog, and exits after IDLE_SECONDS without a request.

A request is one line of JSON on a connection:

- {"serve": {"control": PATH, "disks": PATH}}: a fresh emulator and proxy, as
  `moto_server.py` starts them with SPOTKEEPER_MOTO_CONTROL and
  SPOTKEEPER_MOTO_DISKS. The answer is "READY PORT PROXY_PORT PID"; the
  emulator lives until the connection closes.
- {"run": {"code": SOURCE, "env": {NAME: VALUE}}}: runs SOURCE with that
  environment and answers one line {"status", "stdout", "stderr"}.
"""

import contextlib
import io
import json
import os
import random
import signal
import socket
import struct
import sys
import traceback

IDLE_SECONDS = 120
REGIONS = ["us-east-1", "us-west-2", "eu-west-1"]


def bind(name: str) -> socket.socket | None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind("\0" + name)
    except OSError:
        return None
    listener.listen(128)
    return listener


def warm(app) -> None:
    """One read-only request per service and region, through the emulator's
    own application: moto makes each service's application and each
    region's backend (default VPC, subnets, images) on first use."""
    from werkzeug.test import Client

    client = Client(app)

    def call(service, region, **kw):
        auth = f"AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/{service}/aws4_request, SignedHeaders=host, Signature=0"
        headers = {"Authorization": auth, **kw.pop("headers", {})}
        client.open(headers=headers, **kw)

    def target(service, region, name, version="1.1"):
        call(service, region, method="POST", path="/", data="{}",
             headers={"X-Amz-Target": name, "Content-Type": f"application/x-amz-json-{version}"})

    for region in REGIONS:
        for action in ["DescribeInstances", "DescribeImages&Owner.1=self", "DescribeVolumes",
                       "DescribeSpotPriceHistory", "DescribeInstanceTypeOfferings"]:
            call("ec2", region, method="GET", path=f"/?Action={action}&Version=2016-11-15")
        target("sqs", region, "AmazonSQS.ListQueues", "1.0")
        target("events", region, "AWSEvents.ListRules")
        target("ssm", region, "AmazonSSM.DescribeParameters")
    call("route53", "us-east-1", method="GET", path="/2013-04-01/hostedzone")


def botocore_loader():
    """boto3's service models, loaded once: a script's clients are made in
    milliseconds from them."""
    import boto3
    import botocore.session

    session = botocore.session.get_session()
    kw = dict(region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
              aws_access_key_id="x", aws_secret_access_key="x")
    for service in ["ec2", "route53", "sqs", "events", "ssm"]:
        boto3.session.Session(botocore_session=session).client(service, **kw)
    return session.get_component("data_loader")


def reseed() -> None:
    """A fork starts with its parent's random state: every emulator would
    hand out the same ids in the same order."""
    from moto.moto_api._internal import mock_random

    random.seed()
    mock_random.seed()


def serve(conn: socket.socket, request: dict, app) -> None:
    import moto_server

    os.environ["SPOTKEEPER_MOTO_CONTROL"] = request["control"]
    os.environ["SPOTKEEPER_MOTO_DISKS"] = request["disks"]
    port, proxy_port = moto_server.start(app)
    conn.sendall(f"READY {port} {proxy_port} {os.getpid()}\n".encode())
    while conn.recv(4096):
        pass


def run(conn: socket.socket, request: dict, loader) -> None:
    import boto3
    import botocore.session

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(request["env"])
    session = botocore.session.get_session()
    session.register_component("data_loader", loader)
    boto3.setup_default_session(botocore_session=session)
    out, err, status = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exec(compile(request["code"], "<boto script>", "exec"), {"__name__": "__main__"})
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            status = 1
    answer = {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}
    conn.sendall((json.dumps(answer) + "\n").encode())


def child(conn: socket.socket, app, loader) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    reseed()
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    request = json.loads(data)
    if "serve" in request:
        serve(conn, request["serve"], app)
    else:
        run(conn, request["run"], loader)


def main() -> None:
    listener = bind(sys.argv[1])
    if listener is None:
        print("TAKEN", flush=True)
        return
    print("BOUND", flush=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import moto_server

    moto_server.install()
    app = moto_server.emulator()
    warm(app)
    loader = botocore_loader()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forks are reaped by the kernel
    listener.settimeout(IDLE_SECONDS)
    uid = os.getuid()
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return
        conn.settimeout(None)
        _, peer_uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if peer_uid != uid:
            conn.close()
            continue
        if os.fork() == 0:
            listener.close()
            try:
                child(conn, app, loader)
            finally:
                os._exit(0)
        conn.close()


if __name__ == "__main__":
    main()
