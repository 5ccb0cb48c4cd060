"""Reference SigV4 signatures for gradtel-s3's unit test, made by botocore's own signer, of the
requests gradtel makes: PutObject (the collector's upload), GetObject and ListObjectsV2
(`gradtel analyze s3://…`).

Run: python3 s3/tests/reference/gen.py > s3/tests/reference/sigv4.json
(botocore comes with boto3; the test suite installs it with moto). botocore signs at the current
time; the date it used is recorded beside each signature.
"""
import hashlib
import json
import sys
from urllib.parse import quote, urlencode

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

CASES = [
    dict(method="PUT", host="127.0.0.1:9000", bucket="lake", region="us-east-1",
         key="gradtel/run=demo-1/table=steps/part-1764339000000-1a2b-0.parquet",
         payload="PAR1 not really parquet", token=None),
    dict(method="PUT", host="s3.eu-west-1.amazonaws.com", bucket="my-bucket", region="eu-west-1",
         key="runs/run=a.b_c-d/table=coords/part-0.parquet",
         payload="", token="FwoGZXIvYXdzEBYaDFAKE/TOKEN+="),
    dict(method="PUT", host="minio.internal", bucket="gradtel", region="us-west-2",
         key="x/run=r/table=alerts/part~1.parquet", payload="x" * 1000, token=None),
    dict(method="GET", host="127.0.0.1:9000", bucket="lake", region="us-east-1",
         key="gradtel/run=demo-1/table=spectra/part-9.parquet", payload="", token=None),
    dict(method="GET", host="127.0.0.1:9000", bucket="lake", region="us-east-1", key="",
         query=[("list-type", "2"), ("prefix", "gradtel/run=demo-1/")], payload="", token=None),
    dict(method="GET", host="s3.eu-west-1.amazonaws.com", bucket="my-bucket", region="eu-west-1",
         key="", query=[("prefix", "runs/"), ("list-type", "2"),
                        ("continuation-token", "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")],
         payload="", token="FwoGZXIvYXdzEBYaDFAKE/TOKEN+="),
]

out = []
for c in CASES:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", c["token"])
    path = f"/{c['bucket']}" + (f"/{quote(c['key'], safe='/~')}" if c["key"] else "")
    query = c.get("query", [])
    url = f"http://{c['host']}{path}" + (f"?{urlencode(query)}" if query else "")
    body = c["payload"].encode()
    sha = hashlib.sha256(body).hexdigest()
    req = AWSRequest(method=c["method"], url=url, data=body or None,
                     headers={"x-amz-content-sha256": sha})
    S3SigV4Auth(creds, "s3", c["region"]).add_auth(req)
    out.append(dict(
        method=c["method"], host=c["host"], bucket=c["bucket"], key=c["key"], query=query,
        region=c["region"], access_key_id=creds.access_key, secret_access_key=creds.secret_key,
        session_token=c["token"], payload=c["payload"], payload_sha256=sha,
        amz_date=req.headers["X-Amz-Date"], authorization=req.headers["Authorization"],
    ))
json.dump(out, sys.stdout, indent=1)
print()
