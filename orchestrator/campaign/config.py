"""The campaign configuration: ``DIR/campaign.toml``, a tree of dataclasses.

``labelprop init DIR`` writes every parameter (with a comment header that documents
each key, since TOML values written by ``tomli_w`` cannot carry comments), so a
campaign is readable and diffable.  :func:`load_config` validates types, ranges and
unknown keys; every error names the file and the ``[section] key``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from clustering.twolevel import DEFAULT_PART_SIZE, DEFAULT_REPS
from orchestrator.crowd.annotators import SECONDS_PER_QUESTION
from orchestrator.atomic import atomic_write_text
from clustering.build import ClusterParams as _CP
from orchestrator.crowd.cost import CostModel as _CM
from orchestrator.errors import LabelpropError
from orchestrator.search.params import ParamError, default_of, help_of, non_negative, param, validate
from orchestrator.search.search import SearchParams as _SP

__all__ = [
    "CONFIG_NAME", "CampaignSection", "StoreSection", "SearchSection", "ClusteringSection",
    "IterateSection", "QualificationSection", "AssetsSection", "SimulatedSection", "CrowdSection", "CampaignConfig",
    "default_config", "load_config", "save_config", "config_path", "resolve_store_url", "apply_backend_defaults",
]

CONFIG_NAME = "campaign.toml"
CROWD_BACKENDS = ("mturk", "simulated", "server", "prolific")
ASSET_STORES = ("local", "s3")
MAX_PRESIGN_SECONDS = 7 * 86_400   # SigV4 presigned URLs live at most 7 days


@dataclass
class CampaignSection:
    name: str = param("campaign", "The campaign's name.")
    seed: int = param(0, "Every random draw derives from it.")
    created: str = param("", "When `labelprop init` wrote this file (ISO-8601, UTC).")


@dataclass
class StoreSection:
    url: str = param("sqlite:///campaign.db",
                     "SQLAlchemy URL of the campaign store; sqlite paths are relative to this "
                     "directory; e.g. postgresql+psycopg://user@host/db for many pollers.")


def _section_fields(spec) -> list[tuple]:
    """``make_dataclass`` fields for the ``campaign.toml`` keys of the core dataclass ``spec``:
    same names, types, defaults and metadata (help, check)."""
    hints = typing.get_type_hints(spec)
    return [(f.name, hints[f.name], field(default=f.default, metadata=f.metadata))
            for f in dataclasses.fields(spec) if f.metadata.get("config", True)]


#: ``[search]``: the keys of :class:`~orchestrator.search.search.SearchParams` (defaults, help and checks
#: are its own: one place for each number) plus the campaign's own search settings.
SearchSection = dataclasses.make_dataclass("SearchSection", _section_fields(_SP) + [
    ("budget_questions", int, param(0, "Stop after this many questions (0: no limit).",
                                    check=non_negative("off"))),
    ("calibration", str, param("", "File written by `labelprop calibrate --write`, relative to the "
                                   "campaign directory: P(accept | S) for the value strategies (empty: a "
                                   "ramp from kpa to 1).")),
    ("class_quotas", dict[str, int], param(default_factory=dict, help="[search.class_quotas]: category "
                                                                      "name (or id) = number of masks wanted.")),
])
SearchSection.__module__ = __name__


@dataclass
class ClusteringSection:
    score_weight: float = param(default_of(_CP, "score_weight"),
                                f"{help_of(_CP, 'score_weight')} 1.0: as much as all feature "
                                f"dimensions together.")
    exact_limit: int = param(0, "Classes larger than this are clustered in two levels (0: the "
                                "largest class whose distance matrix fits in 80% of the machine's "
                                "memory, about 70,000 masks on 24 GiB).")
    part_size: int = param(DEFAULT_PART_SIZE, "Largest part of the two-level path (exact trees "
                                              "inside).")
    reps: int = param(DEFAULT_REPS, "Fewest representatives per atom for the complete-linkage "
                                    "distance between atoms (more when the class is small).")


@dataclass
class IterateSection:
    # `labelprop iterate` drops a new detection that overlaps a mask accepted in an earlier
    # round on the same image
    overlap_iou: float = param(0.5, "Drop a new detection whose mask IoU with an accepted mask "
                                    "of the same image is at least this.")
    overlap_inside: float = param(0.8, "Or whose area lies at least this much inside one (a "
                                       "part of an already annotated object).")


@dataclass
class QualificationSection:
    enabled: bool = param(True, "Give the test (false: none).")
    questions: int = param(10, "Questions of the test.")
    pass_fraction: float = param(0.8, "Share of right answers that passes it.")
    test_duration_seconds: int = param(600, "Time allowed for the test.")
    retry_delay_seconds: int = param(600, "A worker who fails may retake it after this (`init "
                                          "--backend mturk` writes MTurk's usual one day).")
    min_percent_approved: int = param(0, "Built-in PercentAssignmentsApproved requirement (0: "
                                         "off; `init --backend mturk` writes 95).")
    min_hits_approved: int = param(0, "Built-in NumberHITsApproved requirement (0: off; `init "
                                      "--backend mturk` writes 100).")
    locales: list[str] = param(default_factory=list, help="Worker locales, e.g. [\"US\", \"GB\"] "
                                                          "(empty: any).")
    gold_min_accuracy: float = param(0.8, "Soft-block workers below this gold accuracy.")
    min_seconds_per_question: float = param(0.3, "Flag HITs answered faster than this.")
    min_gold_answers: int = param(10, "Gold answers before a worker's answers count (or block); "
                                      "they are held until then.")
    reject_below: float = param(0.5, "Reject an assignment whose gold accuracy on it is below "
                                     "this.")
    reject_fast: bool = param(False, "Reject (not only flag) implausibly fast assignments.")
    hold_seconds: int = param(21_600, "Held answers of a worker on probation expire after this "
                                      "(and are asked again).")
    test_counts_as_gold: bool = param(True, "The test's answers start a worker's gold record.")


@dataclass
class AssetsSection:
    """Where the mask overlay images shown in HITs are published (see orchestrator/crowd/assets.py)."""
    store: str = param("local", "local: files in local_dir, served by `labelprop crowd-server "
                                "--assets DIR` at base_url/assets/ (with the bundled crowd server "
                                "they are also uploaded to it); s3: a bucket (it needs a CORS "
                                "rule, see orchestrator/crowd/assets.py).")
    local_dir: str = param("assets", "Relative to the campaign directory.")
    base_url: str = param("", "Public URL serving local_dir at /assets/ (empty: "
                              "crowd.endpoint_url).")
    s3_bucket: str = param("", "The bucket of store = s3.")
    s3_prefix: str = param("labelprop/", "Key prefix in the bucket.")
    s3_region: str = param("", "Empty: boto3's default.")
    s3_endpoint_url: str = param("", "Empty: AWS; else any S3-compatible endpoint.")
    presign_seconds: int = param(0, "0: public URLs (bucket policy); else presigned GET URLs valid "
                                    "this long (at most 604800, and longer than lifetime + "
                                    "assignment duration).")
    overlay_size: int = param(384, "Pixels (square JPEG).")
    overlay_context: float = param(0.6, "Margin around the mask box, as a fraction of its larger "
                                        "side.")


@dataclass
class SimulatedSection:
    """The simulated crowd of ``backend = "simulated"`` (see orchestrator/crowd/backends/simulated.py)."""
    workers: str = param("", "A spec such as \"ann:accuracy=0.95;bob:spammer\" (empty: one "
                             "worker).")
    error_rate: float = param(0.0, "That one worker's probability of a wrong answer.")
    seconds_per_question: float = param(SECONDS_PER_QUESTION, "Simulated answering time.")


@dataclass
class ProlificSection:
    """The Prolific study of ``backend = "prolific"`` (see orchestrator/crowd/backends/prolific.py)."""
    api_url: str = param("https://api.prolific.com/api/v1", "Prolific's API.")
    public_url: str = param("", "The crowd server's public https URL (empty: "
                                "crowd.endpoint_url).")
    account: str = param("academic", "academic (33.3% fee) | company (42.8% fee).")
    fee_permille: int = param(0, "0: the account's fee.")
    min_hourly_usd: float = param(8.0, "Prolific's minimum pay per hour (check yours on "
                                       "Prolific).")
    hits_per_place: int = param(3, "HITs one place pays for (reward = hits_per_place * "
                                   "reward_usd).")
    extra_hits: int = param(2, "More HITs a participant may do, each paid as a bonus of "
                               "reward_usd.")
    estimated_minutes: int = param(3, "estimated_completion_time of one place (minutes).")
    places_per_step: int = param(5, "Places added at a time while the search needs answers.")
    study_name: str = param("", "Empty: crowd.title.")
    wait_seconds: int = param(300, "A participant finding no HIT waits this long for the next "
                                   "poll's HITs.")
    bonus_settle_seconds: int = param(3600, "A bonus pay call of unknown outcome is re-checked "
                                            "this long before paying again.")


@dataclass
class CrowdSection:
    backend: str = param("simulated", "mturk | server | simulated | prolific.")
    endpoint_url: str = param("", "Empty: the platform's default (production or sandbox).")
    sandbox: bool = param(True, "Use the MTurk sandbox.")
    # the cost fields' defaults and help are the cost model's (orchestrator.crowd.cost.CostModel)
    reward_usd: float = param(default_of(_CM, "reward_usd"), help_of(_CM, "reward_usd"))
    questions_per_hit: int = param(default_of(_CM, "questions_per_hit"),
                                   help_of(_CM, "questions_per_hit"))
    gold_per_hit: int = param(default_of(_CM, "gold_per_hit"), help_of(_CM, "gold_per_hit"))
    assignments_per_hit: int = param(default_of(_CM, "assignments_per_hit"),
                                     help_of(_CM, "assignments_per_hit"))
    max_hits_in_flight: int = param(20, "HITs posted and not yet answered, at most.")
    budget_usd: float = param(0.0, "0: no limit (refused by paying platforms such as MTurk "
                                   "production); fees are added to the reward.")
    title: str = param("Is this object outlined correctly? (yes/no, keyboard y/n)",
                       "What workers see (with description and keywords).")
    description: str = param("Look at each highlighted object and answer whether the outline "
                             "covers it accurately.", "Shown to workers with the title.")
    keywords: str = param("image, segmentation, yes/no, quick", "Where workers search for HITs.")
    lifetime_seconds: int = param(3 * 86_400, "How long a HIT stays posted.")
    assignment_duration_seconds: int = param(3_600, "Time a worker has for one HIT.")
    auto_approval_delay_seconds: int = param(3 * 86_400, "Submitted work not reviewed by then is "
                                                         "approved.")
    masters: bool = param(default_of(_CM, "masters"), help_of(_CM, "masters"))
    allow_unsure: bool = param(False, "Offer an \"unsure\" answer (re-asked, never counted).")
    aggregation: str = param("majority", "With assignments_per_hit > 1: majority | dawid-skene "
                                         "(crowd-kit).")
    ordered: bool = param(True, "Process HITs in posting order, so a resumed or repeated run "
                                "posts the same HITs.")
    max_reposts: int = param(2, "Re-post a HIT that expired unanswered at most this often.")
    concurrency: int = param(8, "Parallel requests to the crowd platform.")
    platform_wait_seconds: int = param(900, "`run` waits this long for an unreachable platform, "
                                            "then stops.")
    qualification: QualificationSection = field(default_factory=QualificationSection)
    assets: AssetsSection = field(default_factory=AssetsSection)
    simulated: SimulatedSection = field(default_factory=SimulatedSection)
    prolific: ProlificSection = field(default_factory=ProlificSection)


@dataclass
class CampaignConfig:
    campaign: CampaignSection = field(default_factory=CampaignSection)
    store: StoreSection = field(default_factory=StoreSection)
    search: SearchSection = field(default_factory=SearchSection)
    clustering: ClusteringSection = field(default_factory=ClusteringSection)
    crowd: CrowdSection = field(default_factory=CrowdSection)
    iterate: IterateSection = field(default_factory=IterateSection)


#: What a section is for, before its keys, in the comment header.
_INTROS = {
    "crowd.qualification": "A test with an answer key before the first HIT, built-in requirements "
                           "and gold-based quality control.",
    "crowd.assets": "Where HIT images (mask overlays) are published.",
    "iterate": "`labelprop iterate` (retrain on accepted masks, detect again, next round).",
    "crowd.simulated": "The crowd of backend = \"simulated\".",
    "crowd.prolific": "The study of backend = \"prolific\" (README: Paid crowd on Prolific). The "
                      "API token comes from PROLIFIC_TOKEN in the environment, never from this "
                      "file.",
}


def _subsection(f: dataclasses.Field):
    """The section dataclass of a field that is a nested table (``[crowd.assets]``), else None."""
    sec = f.default_factory
    return sec if dataclasses.is_dataclass(sec) else None


def _sections(cls=None, prefix: str = ""):
    """``(title, section dataclass)`` of every table of ``campaign.toml``, in file order."""
    for f in dataclasses.fields(cls or CampaignConfig):
        sec = _subsection(f)
        if sec is not None:
            yield prefix + f.name, sec
            yield from _sections(sec, prefix + f.name + ".")


def _comment_block(title: str, section) -> str:
    """``# [title]  intro  key: help ...`` for every field of ``section`` with help text, wrapped
    like the rest (keys without help are named with the one before them)."""
    import textwrap

    parts = [_INTROS[title]] if title in _INTROS else []
    bare = []
    for f in dataclasses.fields(section):
        if _subsection(f) is not None:
            continue
        h = f.metadata.get("help")
        if h:
            parts.append(f"{', '.join([*bare, f.name])}: {h}")
            bare = []
        else:
            bare.append(f.name)
    if bare:
        parts.append(", ".join(bare) + ".")
    lead = f"# [{title}] ".ljust(15)
    return "\n".join(textwrap.wrap("  ".join(parts), width=92, initial_indent=lead,
                                   subsequent_indent="#" + " " * 14, break_on_hyphens=False))


_HEADER = ("# labelprop campaign configuration (written by `labelprop init`; edit freely).\n#\n"
           + "\n".join(_comment_block(t, s) for t, s in _sections()) + "\n")


def config_path(campaign_dir: str | os.PathLike) -> Path:
    return Path(campaign_dir) / CONFIG_NAME


def apply_backend_defaults(cfg: CampaignConfig, backend: str) -> CampaignConfig:
    """Set ``crowd.backend`` and the defaults that suit it: MTurk's population filters (approval
    rate 95%, 100 approved HITs) and a one-day test retry delay for ``mturk``; none of them for
    the bundled server (an in-house team's new workers have no MTurk history)."""
    cfg.crowd.backend = backend
    q = cfg.crowd.qualification
    if backend == "mturk":
        q.min_percent_approved, q.min_hits_approved, q.retry_delay_seconds = 95, 100, 86_400
    else:
        q.min_percent_approved, q.min_hits_approved, q.retry_delay_seconds = 0, 0, 600
    return cfg


def default_config(name: str = "campaign", seed: int = 0) -> CampaignConfig:
    cfg = CampaignConfig()
    cfg.campaign.name = name
    cfg.campaign.seed = seed
    cfg.campaign.created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return cfg


# --------------------------------------------------------------------------- dict <-> dataclass
def _to_dict(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = _to_dict(v) if dataclasses.is_dataclass(v) else v
    return out


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp))


