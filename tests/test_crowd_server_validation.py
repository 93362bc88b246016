"""Request validation as strict as botocore's service model (mturk/2017-01-17/service-2.json) and MTurk's
documented rules.  The requests go out through boto3 with its own client-side validation switched off
(``parameter_validation=False``), so the server sees exactly what the audit sent (issue 11, item 4)."""
from __future__ import annotations

import pytest

try:
    from conftest_crowd import api_call_raw, crowd, no_botocore_warnings  # noqa: F401
except ImportError:
    from tests.conftest_crowd import api_call_raw, crowd, no_botocore_warnings  # noqa: F401

LOCALE = "00000000000000000071"
APPROVED = "000000000000000000L0"


@pytest.fixture(scope="module")
def raw(crowd):
    """A boto3 client that sends whatever it is given."""
    return crowd.client(parameter_validation=False, retries={"max_attempts": 1})


def hit_type_args(**kw) -> dict:
    args = dict(Reward="0.05", Title="validation", Description="validation cases", AssignmentDurationInSeconds=600)
    args.update(kw)
    return args


def refused(call) -> tuple[int, str, str]:
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as e:
        call()
    r = e.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r.get("TurkErrorCode", "")


@pytest.mark.parametrize("reward", ["1e2", "1_000", " 0.05", "0.05 ", ".5", "+1", "-1", "0.05\n", "Infinity",
                                    "NaN", "0x10", "1,00", "١٠", "0.001", "", 100, 0.05, True, None,
                                    "99999999999999999999"])
def test_reward_must_match_the_models_pattern(raw, reward):
    status, err, turk = refused(lambda: raw.create_hit_type(**hit_type_args(Reward=reward)))
    assert status == 400 and err == "RequestError"
    assert turk in ("AWS.MechanicalTurk.InvalidParameterValue", "AWS.ParameterOutOfRange", "AWS.MissingParameters")


@pytest.mark.parametrize("reward, stored", [("0.05", "0.05"), ("1", "1.00"), ("1.", "1.00"), ("12.5", "12.50"),
                                            ("0", "0.00")])
def test_rewards_the_pattern_allows_are_stored_exactly(crowd, raw, reward, stored):
    tid = raw.create_hit_type(**hit_type_args(Reward=reward, Title=f"reward {reward!r}"))["HITTypeId"]
    h = crowd.hit(tid)
    assert crowd.mturk.get_hit(HITId=h["HITId"])["HIT"]["Reward"] == stored


def req(comparator: str, qtid: str = APPROVED, **kw) -> dict:
    return {"QualificationTypeId": qtid, "Comparator": comparator, **kw}


LOC = [{"Country": c} for c in ["US", "DE", "FR", "GB", "CA", "AU", "NZ", "IE", "NL", "BE", "AT", "CH", "IT", "ES",
                                "PT", "SE", "NO", "DK", "FI", "PL", "CZ", "SK", "HU", "RO", "BG", "GR", "HR", "SI",
                                "EE", "LV", "LT"]]


@pytest.mark.parametrize("requirement", [
    req("In", IntegerValues=list(range(16))),                         # at most 15 IntegerValues
    req("In", LOCALE, LocaleValues=LOC[:31]),                         # at most 30 LocaleValues
    req("EqualTo", LOCALE, IntegerValues=[1]),                        # no IntegerValues on Worker_Locale
    req("GreaterThan", LOCALE, LocaleValues=[{"Country": "US"}]),     # locales compare by (Not)EqualTo/(Not)In
    req("Exists", ActionsGuarded="Everything"),                       # enum
    req("Exists", IntegerValues=[1]),                                 # Exists takes no values
    req("GreaterThan", IntegerValues=[1, 2]),                         # exactly one value
    req("GreaterThan"),
    req("In"),
    req("EqualTo", IntegerValues=[2**31]),                            # Integer is 32-bit
    req("EqualTo", IntegerValues=["5"]),
    req("EqualTo", LOCALE, LocaleValues=[{"Country": "USA"}]),        # CountryParameters: length 2
    req("EqualTo", LOCALE, LocaleValues=[{"Country": "1!"}]),
    req("EqualTo", LOCALE, LocaleValues=[{"Subdivision": "WA"}]),     # Country is required
    req("EqualTo", IntegerValues=[1], LocaleValues=[{"Country": "US"}]),
    req("Sometimes", IntegerValues=[1]),
    {"Comparator": "Exists"},
    req("Exists", Extra=1),                                           # not a member of the shape
    "not an object",
    None,
])
def test_qualification_requirements_follow_the_model_and_mturks_rules(crowd, requirement):
    # Raw JSON: botocore cannot even serialise some of these.
    status, body = api_call_raw(crowd.srv, "CreateHITType", hit_type_args(QualificationRequirements=[requirement]))
    assert (status, body["__type"]) == (400, "RequestError") and body["TurkErrorCode"].startswith("AWS.")


