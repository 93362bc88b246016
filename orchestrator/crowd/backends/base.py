"""The one interface between a crowd campaign and a crowd platform.

The poll pass (:mod:`orchestrator.crowd.poll`) and posting (:mod:`orchestrator.crowd.posting`) talk to
a platform only through :class:`CrowdBackend`.  The orchestrator keeps the intent ledger:
every remote effect is recorded in the campaign store *before* the backend is asked to
make it, and every backend call is idempotent (a token, or an "already done" state the
backend reports), so a pass killed at any line and rerun posts nothing twice and pays
nothing twice.  A backend therefore keeps no state of its own that the campaign needs.

Vocabulary (MTurk's, since the first platforms spoke it): a *task type* is what workers
choose work by (title, reward, durations, requirements); a *task* (HIT) shows a list of
items (questions) and wants ``max_assignments`` submissions; a *submission*
(assignment) is one worker's answers to one task; a *qualification* is a named value a
worker holds (the test, the soft block).

A backend provides (see :class:`CrowdBackend` for the exact contract):

- setup:      ``create_qualification``, ``ensure_task_type``, ``eligible_workers``
- posting:    ``render`` (the task's content), ``publish`` (idempotent by token),
              ``find_by_annotation``
- reading:    ``list_ready``, ``list_submissions``, ``parse_answers``, ``answer_seconds``,
              ``qualification_scores``, ``list_tasks``
- effects:    ``approve``, ``reject``, ``assignment_status``, ``block``, ``expire``,
              ``dispose``, ``pay_bonus`` (idempotent by token; the orchestrator records a
              bonus intent first, since some platforms' bonus calls are not idempotent)
- money:      ``fees`` (:class:`~orchestrator.crowd.ledger.FeeRules`), ``paying`` (a
              paying backend refuses to post without a budget)

Errors: :class:`BackendError` with a portable ``code`` (the orchestrator decides by
code), :class:`PlatformUnavailable` when the platform cannot be reached (``run`` waits
and retries; the pass is crash-safe, so retrying it is always correct).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol, runtime_checkable

from orchestrator.crowd.ledger import FeeRules
from orchestrator.errors import LabelpropError

__all__ = ["BackendError", "PlatformUnavailable", "Requirement", "TaskType", "TaskItem", "Task",
           "PublishResult", "TaskRef", "Submission", "TaskInfo", "QualificationTest", "CrowdBackend",
           "ALREADY_EXISTS", "INVALID_STATE", "NOT_FOUND", "WORKER_NOT_FOUND", "QUALIFICATION_EXISTS",
           "REQUEST"]

ALREADY_EXISTS = "already_exists"            # publish: the token was used; ``existing_id`` names the task
INVALID_STATE = "invalid_state"              # approve/reject/dispose: the object is not in a state allowing it
NOT_FOUND = "not_found"                      # no such task / assignment
WORKER_NOT_FOUND = "worker_not_found"
QUALIFICATION_EXISTS = "qualification_exists"
REQUEST = "request"                          # any other refusal (bad parameters, insufficient funds, ...)


class BackendError(LabelpropError):
    """The platform refused a request.  ``code``: one of the constants above; ``existing_id``:
    for ``already_exists``, the task an earlier try with the same token created."""

    def __init__(self, operation: str, code: str, message: str, *, existing_id: str | None = None,
                 platform_code: str = ""):
        super().__init__(f"{operation}: {message}")
        self.operation, self.code, self.message = operation, code, message
        self.existing_id, self.platform_code = existing_id, platform_code


class PlatformUnavailable(LabelpropError):
    """The platform could not be reached (connection refused, timeouts after retries, 5xx)."""


@dataclass(frozen=True)
class Requirement:
    """One condition a worker must meet to take a task type's tasks.

    ``kind``: ``approval_rate`` (percent >= ``value``), ``approved_tasks`` (count >= ``value``),
    ``locale`` (country or country-subdivision in ``values``), ``masters``, ``qualification``
    (custom qualification ``qualification_id`` with a value >= ``value``), ``not_qualification``
    (the worker must not hold ``qualification_id``: soft blocks; it also hides the tasks).
    """
    kind: str
    value: int = 0
    values: tuple[str, ...] = ()
    qualification_id: str = ""
    label: str = ""              # what a worker is told (e.g. the test's name)


@dataclass(frozen=True)
class TaskType:
    title: str
    description: str
    keywords: str
    reward_cents: int
    assignment_seconds: int
    auto_approve_seconds: int
    requirements: tuple[Requirement, ...] = ()


@dataclass(frozen=True)
class TaskItem:
    """One question of a task.  ``identifier`` is opaque (gold and real questions look alike);
    the rest lets a backend render the item (``image_url``, ``class_name``) or, for a simulated
    crowd, answer it (``mask_id`` / ``gold_id``)."""
    identifier: str
    image_url: str = ""
    class_name: str = "object"
    mask_id: int | None = None
    gold_id: int | None = None


@dataclass(frozen=True)
class Task:
    token: str                   # idempotency token (unique per intent attempt)
    annotation: str              # names the intent on the platform (found again past the token window)
    type_id: str
    max_assignments: int
    lifetime_seconds: int
    items: tuple[TaskItem, ...]
    content: str | None = None   # what :meth:`CrowdBackend.render` made of the items


@dataclass(frozen=True)
class PublishResult:
    task_id: str
    recovered: bool = False      # an earlier (crashed) try with the same token had created it


@dataclass(frozen=True)
class TaskRef:
    task_id: str
    annotation: str | None = None


@dataclass(frozen=True)
class Submission:
    assignment_id: str
    task_id: str
    worker_id: str
    status: str                  # Submitted | Approved | Rejected
    raw_answer: str              # the platform's answer document (stored verbatim)
    accept_time: float | None = None
    submit_time: float | None = None


@dataclass(frozen=True)
class TaskInfo:
    task_id: str
    type_id: str
    status: str                  # Assignable | Unassignable | Reviewable | Reviewing | Disposed
    annotation: str | None = None
    max_assignments: int = 1
    pending: int = 0
    available: int = 0
    completed: int = 0
    expiration: float | None = None


@dataclass(frozen=True)
class QualificationTest:
    test: str                    # the test document (MTurk: QuestionForm XML)
    answer_key: str              # its answer key (MTurk: AnswerKey XML)
    duration_seconds: int
    retry_delay_seconds: int


@runtime_checkable
class CrowdBackend(Protocol):
    """What the poll pass needs from a crowd platform (see the module docstring)."""

    name: str                    # registry name
    source: str                  # recorded with every answer (Answer.source)
    paying: bool                 # real money: never post without a budget
    fees: FeeRules
    needs_images: bool           # tasks show images: overlays are published and checked first
    token_window_seconds: float | None   # how long a publish token protects (None: forever)
    concurrency: int | None      # parallel calls it takes (None: crowd.concurrency)

    # setup
    def create_qualification(self, name: str, description: str,
                             test: QualificationTest | None = None) -> str: ...
    def ensure_task_type(self, task_type: TaskType) -> str: ...
    def eligible_workers(self, task_type: TaskType) -> int | None: ...

    # posting
    def render(self, items: list[TaskItem], *, allow_unsure: bool) -> str | None: ...
    def publish(self, task: Task) -> PublishResult: ...
    def find_by_annotation(self, annotation: str) -> str | None: ...

    # reading
    def list_ready(self, type_ids: Iterable[str]) -> Iterator[TaskRef]: ...
    def list_submissions(self, task_id: str) -> list[Submission]: ...
    def parse_answers(self, raw_answer: str) -> dict[str, str]: ...
    def answer_seconds(self, raw_answer: str) -> dict[str, float]: ...
    def qualification_scores(self, qualification_id: str) -> dict[str, int]: ...
    def list_tasks(self, type_ids: Iterable[str]) -> list[TaskInfo]: ...
    def get_task(self, task_id: str) -> TaskInfo: ...

    # effects (idempotent, or reporting "already done" as INVALID_STATE)
    def approve(self, assignment_id: str) -> None: ...
    def reject(self, assignment_id: str, feedback: str) -> None: ...
    def assignment_status(self, assignment_id: str) -> str: ...
    def block(self, qualification_id: str, worker_id: str) -> None: ...
    def expire(self, task_id: str) -> None: ...
    def dispose(self, task_id: str) -> None: ...
    def pay_bonus(self, worker_id: str, assignment_id: str, bonus_cents: int, reason: str, token: str) -> None: ...

    def asset_mirror(self) -> object | None: ...     # where published images must also go (or None)
    def close(self) -> None: ...


@dataclass
class BackendOptions:
    """What a command line can pass to a backend factory (all optional)."""
    endpoint_url: str | None = None
    sandbox: bool | None = None
    profile: str | None = None
    client: object | None = None                 # a ready boto3 client (tests)
    error_rate: float | None = None              # simulated: overrides crowd.simulated.error_rate
    extra: dict = field(default_factory=dict)
