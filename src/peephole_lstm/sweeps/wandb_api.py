"""Read a sweep's runs from the W&B public API (online only), as records `jobs_from_runs` accepts."""
from __future__ import annotations

import os
from typing import Any, Optional


class WandbUnavailable(RuntimeError):
    """The W&B API cannot be used here (offline mode, no credentials, or no connection)."""


_HINT = "run `wandb login` (or set WANDB_API_KEY) online, or report on the local sweep dir instead"


def fetch_runs(path: str, group: Optional[str] = None) -> list[dict[str, Any]]:
    """All runs of `path` ("entity/project"), optionally only those of one W&B group (one sweep)."""
    if path.count("/") != 1 or not all(path.split("/")):
        raise ValueError(f"W&B path {path!r} must be ENTITY/PROJECT")
    mode = os.environ.get("WANDB_MODE", "").lower()
    # The API is a network client; in these modes the user asked for no network, so do not try.
    if mode in ("offline", "disabled", "dryrun"):
        raise WandbUnavailable(f"WANDB_MODE={mode} forbids the W&B API; unset WANDB_MODE and {_HINT}")
    import wandb

    try:
        api = wandb.Api()
        runs = api.runs(path, filters={"group": group} if group else None)
        records = [
            {
                "id": r.id,
                "name": r.name,
                "state": r.state,
                "group": r.group,
                "tags": list(r.tags or []),
                "config": dict(r.config),
                "summary": dict(r.summary),
            }
            for r in runs
        ]
    except wandb.errors.UsageError as e:
        raise WandbUnavailable(f"W&B API unavailable: {e}; {_HINT}") from e
    except (wandb.errors.CommError, ConnectionError, OSError) as e:
        raise WandbUnavailable(f"cannot reach W&B for {path!r}: {e}; {_HINT}") from e
    if not records:
        raise ValueError(f"W&B project {path!r} has no runs" + (f" in group {group!r}" if group else ""))
    return records
