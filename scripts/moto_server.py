#!/usr/bin/env python3
"""Starts the AWS emulator (moto) on a loopback port for spotkeeper's tests and demo.

moto answers every DescribeSpotPriceHistory with one constant price and never
runs out of capacity. To test zone choice, price ceilings and capacity
fallback end to end, this launcher wraps two moto handlers with rules read,
on every request, from a JSON control file (path in $SPOTKEEPER_MOTO_CONTROL):

    {"market": {
      "prices": {"t3.micro": 0.0104, "t3.micro/us-east-1b": 0.0031, "t3a.micro/us-east-1c": null},
      "no_capacity": ["t3.micro/us-east-1b", "m5.large"]
    }}

A price key is "TYPE/ZONE" or "TYPE"; null means "not offered there". A
no_capacity entry makes RunInstances fail with InsufficientInstanceCapacity.
moto does not implement GetSpotPlacementScores; here it answers from
"scores": {"us-east-1a": 9, "us-east-1b": 2} (by zone name, answered by zone
id as AWS does: the same id is a different name in another account), and
"scores_refused": true answers it with the error AWS gives an account past
its daily number of distinct configurations.

Beside the emulator runs a fault-injecting proxy (a second loopback port)
that forwards to it. Its rules come from the same control file:

    {"faults": {"seed": 7, "throttle": 0.2, "fail": 0.05, "lose": 0.15,
                "hang": false, "services": ["ec2"]}}

For a request to one of `services` (by the signing scope; default ec2) it
answers 503 RequestLimitExceeded with probability `throttle`, 500
InternalError with probability `fail`, and for a mutating call (an EC2 action
that is not Describe*/Get*, any Route 53 POST) lets it take effect and then
drops the connection without an answer with probability `lose`, all drawn
from a generator seeded with `seed`. With `hang` true it accepts requests and
answers none until `hang` is false again. With `"lag": SECONDS` it plays
AWS's eventual consistency: for that long after RunInstances or CreateVolume
answered, a describe by id of the new instance or volume answers
InvalidInstanceID.NotFound / InvalidVolume.NotFound, and filtered describes
(DescribeInstances, DescribeVolumes, DescribeSpotInstanceRequests) leave it
out (AWS: "a resource may not be visible to all subsequent API calls for a
short period after you create it"). Unlike the emulator it honours
`ClientToken` as AWS does: a repeated call with the same token and the same
parameters gets the first answer again without reaching the emulator; other
parameters get IdempotentParameterMismatch. `GET /__proxy/stats` returns what
it did, and the arrival time of every call (for benchmarks).

Where spotkeeper depends on how AWS behaves and moto is kinder, the
launcher makes moto behave like AWS:

- CreateImage records every EBS volume attached to the instance (besides its
  root) as a block device mapping of the image, snapshotting it, unless the
  call lists the device with NoDevice; RunInstances from that image creates
  those volumes again and attaches them at their devices (AWS: "Amazon EBS
  volumes attached to the instance are included in the AMI" unless excluded
  with a NoDevice mapping; an instance launched from the AMI gets them).
- With `{"ec2": {"terminating_for": SECONDS}}` in the control file,
  TerminateInstances leaves the instances `shutting-down` (their volumes
  attached, their public address still theirs) for that long before they are
  `terminated` and their volumes detached, as AWS does (termination takes
  from seconds to minutes; a volume stays in-use until its instance is
  terminated). By default termination is at once, as moto does.
- CopyImage tags the copy and its snapshot from its TagSpecifications, as
  AWS does (moto ignores them).
- With `{"ec2": {"copying_for": SECONDS}}`, a snapshot made by CopySnapshot
  is `pending` for that long before it is `completed`, as on AWS (a copy
  across regions completes minutes to hours later, by the data copied). By
  default it is completed at once, as moto does.
- A volume holds data. With $SPOTKEEPER_MOTO_DISKS set, a directory there
  named by a volume id is that volume's contents: CreateSnapshot copies it to
  a directory named by the snapshot, CopySnapshot (any region) to the copy's,
  CreateVolume from a snapshot to the new volume's. A test writes a file into
  a volume and reads it where a restored copy landed (AWS: a snapshot holds
  the volume's blocks as they were when it started; a volume made from it
  holds them again, in any region the snapshot was copied to).
- A no_capacity entry may name a region ("us-east-1"): every launch in its
  zones fails, as when a region has no capacity for the box's types.
- AttachVolume to a device name the instance already uses fails
  (InvalidParameterValue: attachment point in use), so does attaching a
  volume that is attached (VolumeInUse) or one in another zone
  (InvalidVolume.ZoneMismatch).

The server binds 127.0.0.1 only, prints "READY <port> <proxy port>" once it
answers, and exits when its standard input closes (so it never outlives the
test that started it), or on SIGTERM.
"""

