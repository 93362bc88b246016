"""QualificationRequirements evaluated for one worker (ActionsGuarded: discover / preview / accept)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from sqlalchemy import func
from sqlmodel import Session, select

from .models import Assignment, Qualification, QualificationType, Worker

PERCENT_APPROVED = "000000000000000000L0"
NUMBER_APPROVED = "00000000000000000040"
LOCALE = "00000000000000000071"
ADULT = "00000000000000000060"
MASTERS = {"2F1QJWKUDD8XADTFD2Q0G6UTO95ALH", "2ARFPLSP75KLA8M8DH1HTEQVJT3SY6"}
BUILTIN = {PERCENT_APPROVED, NUMBER_APPROVED, LOCALE, ADULT} | MASTERS
COMPARATORS = {"LessThan", "LessThanOrEqualTo", "GreaterThan", "GreaterThanOrEqualTo", "EqualTo",
               "NotEqualTo", "Exists", "DoesNotExist", "In", "NotIn"}


@dataclass
class Access:
    discover: bool = True
    preview: bool = True
    accept: bool = True
    unmet: list[dict] = field(default_factory=list)


MAX_REQUIREMENTS = 10
MAX_SET_INTEGERS = 15   # In / NotIn: "you can use up to 15 IntegerValue elements"
MAX_SET_LOCALES = 30    # In / NotIn: "you can use up to 30 LocaleValue elements"
LOCALE_COMPARATORS = {"EqualTo", "NotEqualTo", "In", "NotIn"}
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_SUBDIVISION = re.compile(r"[A-Za-z0-9]{2}")


def validate_requirements(reqs: list[dict], known_type) -> None:
    """Raise ValueError for requirements MTurk would refuse. ``known_type(id)`` says if a custom type exists.

    The shapes (types, enums, required members) are the service model's and were checked before;
    these are the rules of MTurk's QualificationRequirement documentation.
    """
    if len(reqs) > MAX_REQUIREMENTS:
        raise ValueError(f"A HIT can have between zero and {MAX_REQUIREMENTS} QualificationRequirements")
    for n, r in enumerate(reqs, 1):
        tid, comp = r.get("QualificationTypeId", ""), r.get("Comparator", "")
        where = f"QualificationRequirements.{n}"
        if comp not in COMPARATORS:
            raise ValueError(f"{where}: Comparator {comp!r} is not valid")
        if tid not in BUILTIN and not known_type(tid):
            raise ValueError(f"QualificationType {tid} does not exist")
        ints, locs = r.get("IntegerValues") or [], r.get("LocaleValues") or []
        if ints and locs:
            raise ValueError(f"{where}: give IntegerValues or LocaleValues, not both")
        if tid == LOCALE:
            if ints:
                raise ValueError(f"{where}: IntegerValues cannot be used with the Worker_Locale qualification")
            if comp not in LOCALE_COMPARATORS:
                raise ValueError(f"{where}: the Worker_Locale qualification takes the comparators "
                                 f"{', '.join(sorted(LOCALE_COMPARATORS))}, not {comp}")
        elif locs:
            raise ValueError(f"{where}: LocaleValues can only be used with the Worker_Locale qualification")
        if comp in ("Exists", "DoesNotExist"):
            if ints or locs:
                raise ValueError(f"{where}: Comparator {comp} takes no IntegerValues or LocaleValues")
        elif comp in ("In", "NotIn"):
            if not (ints or locs):
                raise ValueError(f"{where}: Comparator {comp} needs IntegerValues or LocaleValues")
            if len(ints) > MAX_SET_INTEGERS:
                raise ValueError(f"{where}: Comparator {comp} takes at most {MAX_SET_INTEGERS} IntegerValues, "
                                 f"got {len(ints)}")
            if len(locs) > MAX_SET_LOCALES:
                raise ValueError(f"{where}: Comparator {comp} takes at most {MAX_SET_LOCALES} LocaleValues, "
                                 f"got {len(locs)}")
        elif len(ints) + len(locs) != 1:
            raise ValueError(f"{where}: Comparator {comp} needs exactly one IntegerValue or LocaleValue")
        for loc in locs:
            if not _COUNTRY.fullmatch(loc.get("Country", "")):
                raise ValueError(f"{where}: Country must be an ISO 3166 two-letter code, got {loc.get('Country')!r}")
            sub = loc.get("Subdivision")
            if sub is not None and not _SUBDIVISION.fullmatch(sub):
                raise ValueError(f"{where}: Subdivision must be an ISO 3166-2 two-character code, got {sub!r}")


def worker_values(s: Session, worker: Worker) -> dict[str, object]:
    """Qualification values the worker holds: custom (Granted) plus the built-in system ones."""
    vals: dict[str, object] = {}
    for q in s.exec(select(Qualification).where(Qualification.worker_id == worker.worker_id,
                                                Qualification.status == "Granted")).all():
        vals[q.qualification_type_id] = q.integer_value
    counts = dict(s.exec(select(Assignment.status, func.count()).where(
        Assignment.worker_id == worker.worker_id,
        Assignment.status.in_(["Approved", "Rejected"])).group_by(Assignment.status)).all())
    approved, rejected = counts.get("Approved", 0), counts.get("Rejected", 0)
    vals[NUMBER_APPROVED] = approved
    vals[PERCENT_APPROVED] = 100 if approved + rejected == 0 else round(100 * approved / (approved + rejected))
    vals[LOCALE] = (worker.locale_country, worker.locale_subdivision)
    vals[ADULT] = 1
    return vals


def _auto_granted(s: Session, tid: str) -> int | None:
    qt = s.get(QualificationType, tid)
    if qt is not None and qt.auto_granted and qt.status == "Active":
        return qt.auto_granted_value if qt.auto_granted_value is not None else 1
    return None


def _locale_match(have: tuple[str, str | None], want: dict) -> bool:
    country, sub = have
    if want.get("Country", "").upper() != country:
        return False
    return not want.get("Subdivision") or want["Subdivision"].upper() == (sub or "")


def satisfied(req: dict, value: object) -> bool:
    comp = req["Comparator"]
    if comp == "Exists":
        return value is not None
    if comp == "DoesNotExist":
        return value is None
    if value is None:
        return False
    ints, locs = req.get("IntegerValues") or [], req.get("LocaleValues") or []
    if isinstance(value, tuple):  # locale
        hits = [_locale_match(value, w) for w in locs]
        if comp in ("EqualTo", "In"):
            return any(hits)
        if comp in ("NotEqualTo", "NotIn"):
            return not any(hits)
        return False
    v = int(value)  # type: ignore[arg-type]
    if comp == "In":
        return v in ints
    if comp == "NotIn":
        return v not in ints
    x = ints[0] if ints else 0
    return {"LessThan": v < x, "LessThanOrEqualTo": v <= x, "GreaterThan": v > x,
            "GreaterThanOrEqualTo": v >= x, "EqualTo": v == x, "NotEqualTo": v != x}[comp]


def access_for(s: Session, worker: Worker, requirements_json: str,
               values: dict[str, object] | None = None) -> Access:
    reqs = json.loads(requirements_json or "[]")
    acc = Access()
    if not reqs:
        return acc
    values = worker_values(s, worker) if values is None else values
    for r in reqs:
        tid = r["QualificationTypeId"]
        value = values.get(tid)
        if value is None and tid not in BUILTIN:
            value = _auto_granted(s, tid)
        if satisfied(r, value):
            continue
        guarded = r.get("ActionsGuarded") or ("PreviewAndAccept" if r.get("RequiredToPreview") else "Accept")
        acc.accept = False
        if guarded in ("PreviewAndAccept", "DiscoverPreviewAndAccept"):
            acc.preview = False
        if guarded == "DiscoverPreviewAndAccept":
            acc.discover = False
        acc.unmet.append(r)
    return acc


# ---------------------------------------------------------------- telling a worker what is missing

def pass_mark(s: Session, qualification_type_id: str) -> int | None:
    """The lowest value that meets every HIT type's requirement on this qualification (the test's
    pass mark), or None when no HIT type asks a minimum of it."""
    from .models import HITType

    need = None
    for reqs_json in s.exec(select(HITType.qualification_requirements)).all():
        for r in json.loads(reqs_json or "[]"):
            if r.get("QualificationTypeId") != qualification_type_id:
                continue
            ints = r.get("IntegerValues") or [0]
            v = {"GreaterThanOrEqualTo": ints[0], "GreaterThan": ints[0] + 1, "EqualTo": ints[0]}.get(r["Comparator"])
            if v is not None:
                need = v if need is None else max(need, v)
    return need


def describe_unmet(s: Session, worker: Worker, req: dict, values: dict[str, object] | None = None) -> dict:
    """What one unmet requirement asks, in a worker's words: ``{"text", "action", "url"}``."""
    values = worker_values(s, worker) if values is None else values
    tid, comp = req["QualificationTypeId"], req["Comparator"]
    ints = req.get("IntegerValues") or []
    have = values.get(tid)
    x = ints[0] if ints else None
    words = {"GreaterThanOrEqualTo": "at least", "GreaterThan": "more than", "LessThan": "fewer than",
             "LessThanOrEqualTo": "at most", "EqualTo": "exactly", "NotEqualTo": "other than"}
    if tid == NUMBER_APPROVED:
        return {"text": f"{words.get(comp, comp)} {x} approved HITs (you have {have})", "action": "", "url": ""}
    if tid == PERCENT_APPROVED:
        return {"text": f"an approval rate of {words.get(comp, comp)} {x}% (yours is {have}%)", "action": "", "url": ""}
    if tid == LOCALE:
        locs = [w.get("Country", "") + (f"-{w['Subdivision']}" if w.get("Subdivision") else "")
                for w in req.get("LocaleValues") or []]
        mine = "-".join(p for p in (have or ("?", None)) if p)
        verb = "outside" if comp in ("NotIn", "NotEqualTo") else "in"
        return {"text": f"a location {verb} {', '.join(locs)} (yours is {mine})", "action": "", "url": ""}
    if tid in MASTERS:
        return {"text": "the Masters qualification, which only Amazon Mechanical Turk grants", "action": "",
                "url": ""}
    if tid == ADULT:
        return {"text": "being 18 or older", "action": "", "url": ""}
    qt = s.get(QualificationType, tid)
    name = qt.name if qt is not None else tid
    if comp == "DoesNotExist":
        return {"text": f"not holding '{name}'", "action": "", "url": ""}
    if qt is not None and qt.test is not None:
        if have is None:
            return {"text": f"passing the test '{name}'" + (f" (at least {x} of 100)" if x is not None else ""),
                    "action": "Take the test", "url": f"/qualifications#{tid}"}
        return {"text": f"passing the test '{name}': your score is {have}" + (f", {x} needed" if x is not None else ""),
                "action": "Retake the test", "url": f"/qualifications#{tid}"}
    if comp == "Exists":
        return {"text": f"the qualification '{name}', which the requester grants", "action": "", "url": ""}
    return {"text": f"'{name}' of {words.get(comp, comp)} {x}" + (f" (yours is {have})" if have is not None else
                                                                    " (you do not hold it)"), "action": "", "url": ""}
