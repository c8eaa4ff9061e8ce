#!/usr/bin/env python3
"""Starts the AWS emulator (moto) on a loopback port for spotkeeper's tests and demo.

moto answers every DescribeSpotPriceHistory with one constant price and never
runs out of capacity. To test zone choice, price ceilings and capacity
fallback end to end, this launcher wraps two moto handlers with rules read,
on every request, from a JSON control file (path in $SPOTKEEPER_MOTO_CONTROL):

    {
      "prices": {"t3.micro": 0.0104, "t3.micro/us-east-1b": 0.0031, "t3a.micro/us-east-1c": null},
      "no_capacity": ["t3.micro/us-east-1b", "m5.large"]
    }

A price key is "TYPE/ZONE" or "TYPE"; null means "not offered there". A
no_capacity entry makes RunInstances fail with InsufficientInstanceCapacity.

The server binds 127.0.0.1 only, prints "READY <port>" once it answers, and
exits when its standard input closes (so it never outlives the test that
started it), or on SIGTERM.
"""

import argparse
import json
import os
import signal
import sys
import threading

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.instances import InstanceBackend
from moto.ec2.responses.spot_instances import SpotInstances
from moto.server import ThreadedMotoServer

MOTO_DEFAULT_PRICE = "0.00001"


def control() -> dict:
    path = os.environ.get("SPOTKEEPER_MOTO_CONTROL")
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def describe_spot_price_history(self):
    types = self._get_param("InstanceTypes", [])
    filters = self._filters_from_querystring()
    offered = self.ec2_backend.describe_spot_price_history(types, filters)
    table = control().get("prices", {})
    history = []
    for o in offered:
        key = f'{o["InstanceType"]}/{o["Location"]}'
        price = table[key] if key in table else table.get(o["InstanceType"], MOTO_DEFAULT_PRICE)
        if price is None:
            continue
        history.append(
            {
                "InstanceType": o["InstanceType"],
                "ProductDescription": "Linux/UNIX",
                "SpotPrice": str(price),
                "AvailabilityZone": o["Location"],
                "Timestamp": "2026-01-01T00:00:00.000Z",
            }
        )
    return ActionResult({"SpotPriceHistory": history})


_run_instances = InstanceBackend.run_instances


def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
    itype = kwargs.get("instance_type")
    zone = kwargs.get("placement")
    if not zone and kwargs.get("subnet_id"):
        zone = self.get_subnet(kwargs["subnet_id"]).availability_zone
    refused = control().get("no_capacity", [])
    if f"{itype}/{zone}" in refused or itype in refused:
        raise EC2ClientError(
            "InsufficientInstanceCapacity",
            f"We currently do not have sufficient {itype} capacity in the "
            f"Availability Zone you requested ({zone}).",
        )
    return _run_instances(self, image_id, count, user_data, security_group_names, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()

    SpotInstances.describe_spot_price_history = describe_spot_price_history
    InstanceBackend.run_instances = run_instances

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    print(f"READY {port}", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())

    def watch_stdin() -> None:
        try:
            while sys.stdin.read(4096):
                pass
        finally:
            done.set()

    if not sys.stdin.isatty():
        threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