import argparse
import copy
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import werkzeug.serving

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.amis import Ami, AmiBackend
from moto.ec2.models.elastic_block_store import EBSBackend
from moto.ec2.models.instances import InstanceBackend
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.spot_instances import SpotInstances
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

MOTO_DEFAULT_PRICE = "0.00001"


def control() -> dict:
    """The control file: {"market": {prices, no_capacity}, "faults": {...},
    "ec2": {...}}. A file with "prices" at the top (the older layout) is the
    market alone."""
    path = os.environ.get("SPOTKEEPER_MOTO_CONTROL")
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    if "market" in data:
        return {**data["market"], "faults": data.get("faults") or {}, "ec2": data.get("ec2") or {}}
    return data


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


def get_spot_placement_scores(self):
    market = control()
    if market.get("scores_refused"):
        raise EC2ClientError(
            "MaxConfigLimitExceeded",
            "You have exceeded your maximum allowed Spot placement configurations. You can retry "
            "configurations that you used within the last 24 hours, or wait for 24 hours before "
            "specifying a new configuration.",
        )
    scores = market.get("scores", {})
    return ActionResult({"SpotPlacementScores": [
        {"Region": self.region, "AvailabilityZoneId": z.zone_id, "Score": scores[z.name]}
        for z in self.ec2_backend.describe_availability_zones() if z.name in scores
    ]})


_run_instances = InstanceBackend.run_instances


def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
    itype = kwargs.get("instance_type")
    zone = kwargs.get("placement")
    if not zone and kwargs.get("subnet_id"):
        zone = self.get_subnet(kwargs["subnet_id"]).availability_zone
    refused = control().get("no_capacity", [])
    region = (zone or "")[:-1]
    if f"{itype}/{zone}" in refused or itype in refused or region in refused:
        raise EC2ClientError(
            "InsufficientInstanceCapacity",
            f"We currently do not have sufficient {itype} capacity in the "
            f"Availability Zone you requested ({zone}).",
        )
    reservation = _run_instances(self, image_id, count, user_data, security_group_names, **kwargs)
    # The image's other volumes come with every launch (unless the request
    # maps their device to NoDevice or to a volume of its own).
    image = self.amis.get(image_id)
    asked = {m.get("DeviceName") for m in kwargs.get("block_device_mappings") or []}
    volume_tags = (kwargs.get("tags") or {}).get("volume", {})
    for instance in reservation.instances:
        for m in getattr(image, "spotkeeper_mappings", []):
            if m["DeviceName"] in asked:
                continue
            ebs = m["Ebs"]
            instance.add_block_device(ebs["VolumeSize"], m["DeviceName"], ebs["SnapshotId"], False,
                                      ebs["DeleteOnTermination"], None, volume_type=ebs["VolumeType"])
            held = instance.block_device_mapping[m["DeviceName"]]
            self.get_volume(held.volume_id).add_tags(volume_tags)
    return reservation


_terminate_instances = InstanceBackend.terminate_instances


def terminate_instances(self, instance_ids):
    """TerminateInstances; with `terminating_for`, through `shutting-down`."""
    delay = float((control().get("ec2") or {}).get("terminating_for") or 0)
    if delay <= 0 or not instance_ids:
        return _terminate_instances(self, instance_ids)
    out = []
    for instance in self.get_multi_instances_by_id(instance_ids):
        if instance.disable_api_termination is True:
            return _terminate_instances(self, instance_ids)
        previous = copy.copy(instance._state)
        if instance._state.name not in ("shutting-down", "terminated"):
            instance._state.name = "shutting-down"
            instance._state.code = 32
            later = threading.Timer(delay, _terminate_instances, (self, [instance.id]))
            later.daemon = True
            later.start()
        out.append((instance, previous))
    return out


_copy_image_response = AmisResponse.copy_image
_copy_snapshot = EBSBackend.copy_snapshot
_create_snapshot = EBSBackend.create_snapshot
_create_volume = EBSBackend.create_volume


def carry(source: str, to: str) -> None:
    """The contents of volume or snapshot `source` become `to`'s."""
    root = os.environ.get("SPOTKEEPER_MOTO_DISKS")
    if not root or not os.path.isdir(os.path.join(root, source)):
        return
    shutil.copytree(os.path.join(root, source), os.path.join(root, to), dirs_exist_ok=True)