def test_qualification_requirements_at_the_limits_are_accepted(raw):
    ok = [req("In", IntegerValues=list(range(15))), req("In", LOCALE, LocaleValues=LOC[:30]),
          req("NotEqualTo", LOCALE, LocaleValues=[{"Country": "US", "Subdivision": "WA"}]),
          req("GreaterThanOrEqualTo", IntegerValues=[95], ActionsGuarded="DiscoverPreviewAndAccept")]
    assert raw.create_hit_type(**hit_type_args(Title="limits", QualificationRequirements=ok))["HITTypeId"]


@pytest.mark.parametrize("call", [
    lambda m: m.create_hit_type(**hit_type_args(AssignmentDurationInSeconds="600")),
    lambda m: m.create_hit_type(**hit_type_args(AssignmentDurationInSeconds=2**70)),   # Long is 64-bit
    lambda m: m.create_hit_type(**hit_type_args(AssignmentDurationInSeconds=600.5)),
    lambda m: m.create_hit_type(**hit_type_args(Title=["a"])),
    lambda m: m.list_hits(MaxResults=0),
    lambda m: m.list_hits(MaxResults=101),
    lambda m: m.list_hits(MaxResults="10"),
    lambda m: m.list_hits(NextToken=""),
    lambda m: m.get_hit(HITId="lower-case-id"),
    lambda m: m.get_hit(HITId="A" * 65),
    lambda m: m.get_hit(HITId=7),
    lambda m: m.get_hit(),
    lambda m: m.list_assignments_for_hit(HITId="3ABC", AssignmentStatuses=["Accepted"]),
    lambda m: m.notify_workers(Subject="s", MessageText="t", WorkerIds=["not-a-worker-id"]),
    lambda m: m.associate_qualification_with_worker(QualificationTypeId="3ABC", WorkerId="AX", IntegerValue=2**31),
    lambda m: m.create_hit_with_hit_type(HITTypeId="3ABC", LifetimeInSeconds=60, UniqueRequestToken="x" * 65),
    lambda m: m.create_qualification_type(Name="n", Description="d", QualificationTypeStatus="Sometimes"),
    lambda m: m.create_qualification_type(Name="n", Description="d", QualificationTypeStatus="Active",
                                          AutoGranted="yes"),
], ids=lambda f: "")
def test_shapes_types_and_ranges_are_refused_with_request_errors(raw, call):
    status, err, turk = refused(lambda: call(raw))
    assert (status, err) == (400, "RequestError") and turk.startswith("AWS.")


@pytest.mark.parametrize("op, params", [
    ("CreateHITType", hit_type_args(Unknown="x")),                       # not a member of the input shape
    ("CreateHITType", hit_type_args(QualificationRequirements={"a": 1})),
    ("UpdateExpirationForHIT", {"HITId": "3ABC", "ExpireAt": "tomorrow"}),
    ("UpdateExpirationForHIT", {"HITId": "3ABC", "ExpireAt": 1e300}),
    ("GetHIT", {"HITId": "3ABC", "HITId ": "x"}),
    ("GetAccountBalance", {"x": 1}),
    ("GetAccountBalance", []),
    ("GetAccountBalance", b"[1, 2"),
    ("GetAccountBalance", b'{"a": NaN}'),
    ("GetAccountBalance", b'{"a": Infinity}'),
    ("CreateHITType", b'{"Reward": "\\ud800", "Title": "t", "Description": "d", "AssignmentDurationInSeconds": 60}'),
    ("GetAccountBalance", b"\xff\xfe{}"),
    ("GetAccountBalance", b"[" * 100000),
])
def test_raw_bodies_the_model_refuses(crowd, op, params):
    status, body = api_call_raw(crowd.srv, op, params)
    assert (status, body.get("__type")) == (400, "RequestError"), body
    assert body["TurkErrorCode"].startswith("AWS.") and body["Message"]


def test_expiration_far_in_the_future_is_not_stored(crowd):
    h = crowd.hit()
    status, _ = api_call_raw(crowd.srv, "UpdateExpirationForHIT", {"HITId": h["HITId"], "ExpireAt": 1e300})
    assert status == 400
    assert crowd.mturk.get_hit(HITId=h["HITId"])["HIT"]["Expiration"].year < 3000


def test_validation_messages_name_the_member_and_the_constraint(raw):
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as e:
        raw.create_hit_type(**hit_type_args(Reward="1e2"))
    msg = e.value.response["Error"]["Message"]
    assert "'Reward'" in msg and "regular expression pattern" in msg