def _from_dict(cls, data: dict, where: str, file: Path):
    if not isinstance(data, dict):
        raise LabelpropError(f"{file}: {where} must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise LabelpropError(f"{file}: unknown key {where}{'.' if where else ''}{unknown[0]}"
                             f" (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key = f"{where}.{f.name}" if where else f.name
        v = data[f.name]
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _from_dict(tp, v, key, file)
            continue
        origin = typing.get_origin(tp)
        if origin is dict:
            if not isinstance(v, dict) or not all(
                    isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v.values()):
                raise LabelpropError(f"{file}: {key} must be a table of non-negative integers")
            kwargs[f.name] = {str(k): int(x) for k, x in v.items()}
            continue
        if origin is list:
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise LabelpropError(f"{file}: {key} must be a list of strings")
            kwargs[f.name] = list(v)
            continue
        ok = (isinstance(v, bool) if tp is bool
              else isinstance(v, (int, float)) and not isinstance(v, bool) if tp is float
              else isinstance(v, int) and not isinstance(v, bool) if tp is int
              else isinstance(v, str))
        if not ok:
            raise LabelpropError(f"{file}: {key} must be {_type_name(tp)}, got {v!r}")
        if tp is float:
            v = float(v)
            if not math.isfinite(v):
                raise LabelpropError(f"{file}: {key} must be finite, got {v!r}")
        kwargs[f.name] = v
    return cls(**kwargs)


def validate_config(cfg: CampaignConfig, file: Path | str = CONFIG_NAME) -> CampaignConfig:
    """Range checks; raises a one-line :class:`LabelpropError` naming ``file`` and the key."""
    def bad(key: str, msg: str):
        raise LabelpropError(f"{file}: {key} {msg}")

    def checked(spec, section, prefix: str, names=None) -> None:
        """The core's own checks (orchestrator.search.params) on a section, named as in this file."""
        try:
            validate(spec, section, names)
        except ParamError as exc:
            raise LabelpropError(f"{file}: {exc.render(lambda n: prefix + n)}") from None

    it = cfg.iterate
    for k in ("overlap_iou", "overlap_inside"):
        v = getattr(it, k)
        if not 0.0 < v <= 1.0:
            bad(f"iterate.{k}", f"must be in (0, 1], got {v!r}")
    s = cfg.search
    checked(_SP, s, "search.")
    checked(SearchSection, s, "search.", ("budget_questions",))
    if s.calibration and (os.path.isabs(s.calibration) or ".." in Path(s.calibration).parts):
        bad("search.calibration", f"must be a path inside the campaign directory, got {s.calibration!r}")
    c = cfg.clustering
    if c.score_weight < 0:
        bad("clustering.score_weight", f"must be >= 0, got {c.score_weight}")
    if c.exact_limit != 0 and c.exact_limit < 2:
        bad("clustering.exact_limit", f"must be at least 2 (or 0: derived from the machine's "
                                      f"memory), got {c.exact_limit}")
    if c.part_size < 2:
        bad("clustering.part_size", f"must be at least 2, got {c.part_size}")
    if c.reps < 1:
        bad("clustering.reps", f"must be at least 1, got {c.reps}")
    if not cfg.store.url.strip():
        bad("store.url", "must not be empty")
    w = cfg.crowd
    from orchestrator.crowd.backends import backend_names

    if w.backend not in backend_names():
        bad("crowd.backend", f"must be one of {', '.join(backend_names())}, got {w.backend!r}")
    checked(_CM, w, "crowd.")
    if w.budget_usd < 0:
        bad("crowd.budget_usd", f"must be >= 0, got {w.budget_usd}")
    for k in ("max_hits_in_flight", "lifetime_seconds", "assignment_duration_seconds"):
        if getattr(w, k) < 1:
            bad(f"crowd.{k}", f"must be at least 1, got {getattr(w, k)}")
    for k in ("auto_approval_delay_seconds",):
        if getattr(w, k) < 0:
            bad(f"crowd.{k}", f"must be >= 0, got {getattr(w, k)}")
    if w.gold_per_hit >= w.questions_per_hit:
        bad("crowd.gold_per_hit", f"({w.gold_per_hit}) must be below crowd.questions_per_hit"
            f" ({w.questions_per_hit})")
    if w.aggregation not in ("majority", "dawid-skene"):
        bad("crowd.aggregation", f"must be majority or dawid-skene, got {w.aggregation!r}")
    for k in ("max_reposts",):
        if getattr(w, k) < 0:
            bad(f"crowd.{k}", f"must be >= 0, got {getattr(w, k)}")
    if not 1 <= w.concurrency <= 64:
        bad("crowd.concurrency", f"must be in [1, 64], got {w.concurrency}")
    if w.platform_wait_seconds < 0:
        bad("crowd.platform_wait_seconds", f"must be >= 0, got {w.platform_wait_seconds}")
    pr = w.prolific
    if pr.account not in ("academic", "company"):
        bad("crowd.prolific.account", f"must be academic or company, got {pr.account!r}")
    for k in ("hits_per_place", "estimated_minutes", "places_per_step"):
        if getattr(pr, k) < 1:
            bad(f"crowd.prolific.{k}", f"must be at least 1, got {getattr(pr, k)}")
    for k in ("extra_hits", "fee_permille", "bonus_settle_seconds"):
        if getattr(pr, k) < 0:
            bad(f"crowd.prolific.{k}", f"must be >= 0, got {getattr(pr, k)}")
    if w.backend == "prolific" and w.reward_usd * pr.hits_per_place * 60 / pr.estimated_minutes \
            < pr.min_hourly_usd - 1e-9:
        bad("crowd.prolific.hits_per_place", f"* crowd.reward_usd pays ${w.reward_usd * pr.hits_per_place:.2f} for "
            f"{pr.estimated_minutes} minutes, below Prolific's minimum of ${pr.min_hourly_usd:.2f} an hour "
            f"(raise crowd.reward_usd or lower crowd.prolific.estimated_minutes)")
    sim = w.simulated
    if not 0.0 <= sim.error_rate <= 1.0:
        bad("crowd.simulated.error_rate", f"must be in [0, 1], got {sim.error_rate!r}")
    if not sim.seconds_per_question > 0:
        bad("crowd.simulated.seconds_per_question", f"must be > 0, got {sim.seconds_per_question!r}")
    if sim.workers.strip():
        from orchestrator.crowd_server.simulated_workers import parse_workers_spec

        try:
            parse_workers_spec(sim.workers)
        except LabelpropError as exc:
            bad("crowd.simulated.workers", str(exc).split(": ", 1)[-1])
    q = w.qualification
    for k in ("pass_fraction", "gold_min_accuracy", "reject_below"):
        if not 0.0 <= getattr(q, k) <= 1.0:
            bad(f"crowd.qualification.{k}", f"must be in [0, 1], got {getattr(q, k)!r}")
    if not 0 <= q.min_percent_approved <= 100:
        bad("crowd.qualification.min_percent_approved",
            f"must be in [0, 100], got {q.min_percent_approved}")
    for k in ("questions", "test_duration_seconds", "retry_delay_seconds", "min_hits_approved",
              "min_gold_answers", "hold_seconds"):
        if getattr(q, k) < 0:
            bad(f"crowd.qualification.{k}", f"must be >= 0, got {getattr(q, k)}")
    if q.min_seconds_per_question < 0:
        bad("crowd.qualification.min_seconds_per_question",
            f"must be >= 0, got {q.min_seconds_per_question}")
    a = w.assets
    if a.store not in ASSET_STORES:
        bad("crowd.assets.store", f"must be one of {', '.join(ASSET_STORES)}, got {a.store!r}")
    if a.store == "s3" and not a.s3_bucket.strip():
        bad("crowd.assets.s3_bucket", "must be set when crowd.assets.store = \"s3\"")
    if a.store == "local" and not a.local_dir.strip():
        bad("crowd.assets.local_dir", "must not be empty")
    for k in ("base_url", "s3_endpoint_url"):
        v = getattr(a, k)
        if v and not v.startswith(("http://", "https://")):
            bad(f"crowd.assets.{k}", f"must be an http(s) URL, got {v!r}")
    if not 0 <= a.presign_seconds <= MAX_PRESIGN_SECONDS:
        bad("crowd.assets.presign_seconds", f"must be in [0, {MAX_PRESIGN_SECONDS}] (7 days), "
            f"got {a.presign_seconds}")
    if a.presign_seconds and a.presign_seconds < w.lifetime_seconds + w.assignment_duration_seconds:
        bad("crowd.assets.presign_seconds", f"({a.presign_seconds}) must outlive a HIT: at least "
            f"crowd.lifetime_seconds + crowd.assignment_duration_seconds "
            f"({w.lifetime_seconds + w.assignment_duration_seconds})")
    if not 64 <= a.overlay_size <= 2048:
        bad("crowd.assets.overlay_size", f"must be in [64, 2048], got {a.overlay_size}")
    if not 0.0 <= a.overlay_context <= 5.0:
        bad("crowd.assets.overlay_context", f"must be in [0, 5], got {a.overlay_context}")
    return cfg


def config_from_dict(data: dict, file: Path | str = CONFIG_NAME) -> CampaignConfig:
    return validate_config(_from_dict(CampaignConfig, data, "", Path(file)), file)


def dumps_config(cfg: CampaignConfig) -> str:
    return _HEADER + "\n" + tomli_w.dumps(_to_dict(cfg))


# --------------------------------------------------------------------------- files
def load_config(campaign_dir: str | os.PathLike) -> CampaignConfig:
    """Read and validate ``DIR/campaign.toml``."""
    path = config_path(campaign_dir)
    if not Path(campaign_dir).is_dir():
        raise LabelpropError(f"{campaign_dir}: no such campaign directory (run `labelprop init`)")
    if not path.is_file():
        raise LabelpropError(f"{path}: not found; is {campaign_dir} a campaign? (run `labelprop init`)")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise LabelpropError(f"{path}: invalid TOML: {exc}") from None
    return config_from_dict(data, path)


def save_config(campaign_dir: str | os.PathLike, cfg: CampaignConfig) -> Path:
    """Validate and write ``DIR/campaign.toml`` atomically (temp file + ``os.replace``)."""
    path = config_path(campaign_dir)
    validate_config(cfg, path)
    atomic_write_text(path, dumps_config(cfg))
    return path


def resolve_store_url(campaign_dir: str | os.PathLike, url: str) -> str:
    """Make a relative ``sqlite:///file.db`` URL relative to the campaign directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix):
        rest = url[len(prefix):]
        db, sep, query = rest.partition("?")
        if db and db != ":memory:" and not os.path.isabs(db):
            db = str((Path(campaign_dir) / db).resolve())
            return prefix + db + sep + query
    return url