def create_snapshot(self, *args, **kwargs):
    snapshot = _create_snapshot(self, *args, **kwargs)
    carry(snapshot.volume.id, snapshot.id)
    return snapshot


def create_volume(self, *args, **kwargs):
    volume = _create_volume(self, *args, **kwargs)
    if volume.snapshot_id:
        carry(volume.snapshot_id, volume.id)
    return volume


def copy_snapshot(self, source_snapshot_id, *args, **kwargs):
    """CopySnapshot; with `copying_for`, `pending` for that long."""
    snapshot = _copy_snapshot(self, source_snapshot_id, *args, **kwargs)
    carry(source_snapshot_id, snapshot.id)
    delay = float((control().get("ec2") or {}).get("copying_for") or 0)
    if delay > 0:
        snapshot.status = "pending"

        def done() -> None:
            snapshot.status = "completed"

        later = threading.Timer(delay, done)
        later.daemon = True
        later.start()
    return snapshot


_attach_volume = EBSBackend.attach_volume


def attach_volume(self, volume_id, instance_id, device_path, delete_on_termination=False):
    volume = self.get_volume(volume_id)
    instance = self.get_instance(instance_id)
    if volume is not None and instance is not None:
        held = instance.block_device_mapping.get(device_path)
        if held is not None and held.volume_id != volume_id:
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Invalid value '{device_path}' for unixDevice. Attachment point {device_path} is already in use",
            )
        if volume.attachment is not None:
            raise EC2ClientError("VolumeInUse", f"{volume_id} is already attached to an instance")
        if volume.zone.name != instance._placement.zone:
            raise EC2ClientError(
                "InvalidVolume.ZoneMismatch",
                f"The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'",
            )
    return _attach_volume(self, volume_id, instance_id, device_path, delete_on_termination)


_ami_mappings = Ami.block_device_mappings


def ami_block_device_mappings(self):
    return _ami_mappings.fget(self) + getattr(self, "spotkeeper_mappings", [])


def create_image_response(self):
    """CreateImage with the devices the request leaves out (NoDevice)."""
    excluded = {
        m.get("DeviceName")
        for m in self._get_param("BlockDeviceMappings", [])
        if "NoDevice" in m
    }
    self.ec2_backend.spotkeeper_excluded = excluded
    try:
        return _create_image_response(self)
    finally:
        self.ec2_backend.spotkeeper_excluded = set()


_create_image_response = AmisResponse.create_image


