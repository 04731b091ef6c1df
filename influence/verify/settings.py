"""How a capture is verified: explicit settings, passed to every check (no module state is flipped)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgumentError

MODES = ("paths", "every", "reference")  # how Ghost checks its captures once a signature's verdict is cached


@dataclass(frozen=True)
class Verification:
    """``mode``: how a capture is checked once its signature's verdict is cached: ``"paths"`` (default) every
    capture, reference and training, on the graph (``influence.paths``), with the numeric sum check for the
    parameters the graph does not explain; ``"every"`` the numeric sum check on every capture; ``"reference"`` on
    the reference captures only. ``sum_check``: the per-call checks at all (off only to measure what they cost:
    ``validation``'s verification cost bench). ``directions``: rank-1 directions per block in the sum check (None:
    1 in float64, 2 below, see ``influence.verify.compare``). ``screen_eps``: the projection's tolerance in units
    of eps (capped at sqrt(eps))."""

    mode: str = "paths"
    sum_check: bool = True
    directions: int | None = None
    screen_eps: float = 1024

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidArgumentError(f"verify must be one of {MODES}, got {self.mode!r}")


DEFAULT = Verification()


def check_verify(verify: "str | Verification") -> Verification:
    """``verify`` as :class:`Verification`: a mode name (one of ``MODES``) or the settings themselves."""
    return verify if isinstance(verify, Verification) else Verification(mode=verify)
