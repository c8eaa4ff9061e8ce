"""What a one-shot command costs: `spotkeeper list --json` against the
emulator, beside its floor (starting the process, one bare DescribeInstances
at the emulator) and the AWS CLI's `aws ec2 describe-instances`. Run by
scripts/bench under scripts/emulator (AWS_ENDPOINT_URL set, loopback only)
with the optimised binary (the bench-opt profile, as a user's installed
build runs) and, beside it, the dev build the demo and the tests use.
Prints medians of 30 runs; asserts nothing."""

import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

RUNS = 30


def median_ms(run):
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main():
    spotkeeper, config = sys.argv[1], sys.argv[2]
    beside = sys.argv[3] if len(sys.argv) > 3 else None
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
    def listing(binary):
        return [binary, "--config", config, "list", "--json"]

    subprocess.run(listing(spotkeeper), **quiet)
    body = b"Action=DescribeInstances&Version=2016-11-15"

    def bare():
        req = urllib.request.Request(
            endpoint + "/",
            data=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": "AWS4-HMAC-SHA256 Credential=emulator/20260101/us-east-1/ec2/aws4_request, "
                "SignedHeaders=host, Signature=0",
            },
        )
        urllib.request.urlopen(req).read()

    def profile(binary):
        return os.path.basename(os.path.dirname(binary))

    ours = median_ms(lambda: subprocess.run(listing(spotkeeper), **quiet))
    start = median_ms(lambda: subprocess.run([spotkeeper, "--version"], **quiet))
    request = median_ms(bare)
    print(f"spotkeeper list --json: median {ours:.1f} ms (goal <= 15 ms; {profile(spotkeeper)} build)")
    if beside:
        subprocess.run(listing(beside), **quiet)
        dev = median_ms(lambda: subprocess.run(listing(beside), **quiet))
        print(f"  the same, {profile(beside)} build: median {dev:.1f} ms")
    print(f"  floor: process start {start:.1f} ms + one bare DescribeInstances {request:.1f} ms")
    aws = shutil.which("aws", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if aws:
        cli = [aws, "ec2", "describe-instances", "--output", "json"]
        # The CLI (v1) reads its region from AWS_DEFAULT_REGION.
        env = dict(os.environ, AWS_DEFAULT_REGION=os.environ.get("AWS_REGION", "us-east-1"))
        subprocess.run(cli, env=env, **quiet)
        theirs = median_ms(lambda: subprocess.run(cli, env=env, **quiet))
        print(f"  AWS CLI describe-instances: median {theirs:.1f} ms ({ours / theirs:.3f}x)")
    else:
        print("  AWS CLI: not installed (pip install awscli into the emulator's venv to compare)")


main()