class Proxy:
    """State of the fault-injecting proxy, shared by its handler threads."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.rules_seen = None
        self.rng = random.Random(0)
        self.tokens = {}
        self.hidden = {}  # id of a new instance or volume -> until when it is hidden
        self.stats = {"requests": 0, "throttled": 0, "failed": 0, "lost": 0,
                      "replayed": 0, "mismatched": 0, "hung": 0, "hidden": 0}
        self.calls = []

    def rules(self) -> dict:
        faults = control().get("faults") or {}
        with self.lock:
            if faults != self.rules_seen:
                self.rules_seen = faults
                self.rng = random.Random(faults.get("seed", 0))
        return faults

    def draw(self) -> float:
        with self.lock:
            return self.rng.random()

    def count(self, key: str) -> None:
        with self.lock:
            self.stats[key] += 1

    def hide(self, ids, seconds: float) -> None:
        until = time.time() + seconds
        with self.lock:
            for i in ids:
                self.hidden.setdefault(i, until)

    def hidden_now(self) -> set:
        now = time.time()
        with self.lock:
            return {i for i, until in self.hidden.items() if until > now}


# What a describe lists, by action: the child of each listed item that
# names a new resource.
LISTED = {
    "DescribeInstances": "instanceId",
    "DescribeVolumes": "volumeId",
    "DescribeSpotInstanceRequests": "instanceId",
}
NOT_FOUND = {
    "DescribeInstances": ("InstanceId.", "InvalidInstanceID.NotFound", "The instance ID '{}' does not exist"),
    "DescribeVolumes": ("VolumeId.", "InvalidVolume.NotFound", "The volume '{}' does not exist."),
}


def strip_hidden(data: bytes, action: str, hidden: set) -> bytes:
    """The describe answer without the items that name a hidden resource
    (and without reservations left empty)."""
    root = ET.fromstring(data)
    ns = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
    q = (lambda t: f"{{{ns}}}{t}") if ns else (lambda t: t)
    key = LISTED[action]
    removed = 0
    if action == "DescribeInstances":
        for rset in root.findall(q("reservationSet")):
            for res in list(rset):
                iset = res.find(q("instancesSet"))
                if iset is None:
                    continue
                for inst in list(iset):
                    if inst.findtext(q(key)) in hidden:
                        iset.remove(inst)
                        removed += 1
                if len(iset) == 0:
                    rset.remove(res)
    else:
        set_name = "volumeSet" if action == "DescribeVolumes" else "spotInstanceRequestSet"
        for vset in root.findall(q(set_name)):
            for item in list(vset):
                if item.findtext(q(key)) in hidden:
                    vset.remove(item)
                    removed += 1
    if not removed:
        return data
    if ns:
        ET.register_namespace("", ns)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
    ).encode()


def make_handler(proxy: Proxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle's algorithm the
        # body waits for the client's delayed ACK of the headers (40 ms on
        # Linux), a stall AWS's endpoints do not have.
        disable_nagle_algorithm = True

        def log_message(self, *args):  # quiet
            pass

        def answer(self, status: int, body: bytes, headers=()) -> None:
            self.send_response(status)
            sent = set()
            for k, v in headers:
                if k.lower() in ("transfer-encoding", "connection", "content-length"):
                    continue
                self.send_header(k, v)
                sent.add(k.lower())
            if "content-type" not in sent:
                self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.startswith("/__proxy/stats"):
                with proxy.lock:
                    body = json.dumps({**proxy.stats, "calls": proxy.calls}).encode()
                self.answer(200, body, [("Content-Type", "application/json")])
                return
            self.forward(b"")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.forward(self.rfile.read(length) if length else b"")

        do_PUT = do_POST
        do_DELETE = do_GET

        def forward(self, body: bytes) -> None:
            auth = self.headers.get("Authorization", "")
            service = ""
            if "Credential=" in auth:
                scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
                service = scope[3] if len(scope) > 3 else ""
            params = {}
            if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                params = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
            target = self.headers.get("X-Amz-Target", "")
            action = params.get("Action") or target.split(".")[-1] or f"{self.command} {self.path.split('?')[0]}"
            with proxy.lock:
                proxy.stats["requests"] += 1
                proxy.calls.append([time.time(), service, action])
                del proxy.calls[:-20000]
            rules = proxy.rules()
            faulty = service in rules.get("services", ["ec2"])
            while faulty and proxy.rules().get("hang"):
                if not getattr(self, "_hung", False):
                    self._hung = True
                    proxy.count("hung")
                time.sleep(0.05)
            if faulty:
                r = proxy.draw()
                if r < rules.get("throttle", 0):
                    proxy.count("throttled")
                    self.answer(503, error_xml("RequestLimitExceeded", "Request limit exceeded."))
                    return
                if r < rules.get("throttle", 0) + rules.get("fail", 0):
                    proxy.count("failed")
                    self.answer(500, error_xml("InternalError", "An internal error has occurred."))
                    return
            lag = float(rules.get("lag", 0) or 0) if service == "ec2" else 0
            if lag and action in NOT_FOUND:
                prefix, code, message = NOT_FOUND[action]
                asked = [v for k, v in params.items() if k.startswith(prefix)]
                hidden = proxy.hidden_now()
                gone = next((i for i in asked if i in hidden), None)
                if gone is not None:
                    proxy.count("hidden")
                    self.answer(400, error_xml(code, message.format(gone)))
                    return
            token = params.get("ClientToken")
            key = fingerprint = None
            if token:
                key = (params.get("Action"), token)
                rest = sorted((k, v) for k, v in params.items() if k != "ClientToken")
                fingerprint = hashlib.sha256(json.dumps(rest).encode()).hexdigest()
                with proxy.lock:
                    seen = proxy.tokens.get(key)
                if seen is not None:
                    if seen[0] != fingerprint:
                        proxy.count("mismatched")
                        self.answer(400, error_xml(
                            "IdempotentParameterMismatch",
                            "The client token you have provided is associated with a resource "
                            "that was created with other parameters."))
                        return
                    proxy.count("replayed")
                    self.answer(200, seen[1], seen[2])
                    return
            conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=300)
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("connection", "keep-alive", "proxy-connection")}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            resp_headers = resp.getheaders()
            conn.close()
            if key and resp.status == 200:
                with proxy.lock:
                    proxy.tokens.setdefault(key, (fingerprint, data, resp_headers))
            if lag and resp.status == 200:
                if action in ("RunInstances", "CreateVolume"):
                    text = data.decode("utf-8", "replace")
                    proxy.hide(re.findall(r"<(?:instanceId|volumeId)>([^<]+)</", text), lag)
                elif action in LISTED:
                    hidden = proxy.hidden_now()
                    if hidden:
                        data = strip_hidden(data, action, hidden)
            mutating = (
                (service == "ec2" and not action.startswith(("Describe", "Get")))
                or (service == "route53" and self.command == "POST")
            )
            if faulty and mutating and proxy.draw() < rules.get("lose", 0):
                # It happened; the caller never hears so.
                proxy.count("lost")
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return
            try:
                self.answer(resp.status, data, resp_headers)
            except OSError:
                pass  # the caller gave up (a hang it timed out on)

    return Handler


def copy_image_response(self):
    """CopyImage; AWS tags the copy and its snapshots at creation
    (TagSpecifications with ResourceType image or snapshot), moto 5.2
    ignores them."""
    result = _copy_image_response(self)
    image = self.ec2_backend.describe_images(ami_ids=[result.result["ImageId"]])[0]
    specs = self._get_param("TagSpecification", []) or self._get_param("TagSpecifications", [])
    for spec in specs if isinstance(specs, list) else [specs]:
        tags = {t["Key"]: t["Value"] for t in (spec.get("Tags") or spec.get("Tag") or [])}
        if spec.get("ResourceType") == "image":
            self.ec2_backend.create_tags([image.id], tags)
        elif spec.get("ResourceType") == "snapshot" and getattr(image, "ebs_snapshot", None) is not None:
            self.ec2_backend.create_tags([image.ebs_snapshot.id], tags)
    return result


_create_image = AmiBackend.create_image


def create_image(self, instance_id, name, description, tag_specifications):
    """AWS tags an image's snapshots at creation (TagSpecifications with
    ResourceType=snapshot); moto 5.2 raises NotImplementedError for that.
    Here the snapshot tags go on the image's snapshot once it exists."""
    snapshot_tags = []
    image_specs = []
    for spec in tag_specifications:
        if spec.get("ResourceType") == "snapshot":
            snapshot_tags += spec.get("Tags", [])
        else:
            image_specs.append(spec)
    ami = _create_image(self, instance_id, name, description, tag_specifications=image_specs)
    snapshots = [ami.ebs_snapshot] if getattr(ami, "ebs_snapshot", None) is not None else []
    # Every other attached volume goes into the image, snapshotted, unless
    # the request excluded its device.
    instance = self.get_instance(instance_id)
    excluded = getattr(self, "spotkeeper_excluded", set())
    ami.spotkeeper_mappings = []
    for device, held in instance.get_block_device_mapping:
        if device == ami.root_device_name or device == "/dev/sda1" or device in excluded:
            continue
        volume = self.get_volume(held.volume_id)
        snap = self.create_snapshot(volume.id, f"Created by CreateImage({instance_id}) for {ami.id}", None)
        snapshots.append(snap)
        ami.spotkeeper_mappings.append({
            "DeviceName": device,
            "Ebs": {"SnapshotId": snap.id, "VolumeSize": volume.size,
                    "DeleteOnTermination": bool(held.delete_on_termination),
                    "VolumeType": volume.volume_type or "gp2"},
        })
    if snapshot_tags:
        for snap in snapshots:
            self.create_tags([snap.id], {t["Key"]: t["Value"] for t in snapshot_tags})
    return ami


