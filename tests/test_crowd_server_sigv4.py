"""SigV4: the server's verifier agrees with botocore's signer, and the wire refuses bad requests as AWS does."""
from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from orchestrator.crowd_server.api_errors import AuthError
from orchestrator.crowd_server.sigv4 import verify


AKID, SECRET = "AKIATESTTESTTESTTEST", "s3cr3t/s3cr3t+s3cr3t/s3cr3t+s3cr3t/abcd"


def signed(body=b'{"HITId":"3X"}', url="http://127.0.0.1:8765/", secret=SECRET, **headers) -> AWSRequest:
    req = AWSRequest(method="POST", url=url, data=body, headers={
        "X-Amz-Target": "MTurkRequesterServiceV20170117.GetHIT",
        "Content-Type": "application/x-amz-json-1.1", **headers})
    SigV4Auth(Credentials(AKID, secret), "mturk-requester", "us-east-1").add_auth(req)
    return req


def check(req: AWSRequest, path="/", body=None, **kw):
    hdrs = list(req.headers.items()) + [("Host", "127.0.0.1:8765")]
    data = body if body is not None else (req.body if isinstance(req.body, bytes) else req.body.encode())
    return verify(req.method, path, hdrs, data, lambda k: SECRET if k == AKID else None, **kw)


def test_verifier_accepts_botocore_signatures():
    v = check(signed())
    assert (v.access_key_id, v.region) == (AKID, "us-east-1")
    # headers botocore adds or that proxies fold: extra whitespace is canonicalised
    req = signed(**{"X-Custom": "  a   b  "})
    assert check(req).access_key_id == AKID
    # query strings are canonicalised (sorted, RFC 3986-encoded)
    req = signed(url="http://127.0.0.1:8765/?b=2&a=1%20x")
    assert check(req, path="/?b=2&a=1%20x").access_key_id == AKID


@pytest.mark.parametrize("tamper", ["body", "target", "secret", "path"])
def test_verifier_rejects_tampering(tamper):
    req = signed(secret="wrong" if tamper == "secret" else SECRET)
    if tamper == "target":
        req.headers.replace_header("X-Amz-Target", "MTurkRequesterServiceV20170117.DeleteHIT")
    with pytest.raises(AuthError) as e:
        check(req, path="/other" if tamper == "path" else "/",
              body=b'{"HITId":"3Y"}' if tamper == "body" else None)
    assert e.value.type_name == "InvalidSignatureException"
    assert "signature we calculated does not match" in e.value.message


def test_verifier_rejects_stale_future_unknown_and_unsigned():
    req = signed()
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=16)
    with pytest.raises(AuthError, match="Signature expired"):
        check(req, now=later)
    with pytest.raises(AuthError, match="Signature not yet current"):
        check(req, now=later - dt.timedelta(minutes=32))
    assert check(req, now=later - dt.timedelta(minutes=2)).access_key_id == AKID  # within the 15 min skew
    with pytest.raises(AuthError) as e:
        verify("POST", "/", [("Host", "x")], b"", lambda k: None)
    assert e.value.type_name == "MissingAuthenticationTokenException"
    req.headers.replace_header("Authorization", req.headers["Authorization"].replace(AKID, "AKIAUNKNOWNUNKNOWN00"))
    with pytest.raises(AuthError) as e:
        check(req)
    assert e.value.type_name == "UnrecognizedClientException"


# ---------------------------------------------------------------- on the wire, through boto3

def _client(crowd, **kw):
    import boto3
    from botocore.config import Config
    args = dict(endpoint_url=crowd.srv.endpoint_url, region_name="us-east-1",
                aws_access_key_id=crowd.srv.access_key_id, aws_secret_access_key=crowd.srv.secret_access_key,
                config=Config(retries={"max_attempts": 1}))
    args.update(kw)
    return boto3.client("mturk", **args)


def test_wrong_secret_unknown_key_and_unsigned_are_refused(crowd):
    from botocore import UNSIGNED
    from botocore.config import Config
    with pytest.raises(ClientError) as e:
        _client(crowd, aws_secret_access_key="x" * 40).get_account_balance()
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as e:
        _client(crowd, aws_access_key_id="AKIAAAAAAAAAAAAAAAAA").get_account_balance()
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    with pytest.raises(ClientError) as e:
        _client(crowd, config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1})).get_account_balance()
    assert e.value.response["Error"]["Code"] == "MissingAuthenticationTokenException"
    assert _client(crowd).get_account_balance()["AvailableBalance"]


def test_stale_signature_is_refused(crowd, monkeypatch):
    import botocore.auth
    real = botocore.auth.get_current_datetime
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda *a, **k: real(*a, **k) - dt.timedelta(minutes=20))
    with pytest.raises(ClientError) as e:
        _client(crowd).get_account_balance()
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert e.value.response["Error"]["Message"].startswith("Signature expired: ")


def test_raw_unsigned_post_gets_aws_error_shape(crowd):
    req = urllib.request.Request(crowd.srv.endpoint_url + "/", data=b"{}", method="POST", headers={
        "X-Amz-Target": "MTurkRequesterServiceV20170117.GetAccountBalance",
        "Content-Type": "application/x-amz-json-1.1"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 400
    body = json.loads(e.value.read())
    assert body == {"__type": "com.amazon.coral.service#MissingAuthenticationTokenException",
                    "message": "Missing Authentication Token"}
