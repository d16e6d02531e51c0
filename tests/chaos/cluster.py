"""What the cluster-side chaos scripts share: the local cluster's settings (target/cluster/env) and
signed requests to its S3 server (SigV4, stdlib only, path style)."""

import datetime
import hashlib
import hmac
import os
import pathlib
import sys
import urllib.error
import urllib.parse
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[2]
REQUIRED = ["KUBECONFIG", "S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]


def load_cluster_env():
    """Put the cluster's settings into os.environ (what is set already wins) and return them."""
    cluster = pathlib.Path(os.environ.get("STREAMJOB_CLUSTER_DIR", REPO / "target/cluster"))
    env_file = cluster / "env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                os.environ.setdefault(key.strip(), value.strip())
    os.environ.setdefault("STREAMJOB_CLUSTER_DIR", str(cluster))
    for key in REQUIRED:
        if not os.environ.get(key):
            sys.exit(f"{key} is not set: bring the cluster up (tests/cluster/up.sh) and source target/cluster/env")
    return dict(os.environ)


def s3_request(method, path, body=b""):
    """One signed request to the cluster's S3 server; returns (HTTP status, body)."""
    endpoint = os.environ["S3_ENDPOINT"].rstrip("/")
    region = os.environ.get("AWS_REGION", "us-east-1")
    host = urllib.parse.urlparse(endpoint).netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(body).hexdigest()
    signed = "host;x-amz-content-sha256;x-amz-date"
    canonical = "\n".join([method, urllib.parse.quote(path), "",
                           f"host:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n",
                           signed, payload])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + os.environ["AWS_SECRET_ACCESS_KEY"]).encode()
    for part in [day, region, "s3", "aws4_request"]:
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(endpoint + path, data=body or None, method=method, headers={
        "x-amz-date": amz_date, "x-amz-content-sha256": payload,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={os.environ['AWS_ACCESS_KEY_ID']}/{scope}, "
                         f"SignedHeaders={signed}, Signature={signature}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