def install() -> None:
    """Puts the launcher's handlers in moto's place."""
    SpotInstances.describe_spot_price_history = describe_spot_price_history
    SpotInstances.get_spot_placement_scores = get_spot_placement_scores
    InstanceBackend.run_instances = run_instances
    InstanceBackend.terminate_instances = terminate_instances
    AmiBackend.create_image = create_image
    AmisResponse.create_image = create_image_response
    AmisResponse.copy_image = copy_image_response
    Ami.block_device_mappings = property(ami_block_device_mappings)
    EBSBackend.attach_volume = attach_volume
    EBSBackend.copy_snapshot = copy_snapshot
    EBSBackend.create_snapshot = create_snapshot
    EBSBackend.create_volume = create_volume
    # The emulator's own server (werkzeug) writes headers and body apart
    # too: no 40 ms delayed-ACK stall between them (see the proxy's Handler).
    werkzeug.serving.WSGIRequestHandler.disable_nagle_algorithm = True


def emulator() -> DomainDispatcherApplication:
    """moto's application: every service, backends made on first use."""
    return DomainDispatcherApplication(create_backend_app)


def start(app: DomainDispatcherApplication, port: int = 0) -> tuple[int, int]:
    """Serves `app` on a loopback port (threads) and the proxy in front of
    it on another; returns both ports."""
    server = werkzeug.serving.make_server(
        "127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(Proxy(port)))
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return port, proxy.server_address[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()

    install()
    port, proxy_port = start(emulator(), args.port)
    print(f"READY {port} {proxy_port}", flush=True)

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


if __name__ == "__main__":
    main()
